//! Finding and loading an attention mechanism for a backbone: a checkpoint file, or the
//! built-in demo mechanism of EfficientNet-Lite0.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use tame_am::{AmConfig, AttentionMechanism, CheckpointMeta, TapShape, Version};
use tame_backbones::{Backbone, BackboneKind};

use crate::common::parse_layers;

/// The demo mechanism trained by `xtask/demo/train-lite0-demo.sh` (see its model card in
/// `snapshots/efficientnet-lite0_TAME/`), compiled in so that `tame explain` works anywhere.
const DEMO_WEIGHTS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../snapshots/efficientnet-lite0_TAME/demo.safetensors"
));
const DEMO_META: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../snapshots/efficientnet-lite0_TAME/demo.json"
));
/// How the built-in mechanism is named in messages.
pub const DEMO_NAME: &str = "built-in demo mechanism (snapshots/efficientnet-lite0_TAME/demo)";

/// Where a mechanism comes from.
#[derive(Clone, Debug)]
pub enum MechanismSource {
    /// A tame checkpoint (.safetensors + .json) or a reference PyTorch checkpoint.
    File(PathBuf),
    /// The demo mechanism compiled into the binary (EfficientNet-Lite0 only).
    Demo,
}

impl MechanismSource {
    /// `--am` when given, else the demo mechanism for the backbone that has one.
    pub fn for_backbone(am: Option<&Path>, kind: BackboneKind) -> Result<Self> {
        match am {
            Some(path) => Ok(Self::File(path.to_path_buf())),
            None if kind == BackboneKind::EfficientNetLite0 => Ok(Self::Demo),
            None => bail!(
                "--am is required for {}: the built-in demo mechanism is for efficientnet-lite0",
                kind.name()
            ),
        }
    }

    fn meta(&self) -> Result<Option<CheckpointMeta>> {
        match self {
            // No sidecar (a reference checkpoint) is fine; an unreadable one is an error.
            Self::File(path) if tame_am::sidecar_path(path).exists() => {
                Ok(Some(CheckpointMeta::read(path)?))
            }
            Self::File(_) => Ok(None),
            Self::Demo => Ok(Some(
                serde_json::from_str(DEMO_META).context("the built-in demo sidecar")?,
            )),
        }
    }

    /// For messages and reports.
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Demo => DEMO_NAME.into(),
        }
    }
}

/// A loaded mechanism with the taps it reads.
pub struct LoadedMechanism {
    pub am: AttentionMechanism,
    pub taps: Vec<String>,
    pub version: Version,
}

/// The taps and version of a mechanism: `layers`/`version` when given, else the checkpoint's
/// sidecar, else the backbone's default taps and TAME. A sidecar made for another backbone is
/// an error.
pub fn layout(
    source: &MechanismSource,
    layers: Option<&str>,
    version: Option<Version>,
    backbone: &dyn Backbone,
) -> Result<(Vec<String>, Version)> {
    let meta = source.meta()?;
    if let Some(meta) = &meta {
        if meta.backbone != backbone.name() {
            bail!(
                "{}: this attention mechanism was trained on {}, not {}",
                source.describe(),
                meta.backbone,
                backbone.name()
            );
        }
    }
    let taps = match (layers, &meta) {
        (Some(layers), _) => parse_layers(layers)?,
        (None, Some(meta)) => meta.taps.clone(),
        (None, None) => backbone.default_taps(),
    };
    let version = version.or(meta.map(|m| m.version)).unwrap_or(Version::Tame);
    Ok((taps, version))
}

/// The mechanism layout for `taps` of `backbone`: their shapes for the backbone's input.
pub fn config(
    backbone: &dyn Backbone,
    taps: &[String],
    version: Version,
    device: &Device,
) -> Result<AmConfig> {
    let shapes = backbone
        .tap_dims(taps, backbone.preprocessing().side(), device)?
        .into_iter()
        .map(|[c, h, w]| TapShape::new(c, h, w))
        .collect();
    Ok(AmConfig::new(version, shapes)?)
}

/// Loads the mechanism of `source` for `backbone`, with [`layout`]'s rules for its taps.
pub fn load(
    source: &MechanismSource,
    layers: Option<&str>,
    version: Option<Version>,
    backbone: &dyn Backbone,
    device: &Device,
) -> Result<LoadedMechanism> {
    let (taps, version) = layout(source, layers, version, backbone)?;
    let config = config(backbone, &taps, version, device)?;
    let loaded = match source {
        MechanismSource::File(path) => AttentionMechanism::load(path, &config, DType::F32, device)?,
        MechanismSource::Demo => AttentionMechanism::from_safetensors_bytes(
            DEMO_WEIGHTS,
            source.meta()?,
            Path::new(DEMO_NAME),
            &config,
            DType::F32,
            device,
        )?,
    };
    Ok(LoadedMechanism {
        am: loaded.am,
        taps,
        version,
    })
}

/// `--am`, `--layers`, `--version`: the mechanism of the commands that explain.
#[derive(clap::Args, Clone, Debug)]
pub struct MechanismArgs {
    /// The trained attention mechanism: a tame checkpoint (.safetensors with its .json) or a
    /// reference PyTorch checkpoint (.pt/.pth). Default for efficientnet-lite0: the built-in
    /// demo mechanism (trained on a few photos; see its model card).
    #[arg(long)]
    pub am: Option<PathBuf>,

    /// Taps the mechanism reads, separated by spaces or commas. Default: the checkpoint's
    /// (from its .json), else the backbone's default taps.
    #[arg(long)]
    pub layers: Option<String>,

    /// Mechanism version: TAME, Noskipconnection, NoskipNobatchnorm, Sigmoidinfeaturebranch.
    /// Default: the checkpoint's, else TAME.
    #[arg(long)]
    pub version: Option<Version>,
}

impl MechanismArgs {
    /// The mechanism, when `needed` (TAME is among the methods asked for): `--am`, or the
    /// built-in demo for the backbone that has one.
    pub fn load_if(
        &self,
        needed: bool,
        kind: BackboneKind,
        backbone: &dyn Backbone,
        device: &Device,
    ) -> Result<Option<LoadedMechanism>> {
        if !needed {
            return Ok(None);
        }
        let source = MechanismSource::for_backbone(self.am.as_deref(), kind)?;
        load(
            &source,
            self.layers.as_deref(),
            self.version,
            backbone,
            device,
        )
        .map(Some)
    }
}
