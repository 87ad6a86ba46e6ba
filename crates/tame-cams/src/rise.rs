//! RISE (Petsiuk et al., BMVC 2018), as the authors' `explanations.py`.

use candle_core::{IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tame_backbones::Backbone;
use tame_metrics::{Explainer, MetricsError, Result};

use crate::base::{check_batch, check_classes, logits, mask_in_normalised_space, select_classes};

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
    /// Masks given to [`Rise::with_masks`], (N, H, W); drawn from the seed when `None`.
    given: Option<Tensor>,
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
            mean: backbone.input_mean(),
            backbone,
            config,
            given: None,
        })
    }

    /// RISE with the masks `masks` (N, H, W), values in [0, 1], instead of drawn ones: every
    /// image explained must be H x W. `probability` is the p of the 1 / (N p) normalisation
    /// (the keep probability the masks were drawn with; the authors' `p1`); `batch_size` masked
    /// images go through the backbone at a time. For masks made elsewhere, e.g. by the authors'
    /// `generate_masks`. Fails as [`Rise::new`] does, and on masks that are not (N, H, W).
    pub fn with_masks(
        backbone: &'a dyn Backbone,
        masks: &Tensor,
        probability: f32,
        batch_size: usize,
    ) -> Result<Self> {
        let (n, h, w) = masks.dims3().map_err(|_| {
            MetricsError::BadInput(format!("RISE masks must be (N, H, W), got {masks:?}"))
        })?;
        if h == 0 || w == 0 {
            return Err(MetricsError::BadInput(format!(
                "RISE masks must not be empty, got {masks:?}"
            )));
        }
        let config = RiseConfig {
            masks: n,
            probability,
            batch_size,
            ..RiseConfig::default()
        };
        Ok(Self {
            given: Some(masks.clone()),
            ..Self::new(backbone, config)?
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
        self.render(&grid, dy, dx, out);
    }

    /// The mask of the s x s `grid` (reading order) cropped at shift (`dy`, `dx`), appended to
    /// `out`.
    fn render(&self, grid: &[f32], dy: usize, dx: usize, out: &mut Vec<f32>) {
        let s = self.grid;
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

/// Where one `explain` call takes its masks from.
enum Masks<'t> {
    Given(&'t Tensor),
    Drawn(Box<MaskSampler>),
}

impl Explainer for Rise<'_> {
    fn taps(&self) -> &[String] {
        &[]
    }

    fn explain(&self, images: &Tensor, _taps: &[Tensor], classes: &[u32]) -> Result<Tensor> {
        let b = check_batch(images, classes)?;
        let (_, _, height, width) = images.dims4()?;
        let device = images.device();
        let mut source = match &self.given {
            Some(given) => {
                let (_, h, w) = given.dims3()?;
                if (h, w) != (height, width) {
                    return Err(MetricsError::BadInput(format!(
                        "RISE was given {h}x{w} masks for {height}x{width} images"
                    )));
                }
                Masks::Given(given)
            }
            None => Masks::Drawn(Box::new(MaskSampler::new(&self.config, height, width))),
        };
        let mut saliency = Tensor::zeros((b, height * width), images.dtype(), device)?;
        let mut done = 0;
        while done < self.config.masks {
            let n = self.config.batch_size.min(self.config.masks - done);
            let masks = match &mut source {
                Masks::Given(given) => given.narrow(0, done, n)?.to_device(device)?,
                Masks::Drawn(sampler) => {
                    let mut values = Vec::with_capacity(n * height * width);
                    for _ in 0..n {
                        sampler.next_into(&mut values);
                    }
                    Tensor::from_vec(values, (n, height, width), device)?
                }
            };
            let masks = masks.to_dtype(images.dtype())?;
            let masks_4d = masks.unsqueeze(1)?;
            let masks = masks.reshape((n, height * width))?;
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
    fn masks_equal_the_authors_generate_masks() {
        // Grids and shifts drawn by the authors' code, and the masks it made of them
        // (xtask/fixtures/make_rise_fixtures.py).
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rise.npz");
        let fx: std::collections::HashMap<String, Tensor> =
            Tensor::read_npz(path).unwrap().into_iter().collect();
        let grids = fx["rise/grids"].to_dtype(candle_core::DType::F32).unwrap();
        let grids = grids.to_vec3::<f32>().unwrap();
        let shifts = fx["rise/shifts"].to_vec2::<i64>().unwrap();
        let expected = fx["rise/masks"].to_vec3::<f32>().unwrap();
        let (height, width) = (expected[0].len(), expected[0][0].len());
        let config = RiseConfig {
            grid: grids[0].len(),
            ..RiseConfig::default()
        };
        let sampler = MaskSampler::new(&config, height, width);
        for (i, grid) in grids.iter().enumerate() {
            let mut ours = Vec::new();
            let (dy, dx) = (shifts[i][0] as usize, shifts[i][1] as usize);
            sampler.render(&grid.concat(), dy, dx, &mut ours);
            assert_close(&ours, &expected[i].concat());
        }
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
