//! Deterministic stand-in weights, generated from each tensor's name by a formula that is
//! simple to reproduce in any language (the PyTorch fixture scripts use the same one).
//!
//! They let the networks run (and be compared with PyTorch, and benchmarked) without
//! downloading real weights; nothing about them is trained.
//!
//! Element i of tensor `name` is `u_i = splitmix64(fnv1a64(name) + (i + 1) * GOLDEN) >> 11`
//! scaled to [0, 1), then mapped by the tensor's role:
//! conv/linear weights: `(2u - 1) * sqrt(6 / fan_in)`; 1-d weights (BN scale): `0.8 + 0.4u`;
//! biases: `(2u - 1) * 0.05`; `running_mean`: `(2u - 1) * 0.1`; `running_var`: `0.8 + 0.4u`.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` deterministic values in [0, 1) for `name` (the `u_i` of the module documentation).
pub fn synthetic_uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(name.as_bytes());
    (0..n as u64)
        .map(|i| {
            let z = splitmix64(seed.wrapping_add((i + 1).wrapping_mul(GOLDEN)));
            (z >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// The values of tensor `name` with `shape`, as described in the module documentation.
pub fn synthetic_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let map: Box<dyn Fn(f64) -> f64> = match leaf {
        "weight" if shape.len() >= 2 => {
            let a = (6.0 / fan_in as f64).sqrt();
            Box::new(move |u| (2.0 * u - 1.0) * a)
        }
        "weight" | "running_var" => Box::new(|u| 0.8 + 0.4 * u),
        "running_mean" => Box::new(|u| (2.0 * u - 1.0) * 0.1),
        _ => Box::new(|u| (2.0 * u - 1.0) * 0.05),
    };
    synthetic_uniform(name, n)
        .into_iter()
        .map(|u| map(u) as f32)
        .collect()
}

/// A VarBuilder backend that serves synthetic weights for any requested name and shape.
pub struct SyntheticWeights;

impl SimpleBackend for SyntheticWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::from_vec(synthetic_values(name, s.dims()), s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// [`SyntheticWeights`] with every tensor whose name starts with `prefix` multiplied by
/// `factor`. The synthetic logits are in the thousands, so a softmax over them is saturated
/// (every probability 0 or 1); the metrics' fixtures scale the last layer (`fc.`) down.
pub struct ScaledSyntheticWeights {
    pub prefix: &'static str,
    pub factor: f64,
}

impl SimpleBackend for ScaledSyntheticWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = SyntheticWeights.get(s, name, init, dtype, dev)?;
        if name.starts_with(self.prefix) {
            t.affine(self.factor, 0.0)
        } else {
            Ok(t)
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        SyntheticWeights.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SyntheticWeights.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_documented_ranges() {
        let w = synthetic_values("features.0.weight", &[64, 3, 3, 3]);
        let a = (6.0f32 / 27.0).sqrt();
        assert_eq!(w.len(), 64 * 27);
        assert!(w.iter().all(|v| v.abs() <= a));
        let var = synthetic_values("bn1.running_var", &[64]);
        assert!(var.iter().all(|v| (0.8..=1.2).contains(v)));
        // Different names give different sequences; the same name the same one.
        assert_ne!(
            w[..8],
            synthetic_values("features.2.weight", &[64, 3, 3, 3])[..8]
        );
        assert_eq!(w, synthetic_values("features.0.weight", &[64, 3, 3, 3]));
    }

    #[test]
    fn first_values_equal_the_python_generator() {
        // Printed by `python xtask/fixtures/synthetic.py`: the PyTorch fixtures rely on both
        // sides generating the same numbers.
        assert_eq!(
            synthetic_values("fc.bias", &[3]),
            [-0.0022348694f32, -0.0019268182, -0.021993691]
        );
        assert_eq!(
            synthetic_values("features.0.weight", &[64, 3, 3, 3])[..3],
            [0.33541137f32, 0.02492835, 0.13142425]
        );
    }
}
