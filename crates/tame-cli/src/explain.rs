//! `tame explain`: explanation maps of chosen classes for images, as PNG overlays and .npy,
//! by TAME or any comparison method; with no image, a built-in photo and the built-in demo
//! mechanism of EfficientNet-Lite0.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Tensor, D};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tame_am::Version;
use tame_backbones::imagenet::class_name;
use tame_backbones::Mode;
use tame_data::{
    decode_rgb, explain_transform, load_rgb, to_chw_f32, RgbImage, CROP_SIDE, IMAGE_LEN,
};
use tame_metrics::normalize_maps;

use crate::common::{find_images, write_atomically, ModelArgs};
use crate::mechanism::MechanismArgs;
use crate::methods::{Method, MethodArgs, Methods};
use crate::render::{jet_overlay, npy_bytes, side_by_side};

/// The photo explained when no image is given: Chelsea the cat, from scikit-image's sample
/// data (CC0; see crates/tame-cli/assets/ATTRIBUTION.md).
const DEFAULT_PHOTO: &[u8] = include_bytes!("../assets/chelsea.jpg");
const DEFAULT_PHOTO_NAME: &str = "chelsea.jpg";

#[derive(Args)]
pub struct ExplainArgs {
    /// Images (JPEG/PNG) or folders of images to explain. Default: a built-in photo.
    images: Vec<PathBuf>,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    mechanism: MechanismArgs,

    /// Class to explain (0..999); repeat for several. Default: the top prediction.
    #[arg(long = "label", conflicts_with = "top_k")]
    labels: Vec<u32>,

    /// Explain the K most probable classes of each image.
    #[arg(long)]
    top_k: Option<usize>,

    /// Output folder. Default: ./heatmaps/<model>_<version>/.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Print a JSON report on stdout instead of text.
    #[arg(long)]
    json: bool,

    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,

    /// Explanation method: tame, gradcam, gradcam++, scorecam, rise, several separated by
    /// commas, or all. With several, each image and class also gets a side-by-side PNG
    /// (<image>_<class>_methods.png: the image, then one overlay per method in this order).
    #[arg(long, default_value = "tame")]
    method: Methods,

    #[command(flatten)]
    method_args: MethodArgs,
}

#[derive(Serialize)]
struct Prediction {
    class: u32,
    name: &'static str,
    probability: f32,
}

#[derive(Serialize)]
struct ExplainedClass {
    class: u32,
    name: &'static str,
    method: &'static str,
    overlay: PathBuf,
    map: PathBuf,
}

#[derive(Serialize)]
struct ImageReport {
    image: PathBuf,
    crop: PathBuf,
    top5: Vec<Prediction>,
    explained: Vec<ExplainedClass>,
    /// Side-by-side PNGs (image, then each method's overlay), one per class, when several
    /// methods ran.
    grids: Vec<PathBuf>,
}

