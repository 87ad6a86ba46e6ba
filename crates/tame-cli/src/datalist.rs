//! `tame datalist`: a training list labelled with the backbone's own top-1 predictions, the
//! "model truth" TAME trains on.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tame_backbones::{Backbone, Mode};
use tame_data::{ImageList, ListEntry, Loader, LoaderConfig};

use crate::common::{
    batch_tensor, check_writable, find_images, write_atomically, ImageArgs, ModelArgs,
};
use crate::skipped::{SkipArgs, Skipped};

#[derive(Args)]
pub struct DatalistArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Folder searched recursively for .jpg/.jpeg/.png images (in sorted order).
    #[arg(long)]
    img_dir: PathBuf,

    /// The list to write: `relative/path label` per line.
    #[arg(long)]
    out: PathBuf,

    /// Keep the images already in --out and label only the others.
    #[arg(long)]
    resume: bool,

    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = crate::common::at_least_one::<usize>)]
    batch_size: usize,

    /// Threads decoding images (default: one per core).
    #[arg(long, value_parser = crate::common::at_least_one::<usize>)]
    workers: Option<usize>,

    #[command(flatten)]
    image_args: ImageArgs,

    #[command(flatten)]
    skip: SkipArgs,
}

/// How often the list written so far is saved, so that `--resume` loses little after a kill.
const SAVE_EVERY: Duration = Duration::from_secs(30);

pub fn run(args: DatalistArgs) -> Result<()> {
    check_writable(&args.out)?;
    let images = find_images(&args.img_dir)?;
    if images.is_empty() {
        bail!(
            "{}: no .jpg, .jpeg or .png image found",
            args.img_dir.display()
        );
    }
    let mut text = String::new();
    let mut done = HashSet::new();
    if args.resume && args.out.exists() {
        for entry in ImageList::read(&args.out)?.entries() {
            writeln!(text, "{} {}", entry.path.display(), entry.label)?;
            done.insert(entry.path.clone());
        }
    }
    let pending: Vec<ListEntry> = images
        .into_iter()
        .filter(|p| !done.contains(p))
        .enumerate()
        .map(|(i, path)| ListEntry {
            path,
            label: 0,
            line: i + 1,
        })
        .collect();
    eprintln!(
        "{} images to label in {} ({} already listed)",
        pending.len(),
        args.img_dir.display(),
        done.len()
    );
    let (backbone, device) = args.model.load()?;
    let skipped = label(&args, pending, backbone.as_ref(), &device, &mut text)?;
    write_atomically(&args.out, text.as_bytes())?;
    eprintln!(
        "wrote {} ({} images labelled by {})",
        args.out.display(),
        text.lines().count(),
        backbone.name(),
    );
    skipped.finish(args.skip.skip_bad)
}

/// Appends a `path label` line to `text` for each of `pending` (label: the backbone's top-1
/// class), saving the list every [`SAVE_EVERY`]; returns the unreadable images skipped.
fn label(
    args: &DatalistArgs,
    pending: Vec<ListEntry>,
    backbone: &dyn Backbone,
    device: &Device,
    text: &mut String,
) -> Result<Skipped> {
    let request = backbone.tap_request(&[], true)?;
    let preprocessing = backbone.preprocessing();
    let mut config = LoaderConfig {
        preprocessing,
        strict: false,
        max_image_side: args.image_args.max_image_side,
        ..LoaderConfig::evaluation(args.batch_size)
    };
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    let list = ImageList::from_entries(args.img_dir.clone(), pending);
    let bar = ProgressBar::new(list.len() as u64).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
    )?);
    let loader = Loader::new(list, &args.img_dir, config)?;
    let mut skipped = Skipped::new(false);
    let mut last_save = Instant::now();
    for batch in loader.epoch(0)? {
        let batch = batch?;
        for line in batch.skipped.iter().filter_map(|e| skipped.add(e)) {
            bar.suspend(|| eprintln!("{line}"));
        }
        bar.inc((batch.len() + batch.skipped.len()) as u64);
        if batch.is_empty() {
            continue;
        }
        let images = batch_tensor(batch.images, batch.labels.len(), preprocessing, device)?;
        let logits = (backbone.forward(&images, &request, Mode::Eval)?.logits)
            .context("the backbone returned no logits")?;
        for (entry, label) in batch
            .entries
            .iter()
            .zip(logits.argmax(1)?.to_vec1::<u32>()?)
        {
            writeln!(text, "{} {label}", entry.path.display())?;
        }
        if last_save.elapsed() > SAVE_EVERY {
            write_atomically(&args.out, text.as_bytes())?;
            last_save = Instant::now();
        }
    }
    bar.finish();
    Ok(skipped)
}
