//! `tame eval`: AD and IC at 100/50/15 % (and optionally ROAD, insertion/deletion) of one
//! checkpoint or of every epoch of a snapshot folder, one CSV row per epoch.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use tame_am::{AttentionMechanism, Version};
use tame_metrics::{EvalConfig, MetricSet, Report, RoadOrder, TameExplainer};

use crate::common::{write_atomically, ModelArgs};
use crate::mechanism::MechanismSource;
use crate::pass::{read_list, Pass};

/// The header of the main CSV, as the reference writes it.
pub const HEADER: &str = "epoch,AD(100%),IC(100%),AD(50%),IC(50%),AD(15%),IC(15%)";

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Folder the list's image paths are relative to.
    #[arg(long)]
    val_dir: PathBuf,

    /// Images to evaluate, `relative/path label` per line (the labels are not used: each
    /// image is explained for the backbone's own prediction).
    #[arg(long, default_value = "datalist/Evaluation_2000.txt")]
    test_list: PathBuf,

    /// A checkpoint (the project's .safetensors or a reference PyTorch .pt), or a snapshot
    /// folder whose epoch_<k>.safetensors (or .pt/.pth) files are all evaluated.
    #[arg(long)]
    am: PathBuf,

    /// Taps the mechanism reads, separated by spaces or commas. Default: the checkpoint's
    /// metadata, else the backbone's default taps.
    #[arg(long)]
    layers: Option<String>,

    /// Mechanism version: TAME, Noskipconnection, NoskipNobatchnorm, Sigmoidinfeaturebranch.
    /// Default: the checkpoint's metadata, else TAME.
    #[arg(long)]
    version: Option<Version>,

    /// First epoch of a snapshot folder to evaluate.
    #[arg(long)]
    start_epoch: Option<u64>,

    /// Last epoch of a snapshot folder to evaluate.
    #[arg(long)]
    end_epoch: Option<u64>,

    /// The CSV to write. ROAD, insertion/deletion and selection results go next to it
    /// (<stem>_road.csv, <stem>_insdel.csv, <stem>_selection.csv).
    /// Default: ./evaluation_<model>_<version>.csv.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,

    /// Also write each image's class, Y and O values (CSV) to this file.
    #[arg(long)]
    per_image: Option<PathBuf>,

    /// Metrics, separated by commas: ad-ic, road, insdel.
    #[arg(long, default_value = "ad-ic")]
    metrics: MetricSet,

    /// Evaluate every epoch's AD/IC on this list too and report the best epoch: lowest
    /// AD(100%), ties to the higher IC(100%), then to the earlier epoch.
    #[arg(long)]
    select_on: Option<PathBuf>,

    /// Seed of ROAD's imputation noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Steps of the insertion and deletion curves.
    #[arg(long, default_value_t = 16)]
    insdel_steps: usize,
}

/// One checkpoint to evaluate.
struct Snapshot {
    epoch: u64,
    am: AttentionMechanism,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let files = checkpoint_files(&args.am, args.start_epoch, args.end_epoch)?;
    let test = read_list(&args.test_list, &args.val_dir)?;
    let select = match &args.select_on {
        Some(path) => Some(read_list(path, &args.val_dir)?),
        None => None,
    };

    let (backbone, device) = args.model.load()?;
    // The first checkpoint's sidecar tells the taps and version of the whole folder.
    let first = MechanismSource::File(files[0].1.clone());
    let (taps, version) = crate::mechanism::layout(
        &first,
        args.layers.as_deref(),
        args.version,
        backbone.as_ref(),
    )?;
    let config = crate::mechanism::config(backbone.as_ref(), &taps, version, &device)?;
    // Every checkpoint is read before any evaluation, so one that does not fit fails fast.
    let snapshots = files
        .iter()
        .map(|(epoch, path)| {
            let loaded = AttentionMechanism::load(path, &config, DType::F32, &device)?;
            Ok(Snapshot {
                epoch: epoch.or(loaded.epoch).unwrap_or(0),
                am: loaded.am,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "evaluation_{}_{}.csv",
            backbone.name(),
            version.name()
        ))
    });
    let mut eval_config = EvalConfig {
        metrics: args.metrics,
        ..EvalConfig::default()
    };
    eval_config.road.seed = args.seed;
    eval_config.insdel.steps = args.insdel_steps;
    let pass = Pass {
        backbone: backbone.as_ref(),
        val_dir: &args.val_dir,
        batch_size: args.batch_size,
        device: &device,
    };

