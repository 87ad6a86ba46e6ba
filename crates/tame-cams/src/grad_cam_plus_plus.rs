//! Grad-CAM++ (Chattopadhyay et al., WACV 2018), as pytorch-grad-cam's `GradCAMPlusPlus`.

use candle_core::Tensor;
use tame_metrics::Result;

use crate::gradients::{ChannelWeights, GradientCam};

/// The closed-form alpha of the paper's equation 19 (exponential output, so the higher
/// derivatives are powers of the first): with g = d logit_class / dA,
/// a_kij = g^2 / (2 g^2 + (sum_ij A_k) g^3 + 1e-6), zero where g = 0;
/// w_k = sum_ij ReLU(g) a_kij; map = ReLU(sum_k w_k A_k).
pub type GradCamPlusPlus<'a> = GradientCam<'a, PlusPlusWeights>;

/// pytorch-grad-cam's guard against 0/0.
const EPS: f64 = 1e-6;

/// Grad-CAM++'s channel weights.
pub struct PlusPlusWeights;

impl ChannelWeights for PlusPlusWeights {
    fn weights(activations: &Tensor, gradient: &Tensor) -> Result<Tensor> {
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
}
