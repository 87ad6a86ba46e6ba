//! Dropout with p = 0.5 as PyTorch applies it in train mode: each unit kept with probability
//! one half and then doubled. One generator serves every dropout layer of a network that
//! shares it, in the order the pass runs them: a seeded host generator on the CPU, the
//! device's own generator (seeded alike) elsewhere, so that masks never cross to a device.

use std::collections::VecDeque;
use std::sync::Mutex;

use candle_core::{Result, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::lock;

pub struct Dropout {
    rng: Mutex<StdRng>,
    /// A seed the device's generator has yet to take (it is only known at the next pass).
    device_seed: Mutex<Option<u64>>,
    /// Keep masks that replace the draws while set ([`Dropout::set_masks`]).
    masks: Mutex<Option<VecDeque<Tensor>>>,
}

impl Dropout {
    /// Draws from a generator seeded with 0 until [`reseed`](Self::reseed).
    pub fn new() -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(0)),
            device_seed: Mutex::new(Some(0)),
            masks: Mutex::new(None),
        }
    }

    pub fn reseed(&self, seed: u64) {
        *lock(&self.rng) = StdRng::seed_from_u64(seed);
        *lock(&self.device_seed) = Some(seed);
    }

    /// Makes train-mode passes apply the given keep masks instead of drawing their own (1
    /// where a unit is kept, 0 where it is dropped), one per pass of a dropout layer, in
    /// order; while masks are set, a pass with none left is an error. `None` goes back to
    /// the seeded draws.
    pub fn set_masks(&self, masks: Option<Vec<Tensor>>) {
        *lock(&self.masks) = masks.map(VecDeque::from);
    }

    /// `x` in eval mode; `x` with half its units dropped and the rest doubled in train mode.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            return Ok(x.clone());
        }
        if let Some(masks) = lock(&self.masks).as_mut() {
            let keep = masks.pop_front().ok_or_else(|| {
                candle_core::Error::Msg("no dropout mask left of those set".into())
            })?;
            if keep.dims() != x.dims() {
                candle_core::bail!(
                    "a dropout mask of shape {:?} for an input of shape {:?}",
                    keep.dims(),
                    x.dims()
                );
            }
            let keep = keep.to_device(x.device())?.to_dtype(x.dtype())?;
            return x * (keep * 2.0)?;
        }
        if !x.device().is_cpu() {
            if let Some(seed) = lock(&self.device_seed).take() {
                x.device().set_seed(seed)?;
            }
            let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?.ge(0.5)?;
            return x * (keep.to_dtype(x.dtype())? * 2.0)?;
        }
        let mask: Vec<f32> = {
            let mut rng = lock(&self.rng);
            (0..x.elem_count())
                .map(|_| if rng.random::<bool>() { 2.0 } else { 0.0 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}
