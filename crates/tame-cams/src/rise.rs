//! RISE (Petsiuk et al., BMVC 2018), as the authors' `explanations.py`.

use candle_core::{IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tame_backbones::Backbone;
use tame_metrics::{Explainer, MetricsError, Result};

use crate::base::{
    check_batch, check_classes, input_mean, logits, mask_in_normalised_space, select_classes,
};

/// Settings of [`Rise`] (defaults: the paper's N = 4000, s = 7, p = 0.5).
#[derive(Clone, Debug, PartialEq)]
pub struct RiseConfig {
    /// Number of random masks N.
    pub masks: usize,
    /// Grid size s: each mask is drawn on an s x s grid.
    pub grid: usize,
    /// Probability p that a grid cell is kept.
    pub probability: f32,
    /// Masked images per forward pass (memory only: results do not depend on it).
    pub batch_size: usize,
    /// Seed of the masks; every image is explained with the same masks.
    pub seed: u64,
}

impl Default for RiseConfig {
    fn default() -> Self {
        Self {
            masks: 4000,
            grid: 7,
            probability: 0.5,
            batch_size: 32,
            seed: 0,
        }
    }
}

/// saliency = sum_i P(class | image masked by M_i) M_i / (N p), masks drawn as the authors do:
/// a random binary s x s grid, upsampled bilinearly to (s + 1) x cell (cell = ceil(H / s)),
/// cropped at a random shift of 0..cell pixels in each direction. Maps at the input's size.
pub struct Rise<'a> {
    backbone: &'a dyn Backbone,
    config: RiseConfig,
    mean: [f32; 3],
}

impl<'a> Rise<'a> {
    /// Fails on zero masks, grid or batch size, a probability outside (0, 1], or a backbone
    /// whose input normalisation is not known.
    pub fn new(backbone: &'a dyn Backbone, config: RiseConfig) -> Result<Self> {
        if config.masks == 0 || config.grid == 0 || config.batch_size == 0 {
            return Err(MetricsError::BadInput(
                "RISE needs at least one mask, grid cell and image per batch".into(),
            ));
        }
        if !(config.probability > 0.0 && config.probability <= 1.0) {
            return Err(MetricsError::BadInput(format!(
                "the RISE keep probability must be in (0, 1], got {}",
                config.probability
            )));
        }
        Ok(Self {
            mean: input_mean(backbone.name())?,
            backbone,
            config,
        })
    }
}

/// Linear interpolation of `n` samples onto `size` outputs as `skimage.transform.resize`
/// (order 1, mode 'reflect' = scipy's 'mirror', pixel centres aligned): for each output, the
/// two source indices and the weight of the second.
fn interpolation(n: usize, size: usize) -> Vec<(usize, usize, f32)> {
    let mirror = |i: isize| -> usize {
        let last = n as isize - 1;
        if last == 0 {
            return 0;
        }
        let period = 2 * last;
        let i = i.rem_euclid(period);
        (if i > last { period - i } else { i }) as usize
    };
    let scale = n as f64 / size as f64;
    (0..size)
        .map(|o| {
            let x = (o as f64 + 0.5) * scale - 0.5;
            let i0 = x.floor();
            let i = i0 as isize;
            (mirror(i), mirror(i + 1), (x - i0) as f32)
        })
        .collect()
}

/// Draws masks in a fixed order from one generator, so that mask i is the same whatever the
/// batch size.
struct MaskSampler {
    rng: StdRng,
    grid: usize,
    probability: f32,
    height: usize,
    width: usize,
    /// Cell size in each direction: the range of the random shifts.
    cell: (usize, usize),
    rows: Vec<(usize, usize, f32)>,
    cols: Vec<(usize, usize, f32)>,
}

