//! The learning-rate range test (section 5): one pass with a geometrically growing rate.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tame_data::Loader;

use crate::{TrainError, Trainer};

/// Settings of the range test; [`Default`] gives the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrTestConfig {
    /// Learning rate of the first batch (1e-8).
    pub start_lr: f64,
    /// Learning rate of the last batch (10).
    pub end_lr: f64,
    /// The optimizer's fixed momentum (0.9).
    pub momentum: f64,
    /// Smoothing factor of the loss average (0.999).
    pub beta: f64,
    /// The test stops when the smoothed loss exceeds this multiple of the best one (4).
    pub stop_factor: f64,
}

impl Default for LrTestConfig {
    fn default() -> Self {
        Self {
            start_lr: 1e-8,
            end_lr: 10.0,
            momentum: 0.9,
            beta: 0.999,
            stop_factor: 4.0,
        }
    }
}

/// Learning rates and the smoothed loss measured at each, in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LrCurve {
    /// Learning rate of the weights group at each step (biases had twice as much).
    pub lrs: Vec<f64>,
    /// Smoothed loss before that step.
    pub losses: Vec<f64>,
}

impl LrCurve {
    /// The reference's file format: `[[lrs...],[losses...]]`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&(&self.lrs, &self.losses)).unwrap_or_default()
    }

    /// Parses [`to_json`](Self::to_json)'s format; both lists must have the same length.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let (lrs, losses): (Vec<f64>, Vec<f64>) = serde_json::from_str(text)
            .map_err(|e| format!("expected [[lrs...],[losses...]]: {e}"))?;
        if lrs.len() != losses.len() {
            return Err(format!(
                "{} learning rates but {} losses",
                lrs.len(),
                losses.len()
            ));
        }
        Ok(Self { lrs, losses })
    }
}

/// What [`lr_range_test`] measured.
#[derive(Debug)]
pub struct LrTestOutcome {
    /// The points, in step order.
    pub curve: LrCurve,
    /// [`TrainError::RangeTestNonFinite`], naming the batch and its learning rate, when a
    /// non-finite loss ended the test; `curve` holds the points before it.
    pub non_finite: Option<TrainError>,
    /// The images skipped as unreadable, in order.
    pub skipped: Vec<tame_data::DataError>,
}

/// Runs the range test with `trainer`'s mechanism, optimizer groups and loss over one pass
/// of `loader`: the rate of step k (from 0) is `start * mult^k` with
/// `mult = (end / start)^(1 / (N - 1))`, N the batches in the pass, biases at twice it.
/// The smoothed loss is `avg / (1 - beta^k)` with `avg = beta * avg + (1 - beta) * loss`;
/// the test stops when it exceeds `stop_factor` times the best one, when the loss is not
/// finite, or when `stop` is raised. Each batch draws its own dropout masks, seeded by the
/// run's seed and the batch's number. `progress` sees (step, lr, smoothed loss).
pub fn lr_range_test(
    trainer: &mut Trainer<'_>,
    loader: &Loader,
    config: &LrTestConfig,
    progress: &mut dyn FnMut(usize, f64, f64),
    stop: &AtomicBool,
) -> Result<LrTestOutcome, TrainError> {
    let n = loader.num_batches();
    if n < 2 {
        return Err(TrainError::Config(format!(
            "the range test needs at least 2 batches, the list gives {n}"
        )));
    }
    let mult = (config.end_lr / config.start_lr).powf(1.0 / (n - 1) as f64);
    let param = trainer.am().parameters()[0].1.clone();
    let mut curve = LrCurve::default();
    let mut non_finite = None;
    let mut skipped = Vec::new();
    let (mut lr, mut avg, mut best) = (config.start_lr, 0.0f64, 0.0f64);
    let mut k = 0i32;
    for (index, batch) in loader.epoch(1)?.enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut batch = batch?;
        skipped.append(&mut batch.skipped);
        if batch.is_empty() {
            continue;
        }
        let number = index as u64 + 1;
        let images = Tensor::from_vec(
            batch.images,
            tame_data::batch_shape(batch.labels.len()),
            &Device::Cpu,
        )?
        .to_device(param.device())?
        .to_dtype(param.dtype())?;
        let step = trainer.step_with(
            &images,
            &batch.labels,
            number,
            &[lr, 2.0 * lr],
            config.momentum,
        );
        let loss = match step {
            Ok(record) => record.loss,
            Err(TrainError::NonFinite { value, .. }) => {
                non_finite = Some(TrainError::RangeTestNonFinite {
                    batch: number,
                    lr,
                    value,
                });
                break;
            }
            Err(e) => return Err(e),
        };
        k += 1;
        avg = config.beta * avg + (1.0 - config.beta) * loss;
        let smoothed = avg / (1.0 - config.beta.powi(k));
        if k > 1 && smoothed > config.stop_factor * best {
            break;
        }
        if k == 1 || smoothed < best {
            best = smoothed;
        }
        curve.lrs.push(lr);
        curve.losses.push(smoothed);
        progress(k as usize, lr, smoothed);
        lr *= mult;
    }
    Ok(LrTestOutcome {
        curve,
        non_finite,
        skipped,
    })
}

/// A suggested maximum learning rate: the rate at the steepest descent of the smoothed loss
/// against log10(rate), looking only at the points up to the lowest loss. `None` with fewer
/// than three such points or no descent at all.
pub fn suggest_max_lr(curve: &LrCurve) -> Option<f64> {
    let n = curve.losses.len();
    let lowest = (0..n).min_by(|&a, &b| curve.losses[a].total_cmp(&curve.losses[b]))?;
    if lowest < 2 {
        return None;
    }
    (1..=lowest)
        .map(|i| {
            let dx = curve.lrs[i].log10() - curve.lrs[i - 1].log10();
            ((curve.losses[i] - curve.losses[i - 1]) / dx, i)
        })
        .filter(|(slope, _)| *slope < 0.0)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, i)| curve.lrs[i])
}

/// Trailing moving average over `window` values (shorter at the start).
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let mut sum = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            sum += v;
            if i >= window {
                sum -= values[i - window];
            }
            sum / (i + 1).min(window) as f64
        })
        .collect()
}
