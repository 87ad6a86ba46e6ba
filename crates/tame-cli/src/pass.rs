//! An evaluation pass over an image list, shared by `tame eval` and `tame compare`: the
//! list checked up front, then every image through the metrics with a progress bar.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use tame_backbones::Backbone;
use tame_data::{ImageList, ListEntry, Loader, LoaderConfig};
use tame_metrics::{EvalConfig, Evaluator, Explainer, ImageScores, Report, Totals};

use crate::common::{batch_tensor, check_inside, CsvTable};
use crate::skipped::Skipped;

/// What every evaluation pass over a list shares.
pub struct Pass<'a> {
    pub backbone: &'a dyn Backbone,
    pub val_dir: &'a Path,
    pub batch_size: usize,
    pub device: &'a Device,
    pub max_image_side: u32,
    /// The images skipped so far, over every pass.
    pub skipped: Skipped,
}

impl Pass<'_> {
    /// Evaluates `explainer`'s maps of every image of `list` (the images' `epoch` in the
    /// progress bar and per-image rows, appended when asked).
    pub fn run(
        &mut self,
        explainer: &dyn Explainer,
        list: &ImageList,
        config: &EvalConfig,
        epoch: u64,
        per_image: Option<&mut CsvTable>,
    ) -> Result<Report> {
        self.run_with_message(
            explainer,
            list,
            config,
            &format!("epoch {epoch}"),
            epoch,
            per_image,
        )
    }

    /// [`run`](Self::run) with the progress bar's label given.
    pub fn run_with_message(
        &mut self,
        explainer: &dyn Explainer,
        list: &ImageList,
        config: &EvalConfig,
        message: &str,
        epoch: u64,
        mut per_image: Option<&mut CsvTable>,
    ) -> Result<Report> {
        let evaluator = Evaluator::new(self.backbone, explainer, config.clone())?;
        let preprocessing = self.backbone.preprocessing();
        let loader_config = LoaderConfig {
            preprocessing,
            max_image_side: self.max_image_side,
            strict: false,
            ..LoaderConfig::evaluation(self.batch_size)
        };
        let loader = Loader::new(list.clone(), self.val_dir, loader_config)?;
        let bar = progress_bar(message, list)?;
        let mut totals = Totals::default();
        let mut index = 0u64;
        for batch in loader.epoch(0)? {
            let batch = batch?;
            for line in batch.skipped.iter().filter_map(|e| self.skipped.add(e)) {
                bar.suspend(|| eprintln!("{line}"));
            }
            bar.inc(batch.skipped.len() as u64);
            if batch.is_empty() {
                continue;
            }
            let count = batch.len();
            let images = batch_tensor(batch.images, count, preprocessing, self.device)?;
            let scores = evaluator.evaluate(&images, index)?;
            for (s, entry) in scores.iter().zip(&batch.entries) {
                totals.add(s);
                if let Some(table) = per_image.as_deref_mut() {
                    table.row(per_image_row(epoch, entry, s))?;
                }
            }
            index += count as u64;
            bar.inc(count as u64);
        }
        bar.finish_and_clear();
        if index == 0 {
            bail!(
                "{}: none of its {} images could be read",
                list.source().display(),
                list.len()
            );
        }
        Ok(totals.report_with(&config.road.fractions))
    }
}

fn progress_bar(message: &str, list: &ImageList) -> Result<ProgressBar> {
    let bar = ProgressBar::new(list.len() as u64).with_style(ProgressStyle::with_template(
        "{msg} {bar:40} {pos}/{len} images  {per_sec}  ETA {eta}",
    )?);
    let name = list.source().file_name().unwrap_or_default();
    bar.set_message(format!("{message} on {}", name.to_string_lossy()));
    Ok(bar)
}

/// A row of the per-image table: epoch, image, label, class, Y, then O at each level (empty
/// without AD/IC).
fn per_image_row(epoch: u64, entry: &ListEntry, s: &ImageScores) -> Vec<String> {
    let o: [String; 3] = match &s.ad_ic {
        Some(a) => a.o.map(|v| format!("{v:.6}")),
        None => Default::default(),
    };
    [
        epoch.to_string(),
        entry.path.display().to_string(),
        entry.label.to_string(),
        s.class.to_string(),
        format!("{:.6}", s.y),
    ]
    .into_iter()
    .chain(o)
    .collect()
}

/// Reads a list and checks that every image is a regular file inside `val_dir` (unless
/// `allow_outside`), so that a missing one is reported (with its list line) before any work.
pub fn read_list(path: &Path, val_dir: &Path, allow_outside: bool) -> Result<ImageList> {
    let list = ImageList::read(path)?;
    if list.is_empty() {
        bail!("{}: the list names no image", path.display());
    }
    check_inside(&list, "--val-dir", allow_outside)?;
    for entry in list.entries() {
        let image = entry.resolve(val_dir);
        if !image.exists() {
            bail!(
                "{}:{}: image {} not found",
                path.display(),
                entry.line,
                image.display()
            );
        }
        if !image.is_file() {
            bail!(
                "{}:{}: {}: not a regular file",
                path.display(),
                entry.line,
                image.display()
            );
        }
    }
    Ok(list)
}
