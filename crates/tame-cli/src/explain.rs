//! `tame explain`: explanation maps of chosen classes for images, as PNG overlays and .npy,
//! by TAME or any comparison method; with no image, a built-in photo and the built-in demo
//! mechanism of EfficientNet-Lite0.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tame_am::Version;
use tame_backbones::imagenet::class_name;
use tame_backbones::{Backbone, Mode, TapRequest};
use tame_data::{decode_rgb, load_rgb_within, Applied, Preprocessing, RgbImage};
use tame_metrics::{normalize_maps, Explainer};

use crate::common::{
    check_dir_can_be_made, check_writable_dir, crops_tensor, expand_images, write_atomically,
    ImageArgs, ModelArgs,
};
use crate::mechanism::{LoadedMechanism, MechanismArgs};
use crate::methods::{Method, MethodArgs, Methods};
use crate::render::{jet_overlay, npy_bytes, png_bytes, side_by_side};

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

    /// Output folder. Default: ./heatmaps/<model>_<version>/. Each image's outputs start
    /// with its file stem, with -2, -3... added when two inputs share one (a/x.jpg, b/x.jpg)
    /// or when a name is taken by an input: no output ever replaces an input image.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Print a JSON report on stdout instead of text.
    #[arg(long)]
    json: bool,

    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = crate::common::at_least_one::<usize>)]
    batch_size: usize,

    /// Explanation method: tame, gradcam, gradcam++, scorecam, rise, several separated by
    /// commas, or all. With several, each image and class also gets a side-by-side PNG
    /// (<image>_<class>_methods.png: the image, then one overlay per method in this order).
    #[arg(long, default_value = "tame")]
    method: Methods,

    #[command(flatten)]
    method_args: MethodArgs,

    #[command(flatten)]
    image_args: ImageArgs,
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
    /// How the crop was made from the image.
    preprocessing: String,
    top5: Vec<Prediction>,
    explained: Vec<ExplainedClass>,
    /// Side-by-side PNGs (image, then each method's overlay), one per class, when several
    /// methods ran.
    grids: Vec<PathBuf>,
}

/// An image to explain: where it came from, the backbone's input made from it, and how.
struct Input {
    path: PathBuf,
    /// The start of its outputs' names, unique within the run ([`OutputDir::stems`]).
    stem: String,
    crop: RgbImage,
    applied: Applied,
}

pub fn run(args: ExplainArgs) -> Result<()> {
    check_classes(&args.labels, args.top_k)?;
    if let Some(out) = &args.out {
        check_dir_can_be_made(out)?;
    }
    let paths = image_paths(&args.images)?;
    let (backbone, device) = args.model.load()?;
    // Every image is read before any output is written: a bad file stops the run first.
    let max_side = args.image_args.max_image_side;
    let inputs = read_inputs(paths, backbone.preprocessing(), max_side)?;
    let methods = &args.method.0;
    let mechanism = args.mechanism.load_if(
        methods.contains(&Method::Tame),
        args.model.model,
        backbone.as_ref(),
        &device,
    )?;
    let explainers = args
        .method_args
        .build_all(methods, backbone.as_ref(), mechanism.as_ref())?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_out_dir(methods, mechanism.as_ref(), backbone.name()));
    check_writable_dir(&out_dir)?;
    let outputs = OutputDir::new(&out_dir, &inputs)?;
    let stems = outputs.stems(&inputs);
    let mut inputs = inputs;
    for (input, stem) in inputs.iter_mut().zip(stems) {
        input.stem = stem;
    }
    let taps = mechanism
        .as_ref()
        .map(|m| m.taps.clone())
        .unwrap_or_default();
    let job = Job {
        backbone: backbone.as_ref(),
        preprocessing: backbone.preprocessing(),
        device: &device,
        request: backbone.tap_request(&taps, true)?,
        explainers,
        labels: &args.labels,
        top_k: args.top_k,
        outputs: &outputs,
    };
    let bar = progress_bar(args.json, inputs.len())?;
    let mut reports = Vec::new();
    for batch in inputs.chunks(args.batch_size.max(1)) {
        for report in job.explain(batch, &bar)? {
            if !args.json {
                bar.suspend(|| print_report(&report, backbone.name()));
            }
            reports.push(report);
        }
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}

fn check_classes(labels: &[u32], top_k: Option<usize>) -> Result<()> {
    if let Some(bad) = labels.iter().find(|&&l| l >= 1000) {
        bail!("--label {bad}: classes are 0..999");
    }
    if top_k.is_some_and(|k| k == 0 || k > 1000) {
        bail!("--top-k must be between 1 and 1000");
    }
    Ok(())
}

