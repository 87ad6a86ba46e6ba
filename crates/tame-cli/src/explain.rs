//! `tame explain`: explanation maps of chosen classes for images, as PNG overlays and .npy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tame_am::{AmConfig, AttentionMechanism, CheckpointMeta, TapShape, Version};
use tame_backbones::imagenet::class_name;
use tame_backbones::{Backbone, Mode};
use tame_data::{explain_transform, load_rgb, to_chw_f32, RgbImage, IMAGE_LEN};

use crate::common::{find_images, parse_layers, write_atomically, ModelArgs};
use crate::render::{jet_overlay, npy_bytes};

#[derive(Args)]
pub struct ExplainArgs {
    /// Images (JPEG/PNG) or folders of images to explain.
    #[arg(required = true)]
    images: Vec<PathBuf>,

    #[command(flatten)]
    model: ModelArgs,

    /// The trained attention mechanism: a tame checkpoint (.safetensors with its .json) or a
    /// reference PyTorch checkpoint (.pt/.pth).
    #[arg(long)]
    am: PathBuf,

    /// Taps the mechanism reads, separated by spaces or commas. Default: the checkpoint's
    /// (from its .json), else the backbone's default taps.
    #[arg(long)]
    layers: Option<String>,

    /// Mechanism version: TAME, Noskipconnection, NoskipNobatchnorm, Sigmoidinfeaturebranch.
    /// Default: the checkpoint's, else TAME.
    #[arg(long)]
    version: Option<Version>,

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
    overlay: PathBuf,
    map: PathBuf,
}

#[derive(Serialize)]
struct ImageReport {
    image: PathBuf,
    crop: PathBuf,
    top5: Vec<Prediction>,
    explained: Vec<ExplainedClass>,
}

pub fn run(args: ExplainArgs) -> Result<()> {
    if let Some(bad) = args.labels.iter().find(|&&l| l >= 1000) {
        bail!("--label {bad}: classes are 0..999");
    }
    if args.top_k.is_some_and(|k| k == 0 || k > 1000) {
        bail!("--top-k must be between 1 and 1000");
    }
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
    // Decode everything first: a bad file stops the run before any output is written.
    let crops = images
        .iter()
        .map(|p| Ok(explain_transform(&load_rgb(p)?)))
        .collect::<Result<Vec<RgbImage>>>()?;

    let (backbone, device) = args.model.load()?;
    let (taps, version) = mechanism_layout(&args, backbone.as_ref())?;
    let out_dir = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("heatmaps/{}_{}", backbone.name(), version.name()))
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let request = backbone.tap_request(&taps, true)?;

    let bar = if args.json || images.len() == 1 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(images.len() as u64).with_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  ETA {eta}",
        )?)
    };
    let mut am: Option<AttentionMechanism> = None;
    let mut reports = Vec::new();
    for (paths, crops) in images
        .chunks(args.batch_size.max(1))
        .zip(crops.chunks(args.batch_size.max(1)))
    {
        let mut pixels = vec![0f32; crops.len() * IMAGE_LEN];
        for (crop, out) in crops.iter().zip(pixels.chunks_mut(IMAGE_LEN)) {
            to_chw_f32(crop, out);
        }
        let batch = Tensor::from_vec(pixels, (crops.len(), 3, 224, 224), &device)?;
        let out = backbone.forward(&batch, &request, Mode::Eval)?;
        let am = match &mut am {
            Some(am) => am,
            None => am.insert(load_mechanism(&args.am, &out.taps, version, &device)?),
        };
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
        let features = am.fused_features(&out.taps, false)?;
        let maps = am.per_sample_class_logits(&features, &classes)?;
        for (i, (path, crop)) in paths.iter().zip(crops).enumerate() {
            let report = write_outputs(
                path,
                crop,
                &maps.get(i)?,
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

/// The taps and version of the mechanism: the flags, else the checkpoint's sidecar, else the
/// backbone's defaults and TAME.
fn mechanism_layout(args: &ExplainArgs, backbone: &dyn Backbone) -> Result<(Vec<String>, Version)> {
    let meta = CheckpointMeta::read(&args.am).ok();
    if let Some(meta) = &meta {
        if meta.backbone != backbone.name() {
            bail!(
                "{}: this attention mechanism was trained on {}, not {}",
                args.am.display(),
                meta.backbone,
                backbone.name()
            );
        }
    }
    let taps = match (&args.layers, &meta) {
        (Some(layers), _) => parse_layers(layers),
        (None, Some(meta)) => meta.taps.clone(),
        (None, None) => backbone.default_taps(),
    };
    let version = args
        .version
        .or(meta.map(|m| m.version))
        .unwrap_or(Version::Tame);
    Ok((taps, version))
}

fn load_mechanism(
    path: &Path,
    taps: &[Tensor],
    version: Version,
    device: &Device,
) -> Result<AttentionMechanism> {
    let shapes = taps
        .iter()
        .map(|t| {
            let (_, c, h, w) = t.dims4()?;
            Ok(TapShape::new(c, h, w))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = AmConfig::new(version, shapes)?;
    Ok(AttentionMechanism::load(path, &config, DType::F32, device)?.am)
}

/// Class indices by decreasing probability.
fn ranked(probabilities: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..probabilities.len() as u32).collect();
    order.sort_by(|&a, &b| probabilities[b as usize].total_cmp(&probabilities[a as usize]));
    order
}

/// The explanation map for people: c[class] min-max normalised, then resized to 224x224.
fn explanation_map(class_logits: &Tensor) -> Result<Vec<f32>> {
    let (min, max) = (
        class_logits.min_all()?.to_scalar::<f32>()?,
        class_logits.max_all()?.to_scalar::<f32>()?,
    );
    let normalised = if max > min {
        ((class_logits - min as f64)? / (max - min) as f64)?
    } else {
        class_logits.zeros_like()?
    };
    let (s1, s2) = normalised.dims2()?;
    let resized = tame_ops::resize_bilinear(&normalised.reshape((1, 1, s1, s2))?, 224, 224)?;
    Ok(resized.flatten_all()?.to_vec1::<f32>()?)
}

fn write_outputs(
    path: &Path,
    crop: &RgbImage,
    maps: &Tensor,
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
    for (j, &class) in classes.iter().enumerate() {
        let map = explanation_map(&maps.get(j)?)?;
        let overlay = out_dir.join(format!("{stem}_{class}_mask.png"));
        write_atomically(
            &overlay,
            &crate::render::png_bytes(&jet_overlay(crop, &map))?,
        )?;
        let npy = out_dir.join(format!("{stem}_{class}.npy"));
        write_atomically(&npy, &npy_bytes(&map, &[224, 224]))?;
        explained.push(ExplainedClass {
            class,
            name: class_name(class as usize).unwrap_or("?"),
            overlay,
            map: npy,
        });
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
    for e in &report.explained {
        println!(
            "  explained {} ({}): {}  {}",
            e.class,
            e.name,
            e.overlay.display(),
            e.map.display()
        );
    }
}
