//! `tame train`: trains an attention mechanism (section 4 of the method), epoch checkpoints,
//! step log, exact `--resume`, Ctrl-C to stop with a resumable checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tame_am::{AmConfig, AttentionMechanism, CheckpointMeta, Version};
use tame_backbones::{Backbone, BackboneKind};
use tame_data::{Augmentation, ImageList, Loader, LoaderConfig};
use tame_train::{
    find_latest_checkpoint, read_checkpoint, BackboneMode, RunInputs, StepObserver, StepRecord,
    StopReason, TrainConfig, Trainer,
};

use crate::common::{check_inside, parse_layers, write_atomically, ImageArgs, ModelArgs};
use crate::skipped::{SkipArgs, Skipped};
use crate::stop::StopSignals;

/// `--mask-loss`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MaskLoss {
    /// The reference's: area and smoothness on the maps of all the batch's labels.
    Reference,
    /// Each image's own map only.
    PerSample,
}

/// `--backbone-mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackboneModeArg {
    /// The reference's train mode (VGG dropout, ResNet batch statistics).
    Reference,
    /// Inference mode.
    Eval,
}

/// What `tame train` and `tame lr-test` share: the data, the mechanism and the loss.
#[derive(Args, Clone, Debug)]
pub struct SetupArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Tap names, separated by spaces or commas (default: the backbone's default taps).
    #[arg(long)]
    pub layers: Option<String>,

    /// Attention-mechanism version: TAME, Noskipconnection, NoskipNobatchnorm,
    /// Sigmoidinfeaturebranch.
    #[arg(long, default_value = "TAME")]
    pub version: Version,

    /// Folder the list's image paths are relative to.
    #[arg(long)]
    pub img_dir: PathBuf,

    /// Training list: `relative/path label` per line (labels = the backbone's predictions).
    #[arg(long)]
    pub train_list: PathBuf,

    /// Read list paths that leave --img-dir (absolute paths, `..`), which are refused otherwise.
    #[arg(long)]
    pub allow_outside: bool,

    /// Images per batch (default 32).
    #[arg(long, value_parser = crate::common::at_least_one::<usize>)]
    pub batch_size: Option<usize>,

    /// Weight decay of the weights group.
    #[arg(
        long,
        default_value_t = 5e-4,
        allow_negative_numbers = true,
        value_parser = crate::common::non_negative
    )]
    pub wd: f64,

    /// Seed of the initialisation, data order, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Threads decoding images (default: one per core).
    #[arg(long, value_parser = crate::common::at_least_one::<usize>)]
    pub workers: Option<usize>,

    /// Start from these attention-mechanism weights (a checkpoint of this project or of the
    /// reference) instead of a seeded initialisation.
    #[arg(long)]
    pub init_am: Option<PathBuf>,

    /// Training augmentation: `reference` (resize 256, random 224 crop, flip), `heavy`
    /// (random resized crops, flips, colour jitter, two-photo collages: for small training
    /// sets) or `none` (the evaluation preprocessing).
    #[arg(long, default_value = "reference", value_parser = clap::value_parser!(Augmentation))]
    pub augment: Augmentation,

    /// Use the evaluation preprocessing (resize, centre crop): the same as `--augment none`.
    #[arg(long, conflicts_with = "augment")]
    pub no_augment: bool,

    /// Keep the list's order every epoch.
    #[arg(long)]
    pub no_shuffle: bool,

    /// Which maps the area and smoothness terms see.
    #[arg(long, value_enum, default_value = "reference")]
    pub mask_loss: MaskLoss,

    /// How the backbone runs while training.
    #[arg(long, value_enum, default_value = "reference")]
    pub backbone_mode: BackboneModeArg,

    #[command(flatten)]
    pub image_args: ImageArgs,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    setup: SetupArgs,

    /// Epochs (default: 8 for vgg16, 4 for resnet50).
    #[arg(long, value_parser = crate::common::at_least_one::<u64>)]
    epochs: Option<u64>,

    /// Peak learning rate of the weights; biases get twice as much (default: 1e-3 for
    /// vgg16, 1e-4 for resnet50).
    #[arg(long, value_parser = crate::common::positive)]
    max_lr: Option<f64>,

    /// Where checkpoints and logs go (default: snapshots/<model>_<version>/).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,

    /// Continue from the newest checkpoint in the snapshot folder, or from the one given.
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT")]
    resume: Option<Option<PathBuf>>,

    #[command(flatten)]
    skip: SkipArgs,
}