/// The files named or found in folders; None stands for the built-in photo.
fn image_paths(given: &[PathBuf]) -> Result<Option<Vec<PathBuf>>> {
    if given.is_empty() {
        return Ok(None);
    }
    let images = expand_images(given)?;
    if images.is_empty() {
        bail!("no image to explain");
    }
    Ok(Some(images))
}

/// Decodes each image and makes the backbone's input of it.
fn read_inputs(
    paths: Option<Vec<PathBuf>>,
    preprocessing: Preprocessing,
    max_side: u32,
) -> Result<Vec<Input>> {
    let input = |path: PathBuf, image: RgbImage| {
        let (crop, applied) = preprocessing.apply(&image);
        Input {
            path,
            stem: String::new(),
            crop,
            applied,
        }
    };
    match paths {
        None => {
            let photo = decode_rgb(DEFAULT_PHOTO).context("the built-in photo")?;
            Ok(vec![input(PathBuf::from(DEFAULT_PHOTO_NAME), photo)])
        }
        Some(paths) => paths
            .into_iter()
            .map(|p| {
                let image = load_rgb_within(&p, max_side)?;
                Ok(input(p, image))
            })
            .collect(),
    }
}

/// `heatmaps/<model>_<version or method>`, or `heatmaps/<model>_methods` for several.
fn default_out_dir(
    methods: &[Method],
    mechanism: Option<&LoadedMechanism>,
    model: &str,
) -> PathBuf {
    let what = match methods {
        [Method::Tame] => mechanism
            .map_or(Version::Tame, |m| m.version)
            .name()
            .to_string(),
        [one] => one.name().to_string(),
        _ => "methods".into(),
    };
    PathBuf::from(format!("heatmaps/{model}_{what}"))
}

fn progress_bar(json: bool, images: usize) -> Result<ProgressBar> {
    Ok(if json || images == 1 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(images as u64).with_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images  ETA {eta}",
        )?)
    })
}

/// What explaining a batch needs.
struct Job<'a> {
    backbone: &'a dyn Backbone,
    preprocessing: Preprocessing,
    device: &'a Device,
    request: TapRequest,
    explainers: Vec<(Method, Box<dyn Explainer + 'a>)>,
    labels: &'a [u32],
    top_k: Option<usize>,
    outputs: &'a OutputDir,
}

impl Job<'_> {
    /// Explains a batch of images and writes their outputs.
    fn explain(&self, inputs: &[Input], bar: &ProgressBar) -> Result<Vec<ImageReport>> {
        let crops: Vec<RgbImage> = inputs.iter().map(|i| i.crop.clone()).collect();
        let batch = crops_tensor(&crops, self.preprocessing, self.device)?;
        let out = self.backbone.forward(&batch, &self.request, Mode::Eval)?;
        let logits = out.logits.context("the backbone returned no logits")?;
        let probabilities = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        let classes: Vec<Vec<u32>> = probabilities.iter().map(|p| self.classes(p)).collect();
        // maps[m][j]: method m's (B, S, S) maps of each image's j-th class.
        let maps = self
            .explainers
            .iter()
            .map(|(method, explainer)| {
                bar.set_message(method.name());
                (0..classes[0].len())
                    .map(|j| {
                        let column: Vec<u32> = classes.iter().map(|c| c[j]).collect();
                        let raw = explainer.explain(&batch, &out.taps, &column)?;
                        let side = self.preprocessing.side();
                        Ok(normalize_maps(&raw, side, side)?)
                    })
                    .collect::<Result<Vec<Tensor>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let mut reports = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let image_maps = self.image_maps(&maps, i)?;
            let report = write_outputs(input, &image_maps, &classes[i], self.outputs)?;
            reports.push(report.with_top5(&probabilities[i]));
            bar.inc(1);
        }
        Ok(reports)
    }

    /// The classes to explain, from an image's probabilities.
    fn classes(&self, probabilities: &[f32]) -> Vec<u32> {
        match self.top_k {
            Some(k) => ranked(probabilities).into_iter().take(k).collect(),
            None if self.labels.is_empty() => ranked(probabilities).into_iter().take(1).collect(),
            None => self.labels.to_vec(),
        }
    }

    /// Image `i`'s maps, per method and class, as flat rows.
    fn image_maps(&self, maps: &[Vec<Tensor>], i: usize) -> Result<Vec<(Method, Vec<Vec<f32>>)>> {
        self.explainers
            .iter()
            .zip(maps)
            .map(|((m, _), per_class)| {
                let rows = per_class
                    .iter()
                    .map(|t| Ok(t.get(i)?.flatten_all()?.to_vec1::<f32>()?))
                    .collect::<Result<Vec<_>>>()?;
                Ok((*m, rows))
            })
            .collect()
    }
}

