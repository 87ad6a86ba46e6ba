//! Average Drop and Increase in Confidence (TAME-SPEC section 6).

use candle_core::{Device, Tensor};

use crate::classify::{classify_batch, classify_generated, Classify};
use crate::keep::{keep_fraction, keep_fraction_on_device};
use crate::{MetricsError, Result};

/// The fractions of pixels kept: 100 %, 50 % and 15 %, in the CSV's order.
pub const KEEP_LEVELS: [f64; 3] = [1.0, 0.5, 0.15];

/// One image's confidences: Y on the unmasked image and O on the image masked by its map at
/// each of the [`KEEP_LEVELS`], all for the class predicted on the unmasked image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdIcScores {
    /// softmax(f(x))[k].
    pub y: f64,
    /// softmax(f(x ⊙ E_f))[k] for each keep level f.
    pub o: [f64; 3],
}

/// O at every keep level for a batch.
///
/// `pixels` are the images (n, `dims`) in [0, 1], `maps` their normalised maps (n, H, W) in
/// [0, 1], `classes` and `y` each image's predicted class and its probability. The mask E is
/// the map with [`keep_fraction`] applied, multiplied into every channel before the backbone's
/// normalisation. The masked images are classified `chunk` at a time (at least the three of
/// one image together).
#[allow(clippy::too_many_arguments)]
pub fn ad_ic_scores(
    classify: &Classify,
    pixels: &[f32],
    dims: [usize; 3],
    maps: &[f32],
    classes: &[u32],
    y: &[f64],
    chunk: usize,
    device: &Device,
) -> Result<Vec<AdIcScores>> {
    let n = classes.len();
    let plane = dims[1] * dims[2];
    check_batch(pixels, dims, maps, n)?;
    if y.len() != n {
        return Err(MetricsError::BadInput(format!(
            "{} confidences for {n} images",
            y.len()
        )));
    }
    // Image-major: the three masked versions of an image go through the backbone together,
    // so that even a single image makes one batch of three instead of three batches of one.
    let levels = KEEP_LEVELS.len();
    let outcomes = classify_generated(
        classify,
        dims,
        n * levels,
        chunk.max(levels),
        device,
        |i| classes[i / levels],
        |i, image| {
            let (img, keep) = (i / levels, KEEP_LEVELS[i % levels]);
            let mut mask = maps[img * plane..(img + 1) * plane].to_vec();
            keep_fraction(&mut mask, keep);
            let source = &pixels[img * image.len()..(img + 1) * image.len()];
            for (c, out) in image.chunks_mut(plane).enumerate() {
                let src = &source[c * plane..(c + 1) * plane];
                for ((o, &x), &m) in out.iter_mut().zip(src).zip(&mask) {
                    *o = x * m;
                }
            }
        },
    )?;
    let mut scores: Vec<AdIcScores> = y.iter().map(|&y| AdIcScores { y, o: [0.0; 3] }).collect();
    for (i, o) in outcomes.iter().enumerate() {
        scores[i / levels].o[i % levels] = o.prob;
    }
    Ok(scores)
}

/// [`ad_ic_scores`] with the images (n, 3, H, W) and their normalised maps (n, H, W) where
/// they are: the masks and masked images are made on their device (the same values, bit
/// for bit), and only the logits come back, one chunk at a time.
pub fn ad_ic_scores_on_device(
    classify: &Classify,
    images: &Tensor,
    maps: &Tensor,
    classes: &[u32],
    y: &[f64],
    chunk: usize,
) -> Result<Vec<AdIcScores>> {
    let (n, c, h, w) = images.dims4()?;
    if maps.dims() != [n, h, w] || classes.len() != n || y.len() != n {
        return Err(MetricsError::BadInput(format!(
            "maps {:?}, {} classes and {} confidences for images {:?}",
            maps.dims(),
            classes.len(),
            y.len(),
            images.dims()
        )));
    }
    let levels = KEEP_LEVELS.len();
    let masks = KEEP_LEVELS
        .iter()
        .map(|&keep| keep_fraction_on_device(maps, keep))
        .collect::<Result<Vec<_>>>()?;
    // Image-major, as on the host: an image's masked versions are classified together.
    let masked = images
        .unsqueeze(1)?
        .broadcast_mul(&Tensor::stack(&masks, 1)?.unsqueeze(2)?)?
        .reshape((n * levels, c, h, w))?;
    let outcomes = classify_batch(classify, &masked, chunk.max(levels), |i| {
        classes[i / levels]
    })?;
    let mut scores: Vec<AdIcScores> = y.iter().map(|&y| AdIcScores { y, o: [0.0; 3] }).collect();
    for (i, o) in outcomes.iter().enumerate() {
        scores[i / levels].o[i % levels] = o.prob;
    }
    Ok(scores)
}

