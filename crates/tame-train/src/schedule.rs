//! `torch.optim.lr_scheduler.OneCycleLR` (cosine annealing, two phases, momentum cycling).

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The one-cycle policy as PyTorch computes it.
///
/// Phase 1 runs from step 0 to `pct_start * total_steps - 1`: the learning rate rises from
/// `max / div_factor` to `max` while momentum falls from `max_momentum` to `base_momentum`.
/// Phase 2 ends at step `total_steps - 1`: the learning rate falls to
/// `max / div_factor / final_div_factor` while momentum rises back. Within a phase,
/// `value = end + (start - end) / 2 * (1 + cos(pi * t))`, t the fraction of the phase done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneCycle {
    /// Peak learning rate of each parameter group.
    pub max_lrs: Vec<f64>,
    /// Steps of the whole cycle.
    pub total_steps: u64,
    /// Fraction of the cycle spent rising (0.3).
    pub pct_start: f64,
    /// Initial learning rate = max / `div_factor` (25).
    pub div_factor: f64,
    /// Final learning rate = initial / `final_div_factor` (1e4).
    pub final_div_factor: f64,
    /// Momentum at the peak learning rate (0.85).
    pub base_momentum: f64,
    /// Momentum at both ends (0.95).
    pub max_momentum: f64,
}

impl OneCycle {
    /// PyTorch's defaults for peak rates `max_lrs` over `total_steps` steps.
    pub fn new(max_lrs: Vec<f64>, total_steps: u64) -> Result<Self, TrainError> {
        if total_steps == 0 {
            return Err(TrainError::Config(
                "the schedule needs at least one step".into(),
            ));
        }
        Ok(Self {
            max_lrs,
            total_steps,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        })
    }

    /// The learning rate of each group and the momentum for the optimizer step that follows
    /// `step` earlier steps (step 0 is the first). Past the end the last values are kept
    /// (PyTorch raises instead; a caller never goes there).
    pub fn at(&self, step: u64) -> (Vec<f64>, f64) {
        let phase1_end = self.pct_start * self.total_steps as f64 - 1.0;
        let phase2_end = self.total_steps as f64 - 1.0;
        let s = step.min(self.total_steps) as f64;
        // PyTorch walks the phases and takes the first whose end is not passed, or the last.
        let (pct, rising) = if s <= phase1_end {
            (s / phase1_end, true)
        } else {
            ((s - phase1_end) / (phase2_end - phase1_end), false)
        };
        let lrs = self
            .max_lrs
            .iter()
            .map(|&max| {
                let initial = max / self.div_factor;
                let min = initial / self.final_div_factor;
                match rising {
                    true => cos_anneal(initial, max, pct),
                    false => cos_anneal(max, min, pct),
                }
            })
            .collect();
        let momentum = match rising {
            true => cos_anneal(self.max_momentum, self.base_momentum, pct),
            false => cos_anneal(self.base_momentum, self.max_momentum, pct),
        };
        (lrs, momentum)
    }
}

/// PyTorch's `_annealing_cos`.
fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    let cos_out = (PI * pct).cos() + 1.0;
    end + (start - end) / 2.0 * cos_out
}
