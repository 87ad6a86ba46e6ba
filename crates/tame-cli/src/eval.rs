//! `tame eval`: AD and IC at 100/50/15 % (and optionally ROAD, insertion/deletion) of one
//! checkpoint or of every epoch of a snapshot folder, one CSV row per epoch.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use tame_am::{AttentionMechanism, Version};
use tame_backbones::Backbone;
use tame_data::ImageList;
use tame_metrics::{EvalConfig, MetricSet, Report, RoadOrder, RoadReport, TameExplainer};

use crate::common::{check_writable, write_atomically, CsvTable, ImageArgs, ModelArgs};
use crate::mechanism::MechanismSource;
use crate::pass::{read_list, Pass};
use crate::skipped::{SkipArgs, Skipped};

/// The header of the main CSV, as the reference writes it.
const AD_IC_HEADER: [&str; 7] = [
    "epoch", "AD(100%)", "IC(100%)", "AD(50%)", "IC(50%)", "AD(15%)", "IC(15%)",
];
/// The header of `--per-image`: each image's class, its probability Y and the masked O.
const PER_IMAGE_HEADER: [&str; 8] = [
    "epoch", "image", "label", "class", "Y", "O(100%)", "O(50%)", "O(15%)",
];

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
    #[arg(long, default_value_t = 8, value_parser = crate::common::at_least_one::<usize>)]
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

    /// Read list paths that leave --val-dir (absolute paths, `..`), which are refused otherwise.
    #[arg(long)]
    allow_outside: bool,

    #[command(flatten)]
    image_args: ImageArgs,

    #[command(flatten)]
    skip: SkipArgs,
}

/// One checkpoint to evaluate.
struct Snapshot {
    epoch: u64,
    am: AttentionMechanism,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(out) = &args.out {
        check_writable(out)?;
    }
    let files = checkpoint_files(&args.am, args.start_epoch, args.end_epoch)?;
    let test = read_list(&args.test_list, &args.val_dir, args.allow_outside)?;
    let select = match &args.select_on {
        Some(path) => Some(read_list(path, &args.val_dir, args.allow_outside)?),
        None => None,
    };
    let (backbone, device) = args.model.load()?;
    let (snapshots, taps, version) = load_snapshots(&args, &files, backbone.as_ref(), &device)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "evaluation_{}_{}.csv",
            backbone.name(),
            version.name()
        ))
    });
    check_writable(&out)?;
    let mut config = EvalConfig {
        metrics: args.metrics,
        ..EvalConfig::default()
    };
    config.road.seed = args.seed;
    config.insdel.steps = args.insdel_steps;
    let mut pass = Pass {
        backbone: backbone.as_ref(),
        val_dir: &args.val_dir,
        batch_size: args.batch_size,
        device: &device,
        max_image_side: args.image_args.max_image_side,
        skipped: Skipped::new(true),
    };

    let mut outputs = Vec::new();
    if let Some(list) = &select {
        let selection = select_epoch(&mut pass, list, &snapshots, &taps, &config)?;
        outputs.push((sibling(&out, "selection"), selection));
    }
    outputs.extend(evaluate(
        &args, &out, &mut pass, &test, &snapshots, &taps, &config,
    )?);
    // Written only once everything has been computed: an error leaves no partial output.
    for (path, bytes) in &outputs {
        write_atomically(path, bytes)?;
        eprintln!("wrote {}", path.display());
    }
    pass.skipped.finish(args.skip.skip_bad)
}