/// Checks that `pixels` and `maps` hold `n` images of `dims` and `n` maps of their size.
pub(crate) fn check_batch(pixels: &[f32], dims: [usize; 3], maps: &[f32], n: usize) -> Result<()> {
    let len: usize = dims.iter().product();
    if pixels.len() != n * len || maps.len() != n * dims[1] * dims[2] {
        return Err(MetricsError::BadInput(format!(
            "{} pixel values and {} map values do not make {n} images of {dims:?} with their maps",
            pixels.len(),
            maps.len()
        )));
    }
    Ok(())
}

/// Running sums of [`AdIcScores`] over images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdIcTotals {
    images: usize,
    drop: [f64; 3],
    increase: [usize; 3],
}

impl AdIcTotals {
    /// Adds one image.
    pub fn add(&mut self, s: &AdIcScores) {
        self.images += 1;
        for level in 0..3 {
            // Y > 0 always holds for a softmax output; a zero would only come from underflow.
            if s.y > 0.0 {
                self.drop[level] += (s.y - s.o[level]).max(0.0) / s.y;
            }
            if s.o[level] > s.y {
                self.increase[level] += 1;
            }
        }
    }

    /// AD and IC in percent at each keep level (zeros before any image).
    pub fn report(&self) -> AdIcReport {
        let scale = if self.images == 0 {
            0.0
        } else {
            100.0 / self.images as f64
        };
        AdIcReport {
            images: self.images,
            ad: self.drop.map(|d| d * scale),
            ic: self.increase.map(|c| c as f64 * scale),
        }
    }
}

/// AD = 100/N Σ max(0, Y − O)/Y and IC = 100/N #{O > Y} at each of the [`KEEP_LEVELS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdIcReport {
    /// Images evaluated (N).
    pub images: usize,
    /// Average Drop, percent, per keep level.
    pub ad: [f64; 3],
    /// Increase in Confidence, percent, per keep level.
    pub ic: [f64; 3],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device path scores what the host path scores, exactly (the same masked images),
    /// with maps holding ties at the thresholds.
    #[test]
    fn device_and_host_paths_score_alike() {
        let (n, h, w) = (3, 12, 10);
        let cpu = Device::Cpu;
        let images = Tensor::rand(0f32, 1f32, (n, 3, h, w), &cpu).unwrap();
        let levels: Vec<f32> = (0..n * h * w).map(|i| ((i * 7) % 5) as f32 / 4.0).collect();
        let maps = Tensor::from_vec(levels, (n, h, w), &cpu).unwrap();
        let weights = Tensor::rand(-1f32, 1f32, (3 * h * w, 10), &cpu).unwrap();
        let classify = |x: &Tensor| -> Result<Tensor> { Ok(x.flatten_from(1)?.matmul(&weights)?) };
        let classes = [1, 4, 9];
        let y = [0.3, 0.5, 0.7];
        let device = ad_ic_scores_on_device(&classify, &images, &maps, &classes, &y, 4).unwrap();
        let pixels = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let host_maps = maps.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let host = ad_ic_scores(
            &classify,
            &pixels,
            [3, h, w],
            &host_maps,
            &classes,
            &y,
            4,
            &cpu,
        )
        .unwrap();
        assert_eq!(device, host);
        assert!(host.iter().all(|s| s.o.iter().all(|&o| o > 0.0)));
    }

    #[test]
    fn averages_drops_and_counts_increases() {
        let mut t = AdIcTotals::default();
        t.add(&AdIcScores {
            y: 0.5,
            o: [0.25, 0.6, 0.5],
        });
        t.add(&AdIcScores {
            y: 0.8,
            o: [0.8, 0.0, 0.4],
        });
        let r = t.report();
        assert_eq!(r.images, 2);
        assert_eq!(r.ad, [25.0, 50.0, 25.0]);
        assert_eq!(r.ic, [0.0, 50.0, 0.0]);
    }
}