/// Everything a run needs, made from [`SetupArgs`].
pub struct Setup {
    pub backbone: Box<dyn Backbone>,
    pub device: Device,
    pub taps: Vec<String>,
    pub am_config: AmConfig,
    pub loader: Loader,
    pub batch_size: usize,
}

impl SetupArgs {
    /// Loads the backbone, measures the tap shapes and opens the list.
    pub fn open(&self, shuffle_default: bool) -> Result<Setup> {
        let list = ImageList::read(&self.train_list)?;
        if list.is_empty() {
            bail!("{}: the list is empty", self.train_list.display());
        }
        check_inside(&list, "--img-dir", self.allow_outside)?;
        let (backbone, device) = self.model.load()?;
        let taps = match &self.layers {
            Some(l) => parse_layers(l)?,
            None => backbone.default_taps(),
        };
        let am_config = crate::mechanism::config(backbone.as_ref(), &taps, self.version, &device)?;
        let batch_size = self.batch_size.unwrap_or(32);
        let mut config = LoaderConfig {
            augmentation: self.augmentation(),
            preprocessing: backbone.preprocessing(),
            max_image_side: self.image_args.max_image_side,
            ..LoaderConfig::training(batch_size, self.seed)
        };
        config.shuffle = shuffle_default && !self.no_shuffle;
        if let Some(w) = self.workers {
            config.workers = w;
        }
        let loader = Loader::new(list, &self.img_dir, config)?;
        Ok(Setup {
            backbone,
            device,
            taps,
            am_config,
            loader,
            batch_size,
        })
    }

    /// The starting mechanism: `--init-am` or a seeded initialisation.
    pub fn initial_am(&self, config: &AmConfig, device: &Device) -> Result<AttentionMechanism> {
        Ok(match &self.init_am {
            Some(path) => AttentionMechanism::load(path, config, DType::F32, device)?.am,
            None => AttentionMechanism::new(config, self.seed, DType::F32, device)?,
        })
    }

    /// The augmentation asked for by `--augment` or `--no-augment`.
    pub fn augmentation(&self) -> Augmentation {
        if self.no_augment {
            Augmentation::None
        } else {
            self.augment
        }
    }

    /// The settings of a run with these arguments.
    pub fn train_config(&self, setup: &Setup, epochs: u64, max_lr: f64) -> TrainConfig {
        TrainConfig {
            backbone: self.model.model.name().into(),
            taps: setup.taps.clone(),
            epochs,
            batch_size: setup.batch_size,
            max_lr,
            weight_decay: self.wd,
            seed: self.seed,
            per_sample_masks: matches!(self.mask_loss, MaskLoss::PerSample),
            backbone_mode: match self.backbone_mode {
                BackboneModeArg::Reference => BackboneMode::Reference,
                BackboneModeArg::Eval => BackboneMode::Eval,
            },
            precision: self.model.precision,
            inputs: RunInputs::default(),
        }
    }

    /// What the run reads, for `--resume` to check: the list's and a weights file's SHA-256
    /// (the weights file is read once more for it), the order and the augmentation.
    pub fn run_inputs(&self) -> Result<RunInputs> {
        let list = std::fs::read(&self.train_list)
            .with_context(|| format!("cannot read {}", self.train_list.display()))?;
        let weights = match &self.model.weights {
            Some(spec) => spec.identity()?,
            None => "default".into(),
        };
        Ok(RunInputs {
            train_list_sha256: Some(format!("{:x}", Sha256::digest(&list))),
            shuffle: Some(!self.no_shuffle),
            augmentation: Some(self.augmentation().to_string()),
            weights: Some(weights),
        })
    }