pub fn run(args: ExplainArgs) -> Result<()> {
    if let Some(bad) = args.labels.iter().find(|&&l| l >= 1000) {
        bail!("--label {bad}: classes are 0..999");
    }
    if args.top_k.is_some_and(|k| k == 0 || k > 1000) {
        bail!("--top-k must be between 1 and 1000");
    }
    // Decode everything first: a bad file stops the run before any output is written.
    let (images, crops) = if args.images.is_empty() {
        let photo = decode_rgb(DEFAULT_PHOTO).context("the built-in photo")?;
        (
            vec![PathBuf::from(DEFAULT_PHOTO_NAME)],
            vec![explain_transform(&photo)],
        )
    } else {
        let images = args
            .images
            .iter()
            .map(|p| {
                if p.is_dir() {
                    Ok(find_images(p)?.into_iter().map(|r| p.join(r)).collect())
                } else {
                    Ok(vec![p.clone()])
                }
            })
            .collect::<Result<Vec<Vec<PathBuf>>>>()?
            .concat();
        if images.is_empty() {
            bail!("no image to explain");
        }
        let crops = images
            .iter()
            .map(|p| Ok(explain_transform(&load_rgb(p)?)))
            .collect::<Result<Vec<RgbImage>>>()?;
        (images, crops)
    };
    let methods = &args.method.0;

    let (backbone, device) = args.model.load()?;
    let mechanism = args.mechanism.load_if(
        methods.contains(&Method::Tame),
        args.model.model,
        backbone.as_ref(),
        &device,
    )?;
    let explainers = methods
        .iter()
        .map(|&m| {
            Ok((
                m,
                args.method_args
                    .build(m, backbone.as_ref(), mechanism.as_ref())?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let what = match methods.as_slice() {
            [Method::Tame] => mechanism
                .as_ref()
                .map_or(Version::Tame, |m| m.version)
                .name()
                .to_string(),
            [one] => one.name().to_string(),
            _ => "methods".into(),
        };
        PathBuf::from(format!("heatmaps/{}_{what}", backbone.name()))
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let taps = mechanism
        .as_ref()
        .map(|m| m.taps.clone())
        .unwrap_or_default();
    let request = backbone.tap_request(&taps, true)?;

    let bar = if args.json || images.len() == 1 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(images.len() as u64).with_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  ETA {eta}",
        )?)
    };
    let mut reports = Vec::new();
    for (paths, crops) in images
        .chunks(args.batch_size.max(1))
        .zip(crops.chunks(args.batch_size.max(1)))
    {
        let mut pixels = vec![0f32; crops.len() * IMAGE_LEN];
        for (crop, out) in crops.iter().zip(pixels.chunks_mut(IMAGE_LEN)) {
            to_chw_f32(crop, out);
        }
        let batch = Tensor::from_vec(pixels, tame_data::batch_shape(crops.len()), &device)?;
        let out = backbone.forward(&batch, &request, Mode::Eval)?;
        let logits = out.logits.context("the backbone returned no logits")?;
        let probabilities = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        let classes: Vec<Vec<u32>> = probabilities
            .iter()
            .map(|p| match args.top_k {
                Some(k) => ranked(p).into_iter().take(k).collect(),
                None if args.labels.is_empty() => ranked(p).into_iter().take(1).collect(),
                None => args.labels.clone(),
            })
            .collect();
        // maps[m][j]: method m's (B, S, S) maps of each image's j-th class.
        let maps = explainers
            .iter()
            .map(|(method, explainer)| {
                bar.set_message(method.name());
                (0..classes[0].len())
                    .map(|j| {
                        let column: Vec<u32> = classes.iter().map(|c| c[j]).collect();
                        let raw = explainer.explain(&batch, &out.taps, &column)?;
                        Ok(normalize_maps(&raw, CROP_SIDE, CROP_SIDE)?)
                    })
                    .collect::<Result<Vec<Tensor>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, (path, crop)) in paths.iter().zip(crops).enumerate() {
            let image_maps = methods
                .iter()
                .zip(&maps)
                .map(|(&m, per_class)| {
                    let rows = per_class
                        .iter()
                        .map(|t| Ok(t.get(i)?.flatten_all()?.to_vec1::<f32>()?))
                        .collect::<Result<Vec<_>>>()?;
                    Ok((m, rows))
                })
                .collect::<Result<Vec<_>>>()?;
            let report = write_outputs(
                path,
                crop,
                &image_maps,
                &classes[i],
                &probabilities[i],
                &out_dir,
            )?;
            if !args.json {
                bar.suspend(|| print_report(&report, backbone.name()));
            }
            reports.push(report);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}

/// Class indices by decreasing probability.
fn ranked(probabilities: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..probabilities.len() as u32).collect();
    order.sort_by(|&a, &b| probabilities[b as usize].total_cmp(&probabilities[a as usize]));
    order
}

/// Writes the crop, then for each class and method the overlay PNG and the .npy map
/// (TAME's without a method suffix), and a side-by-side PNG when several methods ran.
/// `maps[m]` is method m's list of 224x224 maps, one per class of `classes`.
fn write_outputs(
    path: &Path,
    crop: &RgbImage,
    maps: &[(Method, Vec<Vec<f32>>)],
    classes: &[u32],
    probabilities: &[f32],
    out_dir: &Path,
) -> Result<ImageReport> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let crop_path = out_dir.join(format!("{stem}.png"));
    write_atomically(&crop_path, &crate::render::png_bytes(crop)?)?;
    let mut explained = Vec::new();
    let mut grids = Vec::new();
    for (j, &class) in classes.iter().enumerate() {
        let mut panels = vec![crop.clone()];
        for (method, per_class) in maps {
            let map = &per_class[j];
            let suffix = match method {
                Method::Tame => String::new(),
                other => format!("_{}", other.name()),
            };
            let overlay_image = jet_overlay(crop, map);
            let overlay = out_dir.join(format!("{stem}_{class}{suffix}_mask.png"));
            write_atomically(&overlay, &crate::render::png_bytes(&overlay_image)?)?;
            let npy = out_dir.join(format!("{stem}_{class}{suffix}.npy"));
            write_atomically(&npy, &npy_bytes(map, &[CROP_SIDE, CROP_SIDE]))?;
            panels.push(overlay_image);
            explained.push(ExplainedClass {
                class,
                name: class_name(class as usize).unwrap_or("?"),
                method: method.name(),
                overlay,
                map: npy,
            });
        }
        if maps.len() > 1 {
            let grid = out_dir.join(format!("{stem}_{class}_methods.png"));
            write_atomically(&grid, &crate::render::png_bytes(&side_by_side(&panels))?)?;
            grids.push(grid);
        }
    }
    let top5 = ranked(probabilities)
        .into_iter()
        .take(5)
        .map(|c| Prediction {
            class: c,
            name: class_name(c as usize).unwrap_or("?"),
            probability: probabilities[c as usize],
        })
        .collect();
    Ok(ImageReport {
        image: path.to_path_buf(),
        crop: crop_path,
        top5,
        explained,
        grids,
    })
}

fn print_report(report: &ImageReport, model: &str) {
    let top: Vec<String> = report
        .top5
        .iter()
        .map(|p| format!("{} {} {:.1}%", p.class, p.name, 100.0 * p.probability))
        .collect();
    println!(
        "{}: {model} top-5: {}",
        report.image.display(),
        top.join(", ")
    );
    println!(
        "  the {size}x{size} crop it saw: {}",
        report.crop.display(),
        size = tame_data::CROP_SIZE
    );
    for e in &report.explained {
        let by = match e.method {
            "tame" => String::new(),
            other => format!(" by {other}"),
        };
        println!(
            "  explained {} ({}){by}: {}  {}",
            e.class,
            e.name,
            e.overlay.display(),
            e.map.display()
        );
    }
    for grid in &report.grids {
        println!("  side by side: {}", grid.display());
    }
}
