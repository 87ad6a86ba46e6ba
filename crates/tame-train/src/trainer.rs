//! The training loop of section 4: masked forward, loss, SGD step, schedule step; epochs,
//! checkpoints, the step log and exact resumption.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use tame_am::{AttentionMechanism, CheckpointMeta};
use tame_backbones::{Backbone, Mode, Precision, TapRequest};
use tame_data::Loader;
use tame_loss::{tame_loss, LossParts, LossWeights, MaskSet};

use crate::checkpoint::{write_checkpoint, TrainCheckpoint, TrainState};
use crate::{OneCycle, ParamGroup, Sgd, TrainError};

/// The header of `train_log.csv`.
pub const LOG_HEADER: &str = "epoch,step,lr,loss,ce,area,smoothness,top1,top5";

/// How the backbone runs during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneMode {
    /// The reference's: train mode (VGG dropout active, ResNet batch norms on batch
    /// statistics).
    #[default]
    Reference,
    /// Inference mode.
    Eval,
}

impl BackboneMode {
    fn mode(self) -> Mode {
        match self {
            BackboneMode::Reference => Mode::Train,
            BackboneMode::Eval => Mode::Eval,
        }
    }
}

/// The settings that determine a run; a resumed run must have the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Backbone name (`vgg16`, `resnet50`).
    pub backbone: String,
    /// Tap names, in order.
    pub taps: Vec<String>,
    /// Epochs of the whole run (the schedule spans them all).
    pub epochs: u64,
    /// Images per batch.
    pub batch_size: usize,
    /// Peak learning rate of the weights (the biases get twice as much).
    pub max_lr: f64,
    /// Weight decay of the weights group.
    pub weight_decay: f64,
    /// Seed of the data order, augmentation and dropout.
    pub seed: u64,
    /// Use each image's own map in the area and smoothness terms instead of the reference's
    /// maps of all the batch's labels.
    pub per_sample_masks: bool,
    /// How the backbone runs.
    pub backbone_mode: BackboneMode,
    /// The precision the backbone runs in (the mechanism, loss and optimizer are f32 in
    /// any case); runs recorded before it existed ran in f32.
    #[serde(default)]
    pub precision: Precision,
    /// What the run reads.
    #[serde(flatten)]
    pub inputs: RunInputs,
}

/// What a run reads besides its settings, recorded so that a resumption can check that it
/// reads the same. `None` is not known: not said by the caller, or not recorded by the run
/// that wrote the checkpoint; it is not compared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInputs {
    /// SHA-256 of the training list's bytes.
    #[serde(default)]
    pub train_list_sha256: Option<String>,
    /// Whether the order is shuffled each epoch.
    #[serde(default)]
    pub shuffle: Option<bool>,
    /// The training augmentation's name.
    #[serde(default)]
    pub augmentation: Option<String>,
    /// The backbone weights' identity (a file's SHA-256, a hub repository, `synthetic`).
    #[serde(default)]
    pub weights: Option<String>,
}

/// Each setting in which `now` differs from `saved`, as `name: <saved> then, <now> now`;
/// settings either does not know (`null`) are passed over.
fn differences(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (saved, now) = (as_map(saved), as_map(now));
    now.iter()
        .filter(|(_, value)| !value.is_null())
        .filter_map(|(name, value)| {
            let before = saved.get(name).filter(|v| !v.is_null())?;
            (before != value).then(|| format!("{name}: {before} then, {value} now"))
        })
        .collect()
}

impl TrainConfig {
    fn mask_set(&self) -> MaskSet {
        match self.per_sample_masks {
            true => MaskSet::PerSample,
            false => MaskSet::BatchLabels,
        }
    }
}

