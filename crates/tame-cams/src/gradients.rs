//! What the gradient methods (Grad-CAM, Grad-CAM++) share: the activations of a tap, the
//! gradient of each image's class logit with respect to them, and the weighted sum of the
//! activation maps. Each method is one [`ChannelWeights`]: how it weighs the channels.

use std::marker::PhantomData;

use candle_core::Tensor;
use tame_backbones::{Backbone, Mode};
use tame_metrics::{Explainer, MetricsError, Result};

use crate::base::{check_batch, check_classes, resolve_tap, select_classes, weighted_sum_relu};
use crate::GradCamConfig;

/// How a gradient method weighs the channels of a tap (pytorch-grad-cam's
/// `get_cam_weights`): the weights w (B, K) from the activations A and the gradient
/// d logit_class / dA, both (B, K, h, w). The map is then ReLU(sum_k w_k A_k).
pub trait ChannelWeights {
    fn weights(activations: &Tensor, gradient: &Tensor) -> Result<Tensor>;
}

/// A gradient method on one tap of a backbone, its channel weights from `W`.
pub struct GradientCam<'a, W> {
    backbone: &'a dyn Backbone,
    tap: String,
    weights: PhantomData<W>,
}

impl<'a, W: ChannelWeights> GradientCam<'a, W> {
    /// Fails if the tap is not one of the backbone's.
    pub fn new(backbone: &'a dyn Backbone, config: GradCamConfig) -> Result<Self> {
        let tap = resolve_tap(backbone, config.tap.as_deref())?;
        Ok(Self {
            backbone,
            tap,
            weights: PhantomData,
        })
    }

    /// The tap explained.
    pub fn tap(&self) -> &str {
        &self.tap
    }
}

impl<W: ChannelWeights> Explainer for GradientCam<'_, W> {
    fn taps(&self) -> &[String] {
        &[]
    }

    /// Maps at the tap's resolution.
    fn explain(&self, images: &Tensor, _taps: &[Tensor], classes: &[u32]) -> Result<Tensor> {
        check_batch(images, classes)?;
        let (activations, gradient) = tap_and_gradient(self.backbone, images, &self.tap, classes)?;
        weighted_sum_relu(&activations, &W::weights(&activations, &gradient)?)
    }
}

/// Activations A (B, K, h, w) of `tap` and dy/dA, y = sum over the batch of the raw logit
/// (before softmax) of each image's class, as pytorch-grad-cam's `ClassifierOutputTarget`.
/// Images do not interact in eval mode, so image b's part of dy/dA is its own gradient.
pub(crate) fn tap_and_gradient(
    backbone: &dyn Backbone,
    images: &Tensor,
    tap: &str,
    classes: &[u32],
) -> Result<(Tensor, Tensor)> {
    let request = backbone
        .tap_request(&[tap.to_string()], true)?
        .with_tap_gradients();
    let out = backbone.forward(images, &request, Mode::Eval)?;
    let logits = out
        .logits
        .ok_or_else(|| MetricsError::BadInput("the backbone returned no logits".into()))?;
    check_classes(&logits, classes)?;
    let activations = out
        .taps
        .into_iter()
        .next()
        .ok_or_else(|| MetricsError::BadInput(format!("tap `{tap}` was not returned")))?;
    let grads = select_classes(&logits, classes)?.sum_all()?.backward()?;
    let gradient = grads.get(&activations).cloned().ok_or_else(|| {
        MetricsError::BadInput(format!(
            "backbone `{}` gave no gradient for tap `{tap}`",
            backbone.name()
        ))
    })?;
    // The tap is a variable: detached, the CAM arithmetic records no graph.
    Ok((activations.detach(), gradient))
}