    /// The sidecar fields that describe the mechanism.
    pub fn meta(&self, setup: &Setup) -> CheckpointMeta {
        CheckpointMeta {
            backbone: self.model.model.name().into(),
            taps: setup.taps.clone(),
            tap_shapes: setup.am_config.taps().to_vec(),
            version: self.version,
            epoch: 0,
            global_step: 0,
            config: serde_json::Value::Null,
            tensors_sha256: None,
        }
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let kind = args.setup.model.model;
    let (default_epochs, default_lr) = match kind {
        BackboneKind::Vgg16 => (8, 1e-3),
        _ => (4, 1e-4),
    };
    let epochs = args.epochs.unwrap_or(default_epochs);
    let max_lr = args.max_lr.unwrap_or(default_lr);
    let snapshot_dir = args.snapshot_dir.clone().unwrap_or_else(|| {
        PathBuf::from("snapshots").join(format!("{}_{}", kind.name(), args.setup.version))
    });
    let setup = args.setup.open(true)?;
    let config = TrainConfig {
        inputs: args.setup.run_inputs()?,
        ..args.setup.train_config(&setup, epochs, max_lr)
    };
    let resume_from = resume_from(args.resume.as_ref(), &snapshot_dir)?;
    let mut trainer = start(&args.setup, &setup, &config, resume_from.as_deref())?;
    std::fs::create_dir_all(&snapshot_dir)
        .with_context(|| format!("cannot create {}", snapshot_dir.display()))?;
    let leftovers = tame_atomic::remove_leftovers(&snapshot_dir)
        .with_context(|| format!("cannot clean {}", snapshot_dir.display()))?;
    if !leftovers.is_empty() {
        eprintln!(
            "removed {} temporary files an interrupted write left in {}",
            leftovers.len(),
            snapshot_dir.display()
        );
    }
    record_run(&snapshot_dir, &args, &config, resume_from.as_deref())?;

    let stop = StopSignals::watch()?;
    let mut progress = Progress::new();
    let outcome = trainer.run(
        &setup.loader,
        &snapshot_dir,
        &args.setup.meta(&setup),
        &mut progress,
        stop.flag(),
    )?;
    progress.finish();
    match outcome.reason {
        StopReason::Finished => {
            eprintln!("done: checkpoints in {}", snapshot_dir.display());
            progress.skipped.finish(args.skip.skip_bad)?;
        }
        StopReason::Interrupted => {
            eprintln!(
                "interrupted at step {}: {} saved; continue with --resume",
                trainer.state().global_step,
                outcome
                    .last_checkpoint
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            );
            return Err(stop.exit());
        }
    }
    Ok(())
}

/// The checkpoint `--resume` names (the newest complete one in the snapshot folder when
/// none is given); without `--resume`, a folder that already holds checkpoints is an error.
fn resume_from(resume: Option<&Option<PathBuf>>, snapshot_dir: &Path) -> Result<Option<PathBuf>> {
    if matches!(resume, Some(Some(_))) {
        return Ok(resume.cloned().flatten());
    }
    let scan = find_latest_checkpoint(snapshot_dir)?;
    for (path, why) in &scan.incomplete {
        eprintln!("passing over {}: {why}", path.display());
    }
    match (resume, scan.latest) {
        (None, Some(existing)) => bail!(
            "{} already holds checkpoints ({}); continue with --resume or choose another \
             --snapshot-dir",
            snapshot_dir.display(),
            existing.display()
        ),
        (None, None) => Ok(None),
        (_, latest) => Ok(Some(latest.with_context(|| {
            format!(
                "--resume: no complete checkpoint in {}",
                snapshot_dir.display()
            )
        })?)),
    }
}

/// A trainer resumed from `resume_from`, or starting afresh.
fn start<'a>(
    args: &SetupArgs,
    setup: &'a Setup,
    config: &TrainConfig,
    resume_from: Option<&Path>,
) -> Result<Trainer<'a>> {
    let steps_per_epoch = setup.loader.num_batches() as u64;
    let Some(path) = resume_from else {
        let am = args.initial_am(&setup.am_config, &setup.device)?;
        return Ok(Trainer::new(
            setup.backbone.as_ref(),
            am,
            config.clone(),
            steps_per_epoch,
        )?);
    };
    let ckpt = read_checkpoint(path, &setup.am_config, DType::F32, &setup.device)?;
    let trainer = Trainer::resume(
        setup.backbone.as_ref(),
        ckpt,
        config.clone(),
        steps_per_epoch,
        path,
    )?;
    eprintln!(
        "resuming from {} (epoch {}, step {})",
        path.display(),
        trainer.state().epoch,
        trainer.state().global_step
    );
    Ok(trainer)
}

