//! Grad-CAM (Selvaraju et al., ICCV 2017), as pytorch-grad-cam's `GradCAM`.

use candle_core::Tensor;
use tame_metrics::Result;

use crate::gradients::{ChannelWeights, GradientCam};

/// Settings of [`GradCam`] and [`GradCamPlusPlus`](crate::GradCamPlusPlus).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GradCamConfig {
    /// The tap to explain; `None`: the backbone's [`cam_tap`](tame_backbones::Backbone::cam_tap).
    pub tap: Option<String>,
}

/// map = ReLU(sum_k w_k A_k), w_k = spatial mean of d logit_class / d A_k.
pub type GradCam<'a> = GradientCam<'a, MeanGradient>;

/// Grad-CAM's channel weights: the spatial mean of the gradient.
pub struct MeanGradient;

impl ChannelWeights for MeanGradient {
    fn weights(_activations: &Tensor, gradient: &Tensor) -> Result<Tensor> {
        Ok(gradient.mean((2, 3))?)
    }
}
