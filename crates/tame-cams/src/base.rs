//! What the methods share: tap choice, class checks, the input normalisation, masking in the
//! backbone's normalised space and the weighted sum of activation maps.

use candle_core::{Tensor, D};
use tame_backbones::{Backbone, Mode};
use tame_metrics::{MetricsError, Result};

/// `tap` if given, else the backbone's [`Backbone::cam_tap`]; checked against its tap names.
pub(crate) fn resolve_tap(backbone: &dyn Backbone, tap: Option<&str>) -> Result<String> {
    let tap = tap.unwrap_or(backbone.cam_tap()).to_string();
    backbone.tap_request(std::slice::from_ref(&tap), false)?;
    Ok(tap)
}

/// Checks the batch: (B, 3, H, W) images and one class per image. Returns B.
pub(crate) fn check_batch(images: &Tensor, classes: &[u32]) -> Result<usize> {
    let (b, c, _, _) = images.dims4().map_err(|_| {
        MetricsError::BadInput(format!("images must be (B, 3, H, W), got {images:?}"))
    })?;
    if c != 3 {
        return Err(MetricsError::BadInput(format!(
            "images must have 3 channels, got {c}"
        )));
    }
    if classes.len() != b {
        return Err(MetricsError::BadInput(format!(
            "{b} images but {} classes",
            classes.len()
        )));
    }
    Ok(b)
}

/// Checks that every class indexes the logits (N, classes).
pub(crate) fn check_classes(logits: &Tensor, classes: &[u32]) -> Result<()> {
    let n = logits.dim(D::Minus1)?;
    match classes.iter().find(|&&c| c as usize >= n) {
        Some(c) => Err(MetricsError::BadInput(format!(
            "class {c} is out of range: the backbone has {n} classes"
        ))),
        None => Ok(()),
    }
}

/// Column `classes[i]` of row i of `scores` (B, C): a (B,) tensor.
pub(crate) fn select_classes(scores: &Tensor, classes: &[u32]) -> Result<Tensor> {
    let index = Tensor::new(classes, scores.device())?.unsqueeze(1)?;
    Ok(scores.gather(&index, 1)?.squeeze(1)?)
}

/// The logits (N, classes) of images (N, 3, H, W) in [0, 1].
pub(crate) fn logits(backbone: &dyn Backbone, images: &Tensor) -> Result<Tensor> {
    let request = backbone.tap_request(&[], true)?;
    backbone
        .forward(images, &request, Mode::Eval)?
        .logits
        .ok_or_else(|| MetricsError::BadInput("the backbone returned no logits".into()))
}

/// One image (3, H, W) under masks (N, 1, H, W), masked as the reference implementations do:
/// they multiply the *normalised* input, so a masked-out pixel becomes the normalisation mean.
/// The backbone normalises inside, hence `mean + mask * (image - mean)` in [0, 1] space,
/// whose normalisation is `mask * normalised(image)`.
pub(crate) fn mask_in_normalised_space(
    image: &Tensor,
    masks: &Tensor,
    mean: [f32; 3],
) -> Result<Tensor> {
    let mean = Tensor::new(&mean, image.device())?
        .to_dtype(image.dtype())?
        .reshape((1, 3, 1, 1))?;
    let centred = image.unsqueeze(0)?.broadcast_sub(&mean)?;
    Ok(masks.broadcast_mul(&centred)?.broadcast_add(&mean)?)
}

/// ReLU(sum_k weights[b, k] * activations[b, k]): (B, h, w) from activations (B, K, h, w) and
/// weights (B, K).
pub(crate) fn weighted_sum_relu(activations: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let weights = weights
        .to_dtype(activations.dtype())?
        .unsqueeze(2)?
        .unsqueeze(3)?;
    Ok(activations.broadcast_mul(&weights)?.sum(1)?.relu()?)
}
