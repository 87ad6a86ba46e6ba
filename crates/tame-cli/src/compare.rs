//! `tame compare`: several explanation methods through the same metrics on the same images,
//! as one table (Markdown and CSV) in the layout of the TAME paper's comparison table, and a
//! picture grid of the methods' maps on the first images.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, D};
use clap::Args;
use tame_backbones::{Backbone, Mode};
use tame_data::{load_rgb_within, ImageList, RgbImage};
use tame_metrics::{normalize_maps, EvalConfig, Explainer, MetricSet, Report};

use crate::common::{
    check_writable, crops_tensor, write_atomically, CsvTable, ImageArgs, ModelArgs,
};
use crate::mechanism::MechanismArgs;
use crate::methods::{Method, MethodArgs, Methods};
use crate::pass::{read_list, Pass};
use crate::render::{jet_overlay, png_bytes, rows_of};
use crate::skipped::{SkipArgs, Skipped};

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Methods to compare, separated by commas (tame, gradcam, gradcam++, scorecam, rise), or
    /// all.
    #[arg(long, default_value = "all")]
    methods: Methods,

    /// Folder the list's image paths are relative to.
    #[arg(long)]
    val_dir: PathBuf,

    /// Images to evaluate, `relative/path label` per line (each image is explained for the
    /// backbone's own prediction).
    #[arg(long, default_value = "datalist/Evaluation_2000.txt")]
    test_list: PathBuf,

    #[command(flatten)]
    mechanism: MechanismArgs,

    /// Metrics, separated by commas: ad-ic, road, insdel.
    #[arg(long, default_value = "ad-ic")]
    metrics: MetricSet,

    /// The Markdown table to write; the CSV goes next to it (same stem, .csv).
    #[arg(long, default_value = "comparison.md")]
    out: PathBuf,

    /// Images per forward pass of the metrics.
    #[arg(long, default_value_t = 8, value_parser = crate::common::at_least_one::<usize>)]
    batch_size: usize,

    /// Seed of ROAD's imputation noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Images in the side-by-side grid written next to the table (`<out stem>_grid.png`: one
    /// row per image, the first N of the list; the crop, then each method's map of the
    /// backbone's top class, in the table's order). 0: no grid.
    #[arg(long, default_value_t = 8)]
    grid_images: usize,

    #[command(flatten)]
    method_args: MethodArgs,

    /// Read list paths that leave --val-dir (absolute paths, `..`), which are refused otherwise.
    #[arg(long)]
    allow_outside: bool,

    #[command(flatten)]
    image_args: ImageArgs,

    #[command(flatten)]
    skip: SkipArgs,
}

/// One method's row.
struct Row {
    title: &'static str,
    report: Report,
    seconds_per_image: f64,
}

pub fn run(args: CompareArgs) -> Result<()> {
    check_writable(&args.out)?;
    let list = read_list(&args.test_list, &args.val_dir, args.allow_outside)?;
    let (backbone, device) = args.model.load()?;
    let methods = &args.methods.0;
    let mechanism = args.mechanism.load_if(
        methods.contains(&Method::Tame),
        args.model.model,
        backbone.as_ref(),
        &device,
    )?;
    let explainers = args
        .method_args
        .build_all(methods, backbone.as_ref(), mechanism.as_ref())?;
    let mut pass = Pass {
        backbone: backbone.as_ref(),
        val_dir: &args.val_dir,
        batch_size: args.batch_size,
        device: &device,
        max_image_side: args.image_args.max_image_side,
        skipped: Skipped::new(true),
    };
    let rows = score(&mut pass, &explainers, &list, &eval_config(&args))?;
    let (header, lines) = table(&rows, &args.metrics)?;
    let model = format!("{} ({})", backbone.name(), args.model.precision);
    // The images the table is made of: the list's less those skipped as unreadable.
    let images = list.len() - pass.skipped.count();
    let markdown = markdown(&args, images, &model, &header, &lines);
    let mut csv = CsvTable::new(&header)?;
    for line in &lines {
        csv.row(line)?;
    }
    let grid_paths: Vec<PathBuf> = list
        .entries()
        .iter()
        .map(|e| e.resolve(&args.val_dir))
        .filter(|path| !pass.skipped.contains(path))
        .take(args.grid_images)
        .collect();
    let grid = if grid_paths.is_empty() {
        None
    } else {
        Some(grid(
            &grid_paths,
            &explainers,
            backbone.as_ref(),
            &device,
            pass.max_image_side,
        )?)
    };
    let csv_path = args.out.with_extension("csv");
    write_atomically(&args.out, markdown.as_bytes())?;
    write_atomically(&csv_path, &csv.into_bytes()?)?;
    print!("{markdown}");
    eprintln!("wrote {} and {}", args.out.display(), csv_path.display());
    if let Some(grid) = grid {
        write_grid(&args.out, &grid, &explainers)?;
    }
    pass.skipped.finish(args.skip.skip_bad)
}

fn eval_config(args: &CompareArgs) -> EvalConfig {
    let mut config = EvalConfig {
        metrics: args.metrics,
        ..EvalConfig::default()
    };
    config.road.seed = args.seed;
    config
}

