//! The one interface through which every metric gets explanation maps.

use candle_core::{DType, Tensor};
use tame_am::AttentionMechanism;

use crate::{MetricsError, Result};

/// Something that explains a classifier's decisions with one map per image.
///
/// The evaluator runs the backbone once on the unmasked images, asking for the
/// [`taps`](Explainer::taps) this explainer reads, and passes them to
/// [`explain`](Explainer::explain) together with each image's class to explain. An explainer
/// that needs no taps (RISE, or Grad-CAM running its own differentiable pass) returns none
/// and ignores the argument.
pub trait Explainer {
    /// Backbone taps of the unmasked forward pass this explainer reads, in order.
    fn taps(&self) -> &[String];

    /// Raw maps (B, h, w), any resolution and any finite scale (the metrics min-max
    /// normalise and resize them with [`normalize_maps`]): the map of `classes[i]` for
    /// image i of `images` (B, 3, H, W in [0, 1]), whose requested taps are `taps`.
    fn explain(&self, images: &Tensor, taps: &[Tensor], classes: &[u32]) -> Result<Tensor>;
}

/// A TAME attention mechanism as an [`Explainer`]: the **pre-sigmoid** logit map c[k] of
/// each image's class, as the reference evaluation uses.
pub struct TameExplainer<'a> {
    am: &'a AttentionMechanism,
    taps: Vec<String>,
}

impl<'a> TameExplainer<'a> {
    /// The mechanism `am` reading the backbone taps `taps` (as many as it was built for).
    pub fn new(am: &'a AttentionMechanism, taps: Vec<String>) -> Result<Self> {
        let expected = am.config().taps().len();
        if taps.len() != expected {
            return Err(MetricsError::BadInput(format!(
                "the attention mechanism reads {expected} taps, {} were named ({})",
                taps.len(),
                taps.join(", ")
            )));
        }
        Ok(Self { am, taps })
    }
}

impl Explainer for TameExplainer<'_> {
    fn taps(&self) -> &[String] {
        &self.taps
    }

    fn explain(&self, _images: &Tensor, taps: &[Tensor], classes: &[u32]) -> Result<Tensor> {
        let branches = self.am.branches(taps, false)?;
        let per_image: Vec<Vec<u32>> = classes.iter().map(|&c| vec![c]).collect();
        let c = self.am.per_sample_class_logits(&branches, &per_image)?;
        Ok(c.squeeze(1)?)
    }
}

/// Min-max normalises each map of `raw` (B, h, w) to [0, 1] over the whole map, then resizes
/// it bilinearly (PyTorch's `align_corners=False`) to (B, `height`, `width`), as the
/// reference does. A constant map (no range) becomes all zeros.
pub fn normalize_maps(raw: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (b, h, w) = raw
        .dims3()
        .map_err(|_| MetricsError::BadInput(format!("maps must be (B, h, w), got {raw:?}")))?;
    let flat = raw.to_dtype(DType::F32)?.reshape((b, h * w))?;
    let min = flat.min_keepdim(1)?;
    let range = flat.max_keepdim(1)?.broadcast_sub(&min)?;
    // A zero range would divide 0 by 0; dividing by 1 instead maps the constant to 0.
    let range = (&range + range.eq(0f32)?.to_dtype(DType::F32)?)?;
    let normalised = flat.broadcast_sub(&min)?.broadcast_div(&range)?;
    let resized = tame_ops::resize_bilinear(&normalised.reshape((b, 1, h, w))?, height, width)?;
    Ok(resized.squeeze(1)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn normalises_each_map_and_resizes() {
        let raw = Tensor::new(
            &[[[1f32, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let same = normalize_maps(&raw, 2, 2)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(same[0], vec![vec![0.0, 0.25], vec![0.5, 1.0]]);
        assert_eq!(same[1], vec![vec![0.0; 2]; 2]);
        let big = normalize_maps(&raw, 4, 4).unwrap();
        assert_eq!(big.dims(), &[2, 4, 4]);
        let v = big.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    }
}
