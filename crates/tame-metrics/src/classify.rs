//! Classifying many modified images, built chunk by chunk so that a whole curve never sits
//! in memory at once.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::{MetricsError, Result};

/// A classifier as the metrics see it: images (n, 3, H, W) with values in [0, 1] to logits
/// (n, C). For a backbone: its logits in eval mode.
pub type Classify<'a> = dyn Fn(&Tensor) -> Result<Tensor> + 'a;

/// What the classifier says about one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outcome {
    /// Softmax probability of the class asked about.
    pub prob: f64,
    /// The top-1 class.
    pub top: u32,
}

/// Softmax (in f64) of one row of logits: the probability of `class` and the argmax.
pub(crate) fn outcome(logits: &[f32], class: u32) -> Result<Outcome> {
    let Some(&z) = logits.get(class as usize) else {
        return Err(MetricsError::BadInput(format!(
            "class {class} is outside the classifier's {} outputs",
            logits.len()
        )));
    };
    let (top, max) = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        });
    let max = max as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    Ok(Outcome {
        prob: (z as f64 - max).exp() / sum,
        top: top as u32,
    })
}

/// Rows of a (n, C) logits tensor.
pub(crate) fn logit_rows(logits: &Tensor, n: usize) -> Result<Vec<Vec<f32>>> {
    match *logits.dims() {
        [rows, k] if rows == n && k > 0 => Ok(tame_ops::host::download::<f32>(logits)?
            .chunks(k.max(1))
            .map(<[f32]>::to_vec)
            .collect()),
        ref got => Err(MetricsError::BadInput(format!(
            "the classifier returned logits of shape {got:?} for {n} images"
        ))),
    }
}

/// Builds `count` images of shape `dims` with `fill(i, pixels)` (in parallel, `chunk` at a
/// time on `device`), classifies them and returns the outcome for class `class_of(i)`.
pub(crate) fn classify_generated(
    classify: &Classify,
    dims: [usize; 3],
    count: usize,
    chunk: usize,
    device: &Device,
    class_of: impl Fn(usize) -> u32,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<Vec<Outcome>> {
    let len: usize = dims.iter().product();
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(count);
    for start in (0..count).step_by(chunk) {
        let n = chunk.min(count - start);
        let mut pixels = vec![0f32; n * len];
        pixels
            .par_chunks_mut(len)
            .enumerate()
            .for_each(|(j, image)| fill(start + j, image));
        let images = tame_ops::host::upload(pixels, (n, dims[0], dims[1], dims[2]), device)?;
        out.extend(outcomes(classify, &images, |j| class_of(start + j))?);
    }
    Ok(out)
}

/// Classifies `images` (n, 3, H, W) already on their device, `chunk` at a time, and returns
/// the outcome for class `class_of(i)` of each.
pub(crate) fn classify_batch(
    classify: &Classify,
    images: &Tensor,
    chunk: usize,
    class_of: impl Fn(usize) -> u32,
) -> Result<Vec<Outcome>> {
    let count = images.dim(0)?;
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(count);
    for start in (0..count).step_by(chunk) {
        let part = images.narrow(0, start, chunk.min(count - start))?;
        out.extend(outcomes(classify, &part, |j| class_of(start + j))?);
    }
    Ok(out)
}

/// The outcome for class `class_of(j)` of each of `images`.
fn outcomes(
    classify: &Classify,
    images: &Tensor,
    class_of: impl Fn(usize) -> u32,
) -> Result<Vec<Outcome>> {
    let n = images.dim(0)?;
    logit_rows(&classify(images)?, n)?
        .iter()
        .enumerate()
        .map(|(j, row)| outcome(row, class_of(j)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_probability_and_argmax() {
        let o = outcome(&[0.0, (3f32).ln(), 0.0], 1).unwrap();
        assert!((o.prob - 0.6).abs() < 1e-6);
        assert_eq!(o.top, 1);
        assert!(outcome(&[0.0, 1.0], 2).is_err());
    }
}