/// Each method through the metrics, timed.
fn score(
    pass: &mut Pass,
    explainers: &[(Method, Box<dyn Explainer + '_>)],
    list: &ImageList,
    config: &EvalConfig,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (method, explainer) in explainers {
        let started = Instant::now();
        let report =
            pass.run_with_message(explainer.as_ref(), list, config, method.name(), 0, None)?;
        let seconds_per_image = started.elapsed().as_secs_f64() / list.len() as f64;
        eprintln!("{}: {seconds_per_image:.2} s per image", method.title());
        rows.push(Row {
            title: method.title(),
            report,
            seconds_per_image,
        });
    }
    Ok(rows)
}

/// The table in Markdown, under a line saying what was compared.
fn markdown(
    args: &CompareArgs,
    images: usize,
    model: &str,
    header: &[String],
    lines: &[Vec<String>],
) -> String {
    let mut text = format!(
        "Comparison on {} ({images} images), backbone {model}. AD: lower is better; IC: higher \
         is better; time: metrics included, per image.\n\n| {} |\n|{}|\n",
        args.test_list.display(),
        header.join(" | "),
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|"),
    );
    for line in lines {
        text.push_str(&format!("| {} |\n", line.join(" | ")));
    }
    text
}

/// Writes the picture grid as `<out stem>_grid.png`.
fn write_grid(
    out: &Path,
    grid: &RgbImage,
    explainers: &[(Method, Box<dyn Explainer + '_>)],
) -> Result<()> {
    let path = out.with_file_name(format!(
        "{}_grid.png",
        out.file_stem().unwrap_or_default().to_string_lossy()
    ));
    write_atomically(&path, &png_bytes(grid)?)?;
    let columns: Vec<&str> = explainers.iter().map(|(m, _)| m.title()).collect();
    eprintln!(
        "wrote {} (columns: image, {})",
        path.display(),
        columns.join(", ")
    );
    Ok(())
}

/// The picture grid: one row per image (the crop the backbone saw, then each method's
/// overlay of the backbone's top class).
fn grid(
    paths: &[PathBuf],
    explainers: &[(Method, Box<dyn Explainer + '_>)],
    backbone: &dyn Backbone,
    device: &Device,
    max_side: u32,
) -> Result<RgbImage> {
    let preprocessing = backbone.preprocessing();
    let mut rows = Vec::new();
    for path in paths {
        let (crop, _) = preprocessing.apply(&load_rgb_within(path, max_side)?);
        let image = crops_tensor(std::slice::from_ref(&crop), preprocessing, device)?;
        let mut class = None;
        let mut row = vec![crop.clone()];
        // Each method reads its own taps; the first pass also gives the class.
        for (_, explainer) in explainers {
            let request = backbone.tap_request(explainer.taps(), class.is_none())?;
            let out = backbone.forward(&image, &request, Mode::Eval)?;
            if class.is_none() {
                let logits = out.logits.context("the backbone returned no logits")?;
                class = Some(logits.argmax(D::Minus1)?.to_vec1::<u32>()?);
            }
            let classes = class.as_deref().unwrap_or_default();
            let side = preprocessing.side();
            let map = normalize_maps(&explainer.explain(&image, &out.taps, classes)?, side, side)?;
            row.push(jet_overlay(&crop, &map.flatten_all()?.to_vec1::<f32>()?));
        }
        rows.push(row);
    }
    Ok(rows_of(&rows))
}

/// The header and the rows of the table: AD/IC at the three levels, ROAD as the mean
/// survival over the removal fractions (MoRF: lower is better; LeRF: higher), insertion and
/// deletion AUC, and seconds per image.
fn table(rows: &[Row], metrics: &MetricSet) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut header = vec!["Method".to_string()];
    if metrics.ad_ic {
        for level in ["100%", "50%", "15%"] {
            header.push(format!("AD({level})"));
            header.push(format!("IC({level})"));
        }
    }
    if metrics.road {
        header.extend(["ROAD MoRF survival".into(), "ROAD LeRF survival".into()]);
    }
    if metrics.insdel {
        header.extend(["Insertion AUC".into(), "Deletion AUC".into()]);
    }
    header.push("s/image".into());
    let mut lines = Vec::new();
    for row in rows {
        let mut line = vec![row.title.to_string()];
        if let Some(r) = &row.report.ad_ic {
            for level in 0..3 {
                line.push(format!("{:.2}", r.ad[level]));
                line.push(format!("{:.2}", r.ic[level]));
            }
        }
        if let Some(r) = &row.report.road {
            let mean = |curve: &[(f64, f64)]| {
                curve.iter().map(|p| p.0).sum::<f64>() / curve.len().max(1) as f64
            };
            line.push(format!("{:.3}", mean(&r.morf)));
            line.push(format!("{:.3}", mean(&r.lerf)));
        }
        if let Some(r) = &row.report.insdel {
            line.push(format!("{:.4}", r.insertion));
            line.push(format!("{:.4}", r.deletion));
        }
        line.push(format!("{:.2}", row.seconds_per_image));
        if line.len() != header.len() {
            bail!("{}: a selected metric gave no result", row.title);
        }
        lines.push(line);
    }
    Ok((header, lines))
}
