//! ROAD, remove and debias (Rong et al., ICML 2022): remove the most (MoRF) or least (LeRF)
//! relevant pixels by the map, impute them from their neighbours with noise, and see whether
//! the prediction survives. Pixels are chosen as pytorch-grad-cam's `ROADMostRelevantFirst`
//! and `ROADLeastRelevantFirst` choose them: by a percentile threshold on the map.

use std::cmp::Ordering;

use candle_core::Device;
use tame_backbones::IMAGENET_STD;

use crate::ad_ic::check_batch;
use crate::classify::{classify_generated, Classify};
use crate::impute::{impute_linear, ImputeConfig};
use crate::{MetricsError, Result};

/// Which pixels go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoadOrder {
    /// Most relevant first: a good map makes the prediction fall fast.
    MoRF,
    /// Least relevant first: a good map keeps the prediction.
    LeRF,
}

impl RoadOrder {
    /// Both orders, in report order.
    pub const BOTH: [RoadOrder; 2] = [RoadOrder::MoRF, RoadOrder::LeRF];

    /// `MoRF` or `LeRF`.
    pub fn name(self) -> &'static str {
        match self {
            RoadOrder::MoRF => "MoRF",
            RoadOrder::LeRF => "LeRF",
        }
    }
}

/// Settings of [`road_scores`].
#[derive(Debug, Clone, PartialEq)]
pub struct RoadConfig {
    /// Fractions f of pixels removed, each in (0, 1): pytorch-grad-cam's percentile
    /// 100 (1 - f) (see [`road_scores`]).
    pub fractions: Vec<f64>,
    /// Noise of the imputation in units of the backbone's normalised input (ROAD's 0.01);
    /// it is applied in [0, 1] space scaled by each channel's ImageNet std, which is the same
    /// thing because linear imputation commutes with the per-channel normalisation.
    pub noise: f64,
    /// Seed of the noise; each image, order and fraction draws from its own stream derived
    /// from it and the image's index in the run, so batching does not change results.
    pub seed: u64,
}

impl Default for RoadConfig {
    fn default() -> Self {
        Self {
            fractions: (1..=9).map(|i| i as f64 / 10.0).collect(),
            noise: 0.01,
            seed: 0,
        }
    }
}

/// One image's outcome at one removal fraction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoadPoint {
    /// The top-1 class of the imputed image is still the unmasked image's.
    pub survived: bool,
    /// Probability of that class on the unmasked image minus on the imputed one.
    pub drop: f64,
}

/// One image's ROAD outcomes, one point per configured fraction and order.
#[derive(Debug, Clone, PartialEq)]
pub struct RoadScores {
    /// Most relevant first.
    pub morf: Vec<RoadPoint>,
    /// Least relevant first.
    pub lerf: Vec<RoadPoint>,
}

