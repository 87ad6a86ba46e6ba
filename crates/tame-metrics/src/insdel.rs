//! Insertion and deletion (Petsiuk et al., RISE, 2018): pixels are deleted from the image
//! (set to black) or inserted into a blurred copy in the order of the map, and the class
//! probability is integrated over the fraction of pixels changed.

use candle_core::Device;

use crate::ad_ic::check_batch;
use crate::classify::{classify_generated, Classify};
use crate::road::descending;
use crate::{MetricsError, Result};

/// Settings of [`insertion_deletion`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InsDelConfig {
    /// Steps of each curve: step s changes round(s/steps · H·W) pixels, s = 0..=steps.
    pub steps: usize,
    /// Side of the Gaussian blur kernel of the insertion start image (odd; RISE: 11).
    pub blur_size: usize,
    /// Its standard deviation in pixels (RISE: 5).
    pub blur_sigma: f64,
}

impl Default for InsDelConfig {
    fn default() -> Self {
        Self {
            steps: 16,
            blur_size: 11,
            blur_sigma: 5.0,
        }
    }
}

/// One image's areas under the curves, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InsDelScores {
    /// Insertion AUC: higher is better.
    pub insertion: f64,
    /// Deletion AUC: lower is better.
    pub deletion: f64,
}

/// Insertion and deletion AUCs for a batch: `pixels` (n, `dims`) in [0, 1], normalised `maps`
/// (n, H, W), each image's class to follow. Pixels go in descending map order, ties in
/// reading order; each curve is integrated with the trapezoid rule over x = s/steps.
#[allow(clippy::too_many_arguments)]
pub fn insertion_deletion(
    classify: &Classify,
    pixels: &[f32],
    dims: [usize; 3],
    maps: &[f32],
    classes: &[u32],
    config: &InsDelConfig,
    chunk: usize,
    device: &Device,
) -> Result<Vec<InsDelScores>> {
    let n = classes.len();
    check_batch(pixels, dims, maps, n)?;
    if config.steps == 0 || config.blur_size % 2 == 0 || config.blur_sigma <= 0.0 {
        return Err(MetricsError::BadInput(format!(
            "insertion/deletion needs steps >= 1, an odd blur size and a positive sigma, got {config:?}"
        )));
    }
    let [channels, height, width] = dims;
    let plane = height * width;
    let len = channels * plane;
    let orders: Vec<Vec<usize>> = (0..n)
        .map(|i| descending(&maps[i * plane..(i + 1) * plane]))
        .collect();
    let blurred: Vec<Vec<f32>> = (0..n)
        .map(|i| gaussian_blur(&pixels[i * len..(i + 1) * len], dims, config))
        .collect();
    let points = config.steps + 1;
    let per_image = 2 * points;
    let outcomes = classify_generated(
        classify,
        dims,
        n * per_image,
        chunk,
        device,
        |j| classes[j / per_image],
        |j, image| {
            let (i, rest) = (j / per_image, j % per_image);
            let insertion = rest < points;
            let step = rest % points;
            let count = (step as f64 / config.steps as f64 * plane as f64).round() as usize;
            let original = &pixels[i * len..(i + 1) * len];
            image.copy_from_slice(if insertion { &blurred[i] } else { original });
            for &p in &orders[i][..count] {
                for c in 0..channels {
                    let at = c * plane + p;
                    image[at] = if insertion { original[at] } else { 0.0 };
                }
            }
        },
    )?;
    let auc = |curve: &[crate::classify::Outcome]| {
        let sum: f64 = curve.iter().map(|o| o.prob).sum();
        (sum - (curve[0].prob + curve[curve.len() - 1].prob) / 2.0) / config.steps as f64
    };
    Ok(outcomes
        .chunks(per_image)
        .map(|o| InsDelScores {
            insertion: auc(&o[..points]),
            deletion: auc(&o[points..]),
        })
        .collect())
}

/// Gaussian blur of one image (C, H, W): a separable kernel of `blur_size` taps and
/// `blur_sigma`, renormalised at the borders (weights outside the image are dropped, so the
/// edges do not darken as they would with zero padding).
pub fn gaussian_blur(image: &[f32], dims: [usize; 3], config: &InsDelConfig) -> Vec<f32> {
    let [_, height, width] = dims;
    let radius = (config.blur_size / 2) as isize;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|d| (-((d * d) as f64) / (2.0 * config.blur_sigma * config.blur_sigma)).exp())
        .collect();
    let pass = |src: &[f32], dst: &mut [f32], along_rows: bool| {
        let (outer, inner) = if along_rows {
            (height, width)
        } else {
            (width, height)
        };
        for o in 0..outer {
            for i in 0..inner as isize {
                let (mut acc, mut weight) = (0.0, 0.0);
                for (k, w) in kernel.iter().enumerate() {
                    let j = i + k as isize - radius;
                    if j < 0 || j >= inner as isize {
                        continue;
                    }
                    let at = if along_rows {
                        o * width + j as usize
                    } else {
                        j as usize * width + o
                    };
                    acc += w * src[at] as f64;
                    weight += w;
                }
                let at = if along_rows {
                    o * width + i as usize
                } else {
                    i as usize * width + o
                };
                dst[at] = (acc / weight) as f32;
            }
        }
    };
    let plane = height * width;
    let mut out = vec![0f32; image.len()];
    let mut tmp = vec![0f32; plane];
    for (src, dst) in image.chunks(plane).zip(out.chunks_mut(plane)) {
        pass(src, &mut tmp, true);
        pass(&tmp, dst, false);
    }
    out
}

/// Running sums of [`InsDelScores`] over images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InsDelTotals {
    images: usize,
    insertion: f64,
    deletion: f64,
}

impl InsDelTotals {
    /// Adds one image.
    pub fn add(&mut self, s: &InsDelScores) {
        self.images += 1;
        self.insertion += s.insertion;
        self.deletion += s.deletion;
    }

    /// Means over the images added.
    pub fn report(&self) -> InsDelReport {
        let n = self.images.max(1) as f64;
        InsDelReport {
            images: self.images,
            insertion: self.insertion / n,
            deletion: self.deletion / n,
        }
    }
}

/// Mean insertion and deletion AUCs over a set of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InsDelReport {
    /// Images evaluated.
    pub images: usize,
    /// Mean insertion AUC (higher is better).
    pub insertion: f64,
    /// Mean deletion AUC (lower is better).
    pub deletion: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_constants_and_spreads_a_point() {
        let config = InsDelConfig::default();
        let flat = gaussian_blur(&vec![0.4; 2 * 9 * 7], [2, 9, 7], &config);
        assert!(flat.iter().all(|v| (v - 0.4).abs() < 1e-6));
        // Far enough from the borders for every window it reaches to be whole: mass is kept.
        let mut point = vec![0.0; 31 * 31];
        point[15 * 31 + 15] = 1.0;
        let b = gaussian_blur(&point, [1, 31, 31], &config);
        assert!((b.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(b[15 * 31 + 15] < 0.1 && b[15 * 31 + 20] > 0.0 && b[15 * 31 + 21] == 0.0);
    }
}
