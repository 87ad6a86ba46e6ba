//! Grad-CAM++ (Chattopadhyay et al., WACV 2018), as pytorch-grad-cam's `GradCAMPlusPlus`.

use candle_core::Tensor;
use tame_backbones::Backbone;
use tame_metrics::{Explainer, Result};

use crate::base::{check_batch, resolve_tap, weighted_sum_relu};
use crate::gradients::tap_and_gradient;
use crate::GradCamConfig;

/// The closed-form alpha of the paper's equation 19 (exponential output, so the higher
/// derivatives are powers of the first): with g = d logit_class / dA,
/// a_kij = g^2 / (2 g^2 + (sum_ij A_k) g^3 + 1e-6), zero where g = 0;
/// w_k = sum_ij ReLU(g) a_kij; map = ReLU(sum_k w_k A_k).
pub struct GradCamPlusPlus<'a> {
    backbone: &'a dyn Backbone,
    tap: String,
}

/// pytorch-grad-cam's guard against 0/0.
const EPS: f64 = 1e-6;

impl<'a> GradCamPlusPlus<'a> {
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

/// The channel weights w (B, K) from activations and gradients (B, K, h, w).
pub(crate) fn weights(activations: &Tensor, gradient: &Tensor) -> Result<Tensor> {
    let g2 = gradient.sqr()?;
    let g3 = (&g2 * gradient)?;
    let sum_activations = activations.sum_keepdim((2, 3))?;
    let denominator = ((&g2 * 2.0)? + g3.broadcast_mul(&sum_activations)?)?.affine(1.0, EPS)?;
    let alpha = (&g2 / denominator)?;
    let alpha = gradient
        .ne(0f32)?
        .where_cond(&alpha, &alpha.zeros_like()?)?;
    Ok((gradient.relu()? * alpha)?.sum((2, 3))?)
}

impl Explainer for GradCamPlusPlus<'_> {
    fn taps(&self) -> &[String] {
        &[]
    }

    /// Maps at the tap's resolution.
    fn explain(&self, images: &Tensor, _taps: &[Tensor], classes: &[u32]) -> Result<Tensor> {
        check_batch(images, classes)?;
        let (activations, gradient) = tap_and_gradient(self.backbone, images, &self.tap, classes)?;
        weighted_sum_relu(&activations, &weights(&activations, &gradient)?)
    }
}