impl MaskSampler {
    fn new(config: &RiseConfig, height: usize, width: usize) -> Self {
        let s = config.grid;
        let cell = (height.div_ceil(s), width.div_ceil(s));
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            grid: s,
            probability: config.probability,
            height,
            width,
            cell,
            rows: interpolation(s, (s + 1) * cell.0),
            cols: interpolation(s, (s + 1) * cell.1),
        }
    }

    /// The next mask, (H * W) values in [0, 1] in reading order, appended to `out`.
    fn next_into(&mut self, out: &mut Vec<f32>) {
        let s = self.grid;
        let grid: Vec<f32> = (0..s * s)
            .map(|_| f32::from(self.rng.random::<f32>() < self.probability))
            .collect();
        let dy = self.rng.random_range(0..self.cell.0);
        let dx = self.rng.random_range(0..self.cell.1);
        // Columns first (s rows of W values), then rows.
        let cols = &self.cols[dx..dx + self.width];
        let mut wide = vec![0f32; s * self.width];
        for (r, row) in wide.chunks_exact_mut(self.width).enumerate() {
            let g = &grid[r * s..(r + 1) * s];
            for (v, &(c0, c1, t)) in row.iter_mut().zip(cols) {
                *v = g[c0] + t * (g[c1] - g[c0]);
            }
        }
        for &(r0, r1, t) in &self.rows[dy..dy + self.height] {
            let (a, b) = (
                &wide[r0 * self.width..(r0 + 1) * self.width],
                &wide[r1 * self.width..(r1 + 1) * self.width],
            );
            out.extend(a.iter().zip(b).map(|(a, b)| a + t * (b - a)));
        }
    }
}

impl Explainer for Rise<'_> {
    fn taps(&self) -> &[String] {
        &[]
    }

    fn explain(&self, images: &Tensor, _taps: &[Tensor], classes: &[u32]) -> Result<Tensor> {
        let b = check_batch(images, classes)?;
        let (_, _, height, width) = images.dims4()?;
        let device = images.device();
        let mut sampler = MaskSampler::new(&self.config, height, width);
        let mut saliency = Tensor::zeros((b, height * width), images.dtype(), device)?;
        let mut done = 0;
        while done < self.config.masks {
            let n = self.config.batch_size.min(self.config.masks - done);
            let mut values = Vec::with_capacity(n * height * width);
            for _ in 0..n {
                sampler.next_into(&mut values);
            }
            let masks =
                Tensor::from_vec(values, (n, height * width), device)?.to_dtype(images.dtype())?;
            let masks_4d = masks.reshape((n, 1, height, width))?;
            let mut rows = Vec::with_capacity(b);
            for (i, &class) in classes.iter().enumerate() {
                let masked = mask_in_normalised_space(&images.i(i)?, &masks_4d, self.mean)?;
                let logits = logits(self.backbone, &masked)?;
                if done == 0 {
                    check_classes(&logits, classes)?;
                }
                let probs = candle_nn::ops::softmax(&logits, 1)?;
                let p = select_classes(&probs, &vec![class; n])?;
                rows.push(p.unsqueeze(0)?.matmul(&masks)?);
            }
            saliency = (saliency + Tensor::cat(&rows, 0)?)?;
            done += n;
        }
        let scale = 1.0 / (self.config.masks as f64 * self.config.probability as f64);
        Ok((saliency * scale)?.reshape((b, height, width))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resample(values: &[f32], size: usize) -> Vec<f32> {
        interpolation(values.len(), size)
            .into_iter()
            .map(|(i0, i1, t)| values[i0] + t * (values[i1] - values[i0]))
            .collect()
    }

    fn assert_close(ours: &[f32], expected: &[f32]) {
        assert_eq!(ours.len(), expected.len());
        for (a, b) in ours.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{ours:?} != {expected:?}");
        }
    }

    #[test]
    fn interpolation_equals_scipy_zoom_in_mirror_mode() {
        // scipy.ndimage.zoom(x, f, order=1, mode='mirror', grid_mode=True), which is what
        // skimage's resize(order=1, mode='reflect', anti_aliasing=False) runs.
        assert_close(
            &resample(&[0.0, 1.0, 0.0], 12),
            &[
                0.375, 0.125, 0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125, 0.125, 0.375,
            ],
        );
        assert_close(
            &resample(&[1.0, 0.0, 0.0, 1.0], 10),
            &[0.7, 0.9, 0.5, 0.1, 0.0, 0.0, 0.1, 0.5, 0.9, 0.7],
        );
    }

    fn masks(config: &RiseConfig, n: usize) -> Vec<f32> {
        let mut sampler = MaskSampler::new(config, 10, 7);
        let mut out = Vec::new();
        for _ in 0..n {
            sampler.next_into(&mut out);
        }
        out
    }

    #[test]
    fn masks_follow_the_seed() {
        let config = RiseConfig {
            grid: 3,
            ..RiseConfig::default()
        };
        let a = masks(&config, 3);
        assert_eq!(a.len(), 3 * 70);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(a[..70], a[70..140]);
        assert_eq!(a, masks(&config, 3));
        let other = RiseConfig { seed: 1, ..config };
        assert_ne!(a, masks(&other, 3));
    }
}