    let mut outputs: Vec<(PathBuf, String)> = Vec::new();
    if let Some(list) = &select {
        let config = EvalConfig {
            metrics: "ad-ic".parse()?,
            ..eval_config.clone()
        };
        let mut csv = format!("{HEADER}\n");
        let mut best: Option<(u64, [f64; 2])> = None;
        for snap in &snapshots {
            let explainer = TameExplainer::new(&snap.am, taps.clone())?;
            let report = pass.run(&explainer, list, &config, snap.epoch, None)?;
            let scores = report.ad_ic.context("AD/IC was not computed")?;
            csv.push_str(&ad_ic_row(snap.epoch, &report)?);
            let key = [scores.ad[0], scores.ic[0]];
            let better = match best {
                None => true,
                Some((_, [ad, ic])) => key[0] < ad || (key[0] == ad && key[1] > ic),
            };
            if better {
                best = Some((snap.epoch, key));
            }
        }
        if let Some((epoch, [ad, ic])) = best {
            println!(
                "best epoch on {}: {epoch} (AD(100%) {ad:.4}, IC(100%) {ic:.4}; lowest AD(100%), \
                 ties to the higher IC(100%))",
                list.source().display()
            );
        }
        outputs.push((sibling(&out, "selection"), csv));
    }

    let mut main_csv = format!("{HEADER}\n");
    let mut road_csv = String::from("epoch,order,removed,survival,confidence_drop\n");
    let mut insdel_csv = String::from("epoch,insertion_auc,deletion_auc\n");
    let mut per_image = String::from("epoch,image,label,class,Y,O(100%),O(50%),O(15%)\n");
    for snap in &snapshots {
        let explainer = TameExplainer::new(&snap.am, taps.clone())?;
        let report = pass.run(
            &explainer,
            &test,
            &eval_config,
            snap.epoch,
            Some(&mut per_image),
        )?;
        if args.metrics.ad_ic {
            main_csv.push_str(&ad_ic_row(snap.epoch, &report)?);
        }
        if let Some(road) = &report.road {
            for (order, curve) in RoadOrder::BOTH.iter().zip([&road.morf, &road.lerf]) {
                for (f, (survival, drop)) in road.fractions.iter().zip(curve) {
                    writeln!(
                        road_csv,
                        "{},{},{f},{survival:.4},{drop:.6}",
                        snap.epoch,
                        order.name()
                    )?;
                }
            }
        }
        if let Some(insdel) = &report.insdel {
            writeln!(
                insdel_csv,
                "{},{:.6},{:.6}",
                snap.epoch, insdel.insertion, insdel.deletion
            )?;
        }
    }
    if args.metrics.ad_ic {
        outputs.push((out.clone(), main_csv));
    }
    if args.metrics.road {
        outputs.push((sibling(&out, "road"), road_csv));
    }
    if args.metrics.insdel {
        outputs.push((sibling(&out, "insdel"), insdel_csv));
    }
    if let Some(path) = &args.per_image {
        outputs.push((path.clone(), per_image));
    }
    // Written only once everything has been computed: an error leaves no partial output.
    for (path, text) in &outputs {
        write_atomically(path, text.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One row of the main CSV.
pub fn ad_ic_row(epoch: u64, report: &Report) -> Result<String> {
    let r = report.ad_ic.context("AD/IC was not computed")?;
    let mut row = epoch.to_string();
    for level in 0..3 {
        write!(row, ",{:.4},{:.4}", r.ad[level], r.ic[level])?;
    }
    row.push('\n');
    Ok(row)
}

/// `<stem>_<what>.csv` next to `out`.
pub fn sibling(out: &Path, what: &str) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}_{what}.csv"))
}

/// The checkpoints to evaluate with their epochs (None: from the checkpoint itself): `am`
/// itself, or the `epoch_<k>` files of the folder `am` with k in the range, by epoch.
fn checkpoint_files(
    am: &Path,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<Vec<(Option<u64>, PathBuf)>> {
    if !am.is_dir() {
        if !am.is_file() {
            bail!(
                "{}: no such checkpoint file or snapshot folder",
                am.display()
            );
        }
        return Ok(vec![(None, am.to_path_buf())]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(am).with_context(|| format!("cannot read {}", am.display()))? {
        let path = entry
            .with_context(|| format!("cannot read {}", am.display()))?
            .path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "safetensors" | "pt" | "pth") {
            continue;
        }
        let epoch = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("epoch_"))
            .and_then(|k| k.parse::<u64>().ok());
        if let Some(k) = epoch {
            if start.is_none_or(|s| k >= s) && end.is_none_or(|e| k <= e) {
                found.push((k, path));
            }
        }
    }
    found.sort();
    if let Some(pair) = found.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "{} and {} hold the same epoch",
            pair[0].1.display(),
            pair[1].1.display()
        );
    }
    if found.is_empty() {
        bail!(
            "{}: no epoch_<k>.safetensors (or .pt) checkpoint{}",
            am.display(),
            match (start, end) {
                (None, None) => String::new(),
                (s, e) => format!(
                    " with epoch in {}..={}",
                    s.map_or(String::new(), |s| s.to_string()),
                    e.map_or(String::new(), |e| e.to_string())
                ),
            }
        );
    }
    Ok(found.into_iter().map(|(k, p)| (Some(k), p)).collect())
}