/// What one optimizer step did (one row of `train_log.csv`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Epoch, from 1.
    pub epoch: u64,
    /// Global optimizer step, from 1.
    pub step: u64,
    /// Learning rate of the weights group used by this step.
    pub lr: f64,
    /// Total loss.
    pub loss: f64,
    /// Weighted cross-entropy term.
    pub ce: f64,
    /// Weighted area term.
    pub area: f64,
    /// Weighted smoothness term.
    pub smoothness: f64,
    /// Top-1 accuracy of the masked forward against the labels, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
    /// Images in the batch.
    pub images: usize,
}

impl StepRecord {
    /// The record as a `train_log.csv` row (no newline).
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{:e},{},{},{},{},{},{}",
            self.epoch,
            self.step,
            self.lr,
            self.loss,
            self.ce,
            self.area,
            self.smoothness,
            self.top1,
            self.top5
        )
    }
}

/// Receives training progress; the trainer itself prints nothing.
pub trait StepObserver {
    /// An epoch starts with `batches` batches, `done` of which were trained before a resume.
    fn epoch_started(&mut self, _epoch: u64, _batches: u64, _done: u64) {}
    /// A step finished.
    fn step(&mut self, _record: &StepRecord) {}
    /// An image of the list could not be read and was left out (the error names it).
    fn image_skipped(&mut self, _error: &tame_data::DataError) {}
    /// An epoch finished and its checkpoint was written.
    fn epoch_finished(&mut self, _epoch: u64, _checkpoint: &Path, _skipped_images: usize) {}
}

impl StepObserver for () {}

/// Why [`Trainer::run`] returned.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// Every epoch is done.
    Finished,
    /// The stop flag was raised; a resumable checkpoint was written.
    Interrupted,
}

/// What [`Trainer::run`] returns.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Why it returned.
    pub reason: StopReason,
    /// The last checkpoint written (if any).
    pub last_checkpoint: Option<PathBuf>,
}

/// Trains an attention mechanism on the taps of a frozen backbone.
pub struct Trainer<'a> {
    backbone: &'a dyn Backbone,
    taps: TapRequest,
    logits: TapRequest,
    am: AttentionMechanism,
    sgd: Sgd,
    schedule: OneCycle,
    config: TrainConfig,
    loss: LossWeights,
    steps_per_epoch: u64,
    state: TrainState,
}

impl<'a> Trainer<'a> {
    /// A trainer at the start of a run of `steps_per_epoch` batches an epoch.
    pub fn new(
        backbone: &'a dyn Backbone,
        am: AttentionMechanism,
        config: TrainConfig,
        steps_per_epoch: u64,
    ) -> Result<Self, TrainError> {
        if config.epochs == 0 || config.batch_size == 0 || steps_per_epoch == 0 {
            return Err(TrainError::Config(
                "epochs, batch size and batches per epoch must be at least 1".into(),
            ));
        }
        if !(config.max_lr.is_finite() && config.max_lr > 0.0) {
            return Err(TrainError::Config(format!(
                "the maximum learning rate must be positive, got {}",
                config.max_lr
            )));
        }
        let taps = backbone.tap_request(&config.taps, false)?;
        let logits = backbone.tap_request(&[], true)?;
        let schedule = OneCycle::new(
            vec![config.max_lr, 2.0 * config.max_lr],
            config.epochs * steps_per_epoch,
        )?;
        let (lrs, momentum) = schedule.at(0);
        let groups = vec![
            ParamGroup {
                name: "weights".into(),
                params: am.weight_parameters(),
                lr: lrs[0],
                weight_decay: config.weight_decay,
                momentum,
            },
            ParamGroup {
                name: "biases".into(),
                params: am.bias_parameters(),
                lr: lrs[1],
                weight_decay: 0.0,
                momentum,
            },
        ];
        let state = TrainState {
            epoch: 0,
            batches_done: 0,
            global_step: 0,
            run: serde_json::to_value(&config).map_err(|e| TrainError::Config(e.to_string()))?,
        };
        Ok(Self {
            backbone,
            taps,
            logits,
            am,
            sgd: Sgd::new(groups, true),
            schedule,
            config,
            loss: LossWeights::default(),
            steps_per_epoch,
            state,
        })
    }

