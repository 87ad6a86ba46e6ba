//! Grad-CAM (Selvaraju et al., ICCV 2017), as pytorch-grad-cam's `GradCAM`.

use candle_core::Tensor;
use tame_backbones::Backbone;
use tame_metrics::{Explainer, Result};

use crate::base::{check_batch, resolve_tap, weighted_sum_relu};
use crate::gradients::tap_and_gradient;

/// Settings of [`GradCam`] and [`GradCamPlusPlus`](crate::GradCamPlusPlus).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GradCamConfig {
    /// The tap to explain; `None`: the backbone's [`cam_tap`](tame_backbones::Backbone::cam_tap).
    pub tap: Option<String>,
}

/// map = ReLU(sum_k w_k A_k), w_k = spatial mean of d logit_class / d A_k.
pub struct GradCam<'a> {
    backbone: &'a dyn Backbone,
    tap: String,
}

impl<'a> GradCam<'a> {
    /// Fails if the tap is not one of the backbone's (or none is given and the backbone has no
    /// default).
    pub fn new(backbone: &'a dyn Backbone, config: GradCamConfig) -> Result<Self> {
        let tap = resolve_tap(backbone, config.tap.as_deref())?;
        Ok(Self { backbone, tap })
    }

    /// The tap explained.
    pub fn tap(&self) -> &str {
        &self.tap
    }
}

impl Explainer for GradCam<'_> {
    fn taps(&self) -> &[String] {
        &[]
    }

    /// Maps at the tap's resolution.
    fn explain(&self, images: &Tensor, _taps: &[Tensor], classes: &[u32]) -> Result<Tensor> {
        check_batch(images, classes)?;
        let (activations, gradient) = tap_and_gradient(self.backbone, images, &self.tap, classes)?;
        let weights = gradient.mean((2, 3))?;
        weighted_sum_relu(&activations, &weights)
    }
}