/// Every checkpoint of `files`, read before any evaluation so that one that does not fit
/// fails fast, with the taps and version the first one's sidecar names for them all.
fn load_snapshots(
    args: &EvalArgs,
    files: &[(Option<u64>, PathBuf)],
    backbone: &dyn Backbone,
    device: &Device,
) -> Result<(Vec<Snapshot>, Vec<String>, Version)> {
    let first = MechanismSource::File(files[0].1.clone());
    let (taps, version) =
        crate::mechanism::layout(&first, args.layers.as_deref(), args.version, backbone)?;
    let config = crate::mechanism::config(backbone, &taps, version, device)?;
    let snapshots = files
        .iter()
        .map(|(epoch, path)| {
            let loaded = AttentionMechanism::load(path, &config, DType::F32, device)?;
            Ok(Snapshot {
                epoch: epoch.or(loaded.epoch).unwrap_or(0),
                am: loaded.am,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((snapshots, taps, version))
}

/// AD/IC of every snapshot on the selection list (the selection CSV), printing the best
/// epoch: the lowest AD(100%), ties to the higher IC(100%).
fn select_epoch(
    pass: &mut Pass,
    list: &ImageList,
    snapshots: &[Snapshot],
    taps: &[String],
    config: &EvalConfig,
) -> Result<Vec<u8>> {
    let config = EvalConfig {
        metrics: "ad-ic".parse()?,
        ..config.clone()
    };
    let mut csv = CsvTable::new(AD_IC_HEADER)?;
    let mut best: Option<(u64, [f64; 2])> = None;
    for snap in snapshots {
        let explainer = TameExplainer::new(&snap.am, taps.to_vec())?;
        let report = pass.run(&explainer, list, &config, snap.epoch, None)?;
        csv.row(ad_ic_row(snap.epoch, &report)?)?;
        let scores = report.ad_ic.context("AD/IC was not computed")?;
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
    csv.into_bytes()
}

/// The metrics of every snapshot on the test list: the output files and their contents.
fn evaluate(
    args: &EvalArgs,
    out: &Path,
    pass: &mut Pass,
    test: &ImageList,
    snapshots: &[Snapshot],
    taps: &[String],
    config: &EvalConfig,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut main = CsvTable::new(AD_IC_HEADER)?;
    let mut road = CsvTable::new(["epoch", "order", "removed", "survival", "confidence_drop"])?;
    let mut insdel = CsvTable::new(["epoch", "insertion_auc", "deletion_auc"])?;
    let mut per_image = CsvTable::new(PER_IMAGE_HEADER)?;
    for snap in snapshots {
        let explainer = TameExplainer::new(&snap.am, taps.to_vec())?;
        let report = pass.run(&explainer, test, config, snap.epoch, Some(&mut per_image))?;
        let epoch = snap.epoch.to_string();
        if args.metrics.ad_ic {
            main.row(ad_ic_row(snap.epoch, &report)?)?;
        }
        if let Some(r) = &report.road {
            road_rows(&mut road, &epoch, r)?;
        }
        if let Some(r) = &report.insdel {
            insdel.row([
                epoch,
                format!("{:.6}", r.insertion),
                format!("{:.6}", r.deletion),
            ])?;
        }
    }
    let mut outputs = Vec::new();
    if args.metrics.ad_ic {
        outputs.push((out.to_path_buf(), main.into_bytes()?));
    }
    if args.metrics.road {
        outputs.push((sibling(out, "road"), road.into_bytes()?));
    }
    if args.metrics.insdel {
        outputs.push((sibling(out, "insdel"), insdel.into_bytes()?));
    }
    if let Some(path) = &args.per_image {
        outputs.push((path.clone(), per_image.into_bytes()?));
    }
    Ok(outputs)
}

/// The rows of ROAD's CSV for one epoch: each order's curve, point by point.
fn road_rows(table: &mut CsvTable, epoch: &str, r: &RoadReport) -> Result<()> {
    for (order, curve) in RoadOrder::BOTH.iter().zip([&r.morf, &r.lerf]) {
        for (f, (survival, drop)) in r.fractions.iter().zip(curve) {
            table.row([
                epoch.to_string(),
                order.name().to_string(),
                f.to_string(),
                format!("{survival:.4}"),
                format!("{drop:.6}"),
            ])?;
        }
    }
    Ok(())
}

/// One row of the main CSV.
fn ad_ic_row(epoch: u64, report: &Report) -> Result<Vec<String>> {
    let r = report.ad_ic.context("AD/IC was not computed")?;
    let mut row = vec![epoch.to_string()];
    for level in 0..3 {
        row.push(format!("{:.4}", r.ad[level]));
        row.push(format!("{:.4}", r.ic[level]));
    }
    Ok(row)
}

/// `<stem>_<what>.csv` next to `out`.
fn sibling(out: &Path, what: &str) -> PathBuf {
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
    let in_range = |k: u64| start.is_none_or(|s| k >= s) && end.is_none_or(|e| k <= e);
    let mut found: Vec<(u64, PathBuf)> = epoch_files(am)?
        .into_iter()
        .filter(|(k, _)| in_range(*k))
        .collect();
    found.sort();
    if let Some(pair) = found.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "{} and {} hold the same epoch",
            pair[0].1.display(),
            pair[1].1.display()
        );
    }
    if found.is_empty() {
        let range = match (start, end) {
            (None, None) => String::new(),
            (s, e) => format!(
                " with epoch in {}..={}",
                s.map_or(String::new(), |s| s.to_string()),
                e.map_or(String::new(), |e| e.to_string())
            ),
        };
        bail!(
            "{}: no epoch_<k>.safetensors (or .pt) checkpoint{range}",
            am.display()
        );
    }
    Ok(found.into_iter().map(|(k, p)| (Some(k), p)).collect())
}

/// The `epoch_<k>.safetensors` (or .pt/.pth) files of `folder`, with their k.
fn epoch_files(folder: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let cannot_read = || format!("cannot read {}", folder.display());
    for entry in std::fs::read_dir(folder).with_context(cannot_read)? {
        let path = entry.with_context(cannot_read)?.path();
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
            found.push((k, path));
        }
    }
    Ok(found)
}