    /// A trainer that continues from `checkpoint` exactly where it stopped. The checkpoint
    /// must come from a run with the same settings and batches per epoch.
    pub fn resume(
        backbone: &'a dyn Backbone,
        checkpoint: TrainCheckpoint,
        config: TrainConfig,
        steps_per_epoch: u64,
        path: &Path,
    ) -> Result<Self, TrainError> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let saved: TrainConfig = serde_json::from_value(checkpoint.state.run.clone())
            .map_err(|e| bad(format!("unreadable run settings ({e})")))?;
        let differences = differences(&saved, &config);
        if !differences.is_empty() {
            return Err(bad(format!(
                "it was written by a run with other settings: {}",
                differences.join("; ")
            )));
        }
        let expected = checkpoint.state.epoch * steps_per_epoch + checkpoint.state.batches_done;
        if checkpoint.state.global_step > expected || checkpoint.state.epoch > config.epochs {
            return Err(bad(format!(
                "position (epoch {}, step {}) does not fit {} batches per epoch",
                checkpoint.state.epoch, checkpoint.state.global_step, steps_per_epoch
            )));
        }
        let mut trainer = Self::new(backbone, checkpoint.am, config, steps_per_epoch)?;
        trainer
            .sgd
            .set_momentum_buffers(&checkpoint.momentum_buffers)
            .map_err(bad)?;
        trainer.state.epoch = checkpoint.state.epoch;
        trainer.state.batches_done = checkpoint.state.batches_done;
        trainer.state.global_step = checkpoint.state.global_step;
        Ok(trainer)
    }

    /// The mechanism being trained.
    pub fn am(&self) -> &AttentionMechanism {
        &self.am
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Sgd {
        &self.sgd
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The current position.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// One optimizer step on `images` (B, 3, 224, 224) in [0, 1] with `labels`, at the
    /// schedule's current position.
    pub fn step(&mut self, images: &Tensor, labels: &[u32]) -> Result<StepRecord, TrainError> {
        let (lrs, momentum) = self.schedule.at(self.state.global_step);
        let record = self.step_with(images, labels, self.state.global_step + 1, &lrs, momentum)?;
        self.state.global_step += 1;
        Ok(record)
    }

    /// One optimizer step numbered `step` (from 1; it seeds the dropout) with the given group
    /// learning rates and momentum; the schedule is not consulted, the position not advanced.
    pub(crate) fn step_with(
        &mut self,
        images: &Tensor,
        labels: &[u32],
        step: u64,
        lrs: &[f64],
        momentum: f64,
    ) -> Result<StepRecord, TrainError> {
        // Dropout draws depend on the run's seed and the step alone, so a resumed run sees
        // the same masks.
        self.backbone.reseed(mix(self.config.seed, step));
        let mode = self.config.backbone_mode.mode();
        let taps = self.backbone.forward(images, &self.taps, mode)?.taps;
        let branches = self.am.branches(&taps, true)?;
        let mask_set = self.config.mask_set();
        let classes = mask_set.classes(labels);
        let maps = candle_nn::ops::sigmoid(&self.am.per_sample_class_logits(&branches, &classes)?)?;
        let own = own_maps(&maps, labels, &classes)?;
        let (_, _, h, w) = images.dims4()?;
        let masks = tame_ops::resize_bilinear(&own, h, w)?;
        let masked = images.broadcast_mul(&masks)?;
        let z = self
            .backbone
            .forward(&masked, &self.logits, mode)?
            .logits
            .ok_or_else(|| TrainError::Config("the backbone returned no logits".into()))?;
        let parts = tame_loss(&z, labels, &maps, &self.loss)?;
        let grads = parts.total.backward()?;
        // Every number of the step in one copy (on a GPU a synchronisation point), before
        // the update: a non-finite loss leaves the parameters as they were.
        let numbers = StepNumbers::of(&parts, &z, labels)?;
        if !numbers.loss.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                epoch: self.state.epoch + 1,
                value: numbers.loss,
            });
        }
        self.sgd.set_hyper(lrs, Some(momentum));
        self.sgd.step(&grads)?;
        Ok(StepRecord {
            epoch: self.state.epoch + 1,
            step,
            lr: lrs[0],
            loss: numbers.loss,
            ce: numbers.ce,
            area: numbers.area,
            smoothness: numbers.smoothness,
            top1: numbers.top1,
            top5: numbers.top5,
            images: labels.len(),
        })
    }

    /// Trains the remaining epochs on `loader`, writing `epoch_<k>.safetensors` (+ `.json`)
    /// after every epoch and one row per step to `train_log.csv` in `snapshot_dir`.
    ///
    /// `stop` is checked before every batch: when raised, `interrupted.safetensors` is
    /// written at the current position and the run returns [`StopReason::Interrupted`].
    /// A non-finite loss returns [`TrainError::NonFinite`] without writing a checkpoint.
    pub fn run(
        &mut self,
        loader: &Loader,
        snapshot_dir: &Path,
        meta: &CheckpointMeta,
        observer: &mut dyn StepObserver,
        stop: &AtomicBool,
    ) -> Result<TrainOutcome, TrainError> {
        if loader.num_batches() as u64 != self.steps_per_epoch {
            return Err(TrainError::Config(format!(
                "the loader has {} batches an epoch, the schedule was made for {}",
                loader.num_batches(),
                self.steps_per_epoch
            )));
        }
        fs::create_dir_all(snapshot_dir).map_err(|source| TrainError::Io {
            path: snapshot_dir.to_path_buf(),
            source,
        })?;
        let mut log = StepLog::open(&snapshot_dir.join("train_log.csv"), self.state.global_step)?;
        let device = self.am.parameters()[0].1.device().clone();
        let dtype = self.am.parameters()[0].1.dtype();
        let mut last = None;
        while self.state.epoch < self.config.epochs {
            let epoch = self.state.epoch + 1;
            let skip = self.state.batches_done;
            observer.epoch_started(epoch, self.steps_per_epoch, skip);
            let mut batches = loader.epoch(epoch)?;
            for _ in 0..skip {
                batches.next().transpose()?;
            }
            let mut trained = 0;
            loop {
                if stop.load(Ordering::SeqCst) {
                    let path = snapshot_dir.join("interrupted.safetensors");
                    self.save(&path, meta)?;
                    return Ok(TrainOutcome {
                        reason: StopReason::Interrupted,
                        last_checkpoint: Some(path),
                    });
                }
                let Some(batch) = batches.next().transpose()? else {
                    break;
                };
                self.state.batches_done += 1;
                for error in &batch.skipped {
                    observer.image_skipped(error);
                }
                if batch.is_empty() {
                    continue;
                }
                let n = batch.len();
                trained += n;
                let images =
                    tame_ops::host::upload(batch.images, tame_data::batch_shape(n), &device)?
                        .to_dtype(dtype)?;
                let record = self.step(&images, &batch.labels)?;
                log.append(&record)?;
                observer.step(&record);
            }
            let skipped = batches.skipped();
            if trained == 0 && skip == 0 {
                return Err(TrainError::Config(format!(
                    "epoch {epoch} saw no image: all {skipped} images of the list were \
                     unreadable"
                )));
            }
            self.state.epoch = epoch;
            self.state.batches_done = 0;
            let path = snapshot_dir.join(format!("epoch_{epoch}.safetensors"));
            self.save(&path, meta)?;
            observer.epoch_finished(epoch, &path, skipped);
            last = Some(path);
        }
        Ok(TrainOutcome {
            reason: StopReason::Finished,
            last_checkpoint: last,
        })
    }

    /// Writes a resumable checkpoint of the current position at `path`; `meta` gives the
    /// backbone, taps and version (its position fields are overwritten).
    pub fn save(&self, path: &Path, meta: &CheckpointMeta) -> Result<(), TrainError> {
        write_checkpoint(
            path,
            &self.am,
            &self.sgd.momentum_buffers(),
            meta,
            &self.state,
        )
    }
}