/// ROAD for a batch: `pixels` (n, `dims`) in [0, 1], normalised `maps` (n, H, W), each image's
/// predicted class and its probability `y`, `first_index` the run-wide index of image 0 (for
/// the noise streams).
///
/// At fraction f the pixels removed from every channel and imputed are, with t(v) numpy's
/// `percentile(v, 100 (1 - f))` (linear interpolation, in f32 as numpy computes it for f32
/// values): for MoRF those where map >= t(map), for LeRF those where 1 - map >=
/// t(1 - map), as pytorch-grad-cam 1.5.7's `ROADMostRelevantFirst(100 (1 - f))` and
/// `ROADLeastRelevantFirst(100 (1 - f))`. With distinct map values that is
/// floor(f (H·W - 1)) + 1 pixels; pixels equal to the threshold all go, so a map with many
/// equal values may lose more (MoRF removes every pixel when more than 1 - f of them share the
/// map's minimum).
#[allow(clippy::too_many_arguments)]
pub fn road_scores(
    classify: &Classify,
    pixels: &[f32],
    dims: [usize; 3],
    maps: &[f32],
    classes: &[u32],
    y: &[f64],
    first_index: u64,
    config: &RoadConfig,
    chunk: usize,
    device: &Device,
) -> Result<Vec<RoadScores>> {
    let n = classes.len();
    check_batch(pixels, dims, maps, n)?;
    if let Some(f) = config.fractions.iter().find(|f| !(**f > 0.0 && **f < 1.0)) {
        return Err(MetricsError::BadInput(format!(
            "ROAD removal fraction {f} is not in (0, 1)"
        )));
    }
    let [channels, height, width] = dims;
    let plane = height * width;
    if plane == 0 {
        return Err(MetricsError::BadInput(format!(
            "ROAD needs images of at least one pixel, got {dims:?}"
        )));
    }
    let len = channels * plane;
    let impute = ImputeConfig {
        noise_std: std::array::from_fn(|c| config.noise * IMAGENET_STD[c % 3] as f64),
        ..ImputeConfig::default()
    };
    let levels = config.fractions.len();
    let per_image = 2 * levels;
    // Per image, per order: the score each pixel is removed by and each fraction's threshold.
    let scores: Vec<[Vec<f32>; 2]> = (0..n)
        .map(|i| {
            let map = &maps[i * plane..(i + 1) * plane];
            [map.to_vec(), map.iter().map(|v| 1.0 - v).collect()]
        })
        .collect();
    let thresholds: Vec<[Vec<f32>; 2]> = scores
        .iter()
        .map(|per_order| {
            per_order.clone().map(|mut sorted| {
                sorted.sort_by(f32::total_cmp);
                let at = |f: &f64| percentile(&sorted, 1.0 - f);
                config.fractions.iter().map(at).collect()
            })
        })
        .collect();
    let outcomes = classify_generated(
        classify,
        dims,
        n * per_image,
        chunk,
        device,
        |j| classes[j / per_image],
        |j, image| {
            let (i, rest) = (j / per_image, j % per_image);
            let (order, level) = (rest / levels, rest % levels);
            let threshold = thresholds[i][order][level];
            // pytorch-grad-cam keeps `score < threshold`: the rest, NaN included, goes.
            let removed: Vec<bool> = scores[i][order]
                .iter()
                .map(|v| v.partial_cmp(&threshold) != Some(Ordering::Less))
                .collect();
            image.copy_from_slice(&pixels[i * len..(i + 1) * len]);
            let seed = mix(&[config.seed, first_index + i as u64, rest as u64]);
            impute_linear(image, height, width, &removed, &impute, seed);
        },
    )?;
    Ok(outcomes
        .chunks(per_image)
        .zip(classes.iter().zip(y))
        .map(|(o, (&k, &y))| {
            let point = |o: &crate::classify::Outcome| RoadPoint {
                survived: o.top == k,
                drop: y - o.prob,
            };
            RoadScores {
                morf: o[..levels].iter().map(point).collect(),
                lerf: o[levels..].iter().map(point).collect(),
            }
        })
        .collect())
}

/// numpy's `percentile(sorted, 100 q)` with its default linear interpolation, as numpy
/// computes it for f32 values and a Python number q (pytorch-grad-cam's percentiles are
/// ints): the index (n - 1) q and its fraction in f64, the interpolation in f32.
fn percentile(sorted: &[f32], q: f64) -> f32 {
    let last = sorted.len() - 1;
    let index = last as f64 * q;
    let below = index.floor();
    let gamma = index - below;
    let below = (below.max(0.0) as usize).min(last);
    let (a, b) = (sorted[below], sorted[(below + 1).min(last)]);
    let diff = b - a;
    // numpy's `_lerp`: from the nearer end, for symmetry.
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma) as f32
    } else {
        a + diff * gamma as f32
    }
}

/// Hashes words into one seed (SplitMix64 steps).
fn mix(words: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &w in words {
        h = h.wrapping_add(w).wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h
}

/// Running sums of [`RoadScores`] over images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoadTotals {
    images: usize,
    survived: [Vec<usize>; 2],
    drop: [Vec<f64>; 2],
}

impl RoadTotals {
    /// Adds one image.
    pub fn add(&mut self, s: &RoadScores) {
        self.images += 1;
        for (o, points) in [&s.morf, &s.lerf].into_iter().enumerate() {
            self.survived[o].resize(points.len(), 0);
            self.drop[o].resize(points.len(), 0.0);
            for (l, p) in points.iter().enumerate() {
                self.survived[o][l] += p.survived as usize;
                self.drop[o][l] += p.drop;
            }
        }
    }

    /// Means over the images added.
    pub fn report(&self, fractions: &[f64]) -> RoadReport {
        let n = self.images.max(1) as f64;
        let curve = |o: usize| -> Vec<(f64, f64)> {
            (0..fractions.len())
                .map(|l| {
                    let s = self.survived[o].get(l).copied().unwrap_or(0) as f64;
                    let d = self.drop[o].get(l).copied().unwrap_or(0.0);
                    (s / n, d / n)
                })
                .collect()
        };
        RoadReport {
            images: self.images,
            fractions: fractions.to_vec(),
            morf: curve(0),
            lerf: curve(1),
        }
    }
}

/// ROAD over a set of images: per order and removal fraction, (fraction of images whose
/// prediction survives, mean confidence drop).
#[derive(Debug, Clone, PartialEq)]
pub struct RoadReport {
    /// Images evaluated.
    pub images: usize,
    /// Fractions removed.
    pub fractions: Vec<f64>,
    /// (survival, mean drop) per fraction, most relevant removed first.
    pub morf: Vec<(f64, f64)>,
    /// (survival, mean drop) per fraction, least relevant removed first.
    pub lerf: Vec<(f64, f64)>,
}
