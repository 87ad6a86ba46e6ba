//! The activations of a tap and the gradient of each image's class logit with respect to them,
//! shared by Grad-CAM and Grad-CAM++.

use candle_core::Tensor;
use tame_backbones::{Backbone, Mode};
use tame_metrics::{MetricsError, Result};

use crate::base::{check_classes, select_classes};

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