/// Each image's own map (B, 1, S, S) out of the maps of its class list.
fn own_maps(maps: &Tensor, labels: &[u32], classes: &[Vec<u32>]) -> Result<Tensor, TrainError> {
    let (b, k, s, t) = maps.dims4()?;
    if k == 1 {
        return Ok(maps.clone());
    }
    let index: Vec<u32> = labels
        .iter()
        .zip(classes)
        .map(|(y, list)| list.iter().position(|c| c == y).unwrap_or(0) as u32)
        .collect();
    let index = tame_ops::host::upload(index, (b, 1, 1, 1), maps.device())?
        .broadcast_as((b, 1, s, t))?
        .contiguous()?;
    Ok(maps.gather(&index, 1)?)
}

/// The numbers a step reports: the loss terms and the top-1 and top-5 accuracy (percent).
struct StepNumbers {
    loss: f64,
    ce: f64,
    area: f64,
    smoothness: f64,
    top1: f64,
    top5: f64,
}

impl StepNumbers {
    /// Reads `parts` and ranks each label among `logits` (B, K) on the device, and copies
    /// the lot to the host at once.
    fn of(parts: &LossParts, logits: &Tensor, labels: &[u32]) -> Result<Self, TrainError> {
        let b = labels.len();
        // Rank = classes scoring strictly higher than the label, compared in f32.
        let z = logits.to_dtype(DType::F32)?;
        let index = tame_ops::host::upload(labels.to_vec(), (b, 1), z.device())?;
        let ranks = z
            .broadcast_gt(&z.gather(&index, 1)?)?
            .to_dtype(DType::F64)?
            .sum(1)?;
        let terms = [&parts.total, &parts.ce, &parts.area, &parts.smoothness]
            .map(|t| t.to_dtype(DType::F64).and_then(|t| t.reshape(1)));
        let [total, ce, area, smoothness] = terms;
        let all = Tensor::cat(&[total?, ce?, area?, smoothness?, ranks], 0)?;
        let all = tame_ops::host::download::<f64>(&all)?;
        let (terms, ranks) = all.split_at(4);
        let n = b.max(1) as f64;
        let within = |k: f64| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / n;
        Ok(Self {
            loss: terms[0],
            ce: terms[1],
            area: terms[2],
            smoothness: terms[3],
            top1: within(1.0),
            top5: within(5.0),
        })
    }
}

/// SplitMix64 over the words: a seed per (run seed, step).
fn mix(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `train_log.csv`, one row per step, flushed as it goes.
struct StepLog {
    file: fs::File,
    path: PathBuf,
}

impl StepLog {
    /// Opens the log for a run at `global_step`: rows of later steps (written after the
    /// checkpoint being resumed) are dropped so that every step appears once.
    fn open(path: &Path, global_step: u64) -> Result<Self, TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut text = format!("{LOG_HEADER}\n");
        if global_step > 0 {
            if let Ok(old) = fs::read_to_string(path) {
                for line in old.lines().skip(1) {
                    let step = line.split(',').nth(1).and_then(|s| s.parse::<u64>().ok());
                    if step.is_some_and(|s| s <= global_step) {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
            }
        }
        // Rewritten whole: a crash here must not lose the rows of the steps kept.
        tame_atomic::write(path, text.as_bytes()).map_err(io)?;
        let file = fs::OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn append(&mut self, record: &StepRecord) -> Result<(), TrainError> {
        writeln!(self.file, "{}", record.csv_row())
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }
}