/// Appends this run's settings to `train_record.json` (a list, one entry per run or
/// resumption).
fn record_run(
    dir: &Path,
    args: &TrainArgs,
    config: &TrainConfig,
    resumed_from: Option<&Path>,
) -> Result<()> {
    let path = dir.join("train_record.json");
    let mut runs: Vec<serde_json::Value> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not a train record", path.display()))?,
        Err(_) => Vec::new(),
    };
    let s = &args.setup;
    runs.push(serde_json::json!({
        "started_unix": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "command": std::env::args().collect::<Vec<_>>(),
        "resumed_from": resumed_from,
        "training": config,
        "version": s.version.name(),
        "weights": format!("{:?}", s.model.weights),
        "device": s.model.device,
        "img_dir": s.img_dir,
        "train_list": s.train_list,
        "init_am": s.init_am,
        "augment": s.augmentation().to_string(),
        "shuffle": !s.no_shuffle,
        "workers": s.workers,
    }));
    write_atomically(&path, serde_json::to_string_pretty(&runs)?.as_bytes())
}

/// One progress bar per epoch with running means of the loss terms and accuracies.
struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    images: usize,
    sums: [f64; 6],
    steps: usize,
    skipped: Skipped,
}

impl Progress {
    fn new() -> Self {
        Self {
            bar: None,
            start: Instant::now(),
            images: 0,
            sums: [0.0; 6],
            steps: 0,
            skipped: Skipped::new(true),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl StepObserver for Progress {
    fn epoch_started(&mut self, epoch: u64, batches: u64, done: u64) {
        self.finish();
        let bar = ProgressBar::new(batches);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} ETA {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(epoch.to_string());
        bar.set_position(done);
        self.bar = Some(bar);
        self.start = Instant::now();
        self.images = 0;
        self.sums = [0.0; 6];
        self.steps = 0;
    }

    fn step(&mut self, r: &StepRecord) {
        self.images += r.images;
        self.steps += 1;
        for (s, v) in self
            .sums
            .iter_mut()
            .zip([r.loss, r.ce, r.area, r.smoothness, r.top1, r.top5])
        {
            *s += v;
        }
        let m = self.sums.map(|s| s / self.steps as f64);
        let rate = self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{rate:.1} img/s loss {:.4} ce {:.4} area {:.4} smooth {:.4} top1 {:.1}% top5 {:.1}% lr {:.2e}",
                m[0], m[1], m[2], m[3], m[4], m[5], r.lr
            ));
            bar.inc(1);
        }
    }

    fn image_skipped(&mut self, error: &tame_data::DataError) {
        // Named every epoch that skips it, listed once at the end.
        self.skipped.add(error);
        let line = format!("skipped: {error}");
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn epoch_finished(&mut self, epoch: u64, checkpoint: &Path, skipped: usize) {
        self.finish();
        let note = match skipped {
            0 => String::new(),
            n => format!(" ({n} unreadable images skipped)"),
        };
        eprintln!("epoch {epoch}: wrote {}{note}", checkpoint.display());
    }
}