/// Class indices by decreasing probability.
fn ranked(probabilities: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..probabilities.len() as u32).collect();
    order.sort_by(|&a, &b| probabilities[b as usize].total_cmp(&probabilities[a as usize]));
    order
}

/// Writes the crop, then for each class and method the overlay PNG and the .npy map
/// (TAME's without a method suffix), and a side-by-side PNG when several methods ran.
/// `maps[m]` is method m's list of maps, one per class of `classes`.
fn write_outputs(
    input: &Input,
    maps: &[(Method, Vec<Vec<f32>>)],
    classes: &[u32],
    outputs: &OutputDir,
) -> Result<ImageReport> {
    let stem = &input.stem;
    let crop_path = outputs.write(&format!("{stem}.png"), &png_bytes(&input.crop)?)?;
    let mut explained = Vec::new();
    let mut grids = Vec::new();
    for (j, &class) in classes.iter().enumerate() {
        let mut panels = vec![input.crop.clone()];
        for (method, per_class) in maps {
            let suffix = match method {
                Method::Tame => String::new(),
                other => format!("_{}", other.name()),
            };
            let name = format!("{stem}_{class}{suffix}");
            let (overlay, class) =
                write_map(&input.crop, &per_class[j], outputs, &name, class, *method)?;
            panels.push(overlay);
            explained.push(class);
        }
        if maps.len() > 1 {
            let grid = outputs.write(
                &format!("{stem}_{class}_methods.png"),
                &png_bytes(&side_by_side(&panels))?,
            )?;
            grids.push(grid);
        }
    }
    Ok(ImageReport {
        image: input.path.clone(),
        crop: crop_path,
        preprocessing: input.applied.to_string(),
        top5: Vec::new(),
        explained,
        grids,
    })
}

/// Writes one map as `<name>_mask.png` (over the crop) and `<name>.npy`; returns the overlay.
fn write_map(
    crop: &RgbImage,
    map: &[f32],
    outputs: &OutputDir,
    name: &str,
    class: u32,
    method: Method,
) -> Result<(RgbImage, ExplainedClass)> {
    let overlay_image = jet_overlay(crop, map);
    let overlay = outputs.write(&format!("{name}_mask.png"), &png_bytes(&overlay_image)?)?;
    let side = crop.width() as usize;
    let npy = outputs.write(&format!("{name}.npy"), &npy_bytes(map, &[side, side]))?;
    let explained = ExplainedClass {
        class,
        name: class_name(class as usize).unwrap_or("?"),
        method: method.name(),
        overlay,
        map: npy,
    };
    Ok((overlay_image, explained))
}

impl ImageReport {
    /// The report with the image's five most probable classes.
    fn with_top5(self, probabilities: &[f32]) -> Self {
        let top5 = ranked(probabilities)
            .into_iter()
            .take(5)
            .map(|c| Prediction {
                class: c,
                name: class_name(c as usize).unwrap_or("?"),
                probability: probabilities[c as usize],
            })
            .collect();
        Self { top5, ..self }
    }
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
        "  the crop it saw: {} ({})",
        report.crop.display(),
        report.preprocessing
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

/// The output folder of a run, which never replaces one of the run's input images.
struct OutputDir {
    dir: PathBuf,
    /// The inputs, resolved (symbolic links and `..` followed).
    inputs: HashSet<PathBuf>,
}

impl OutputDir {
    fn new(dir: &Path, inputs: &[Input]) -> Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        // The built-in photo has no file.
        let inputs = inputs
            .iter()
            .filter_map(|i| i.path.canonicalize().ok())
            .collect();
        Ok(Self { dir, inputs })
    }

    /// Each input's output stem: its file name's stem, with `-2`, `-3`... added where
    /// another input of the run has the same one (`a/x.jpg`, `b/x.jpg`) or where its crop's
    /// name is an input's (`x.png` explained into its own folder).
    fn stems(&self, inputs: &[Input]) -> Vec<String> {
        let mut taken = HashSet::new();
        inputs
            .iter()
            .map(|input| {
                let base = input
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into());
                let mut stem = base.clone();
                for n in 2.. {
                    let crop = self.dir.join(format!("{stem}.png"));
                    if !taken.contains(&stem) && !self.inputs.contains(&crop) {
                        break;
                    }
                    stem = format!("{base}-{n}");
                }
                taken.insert(stem.clone());
                stem
            })
            .collect()
    }

    /// Writes `bytes` as file `name` of the folder, unless that is one of the inputs.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if self.inputs.contains(&path) {
            bail!(
                "{}: an input image of this run, which an output would replace; choose \
                 another --out",
                path.display()
            );
        }
        write_atomically(&path, bytes)?;
        Ok(path)
    }
}
