//! Synthetic mechanisms and taps, computed as `xtask/fixtures/make_am_fixtures.py` does.

use candle_core::{DType, Device, Tensor};
use tame_am::{AmConfig, AttentionMechanism, TapShape, Version};
use tame_backbones::synthetic::{synthetic_uniform, synthetic_values};

pub fn config(version: Version, taps: &[(usize, usize, usize)]) -> AmConfig {
    let taps = taps
        .iter()
        .map(|&(c, h, w)| TapShape::new(c, h, w))
        .collect();
    AmConfig::new(version, taps).unwrap()
}

/// Every tensor of the layout filled by the synthetic formula (`num_batches_tracked` = 0).
pub fn synthetic_am(config: &AmConfig, dtype: DType) -> AttentionMechanism {
    let dev = Device::Cpu;
    let tensors = config.state_layout().into_iter().map(|(name, shape)| {
        let t = if name.ends_with("num_batches_tracked") {
            Tensor::new(0i64, &dev).unwrap()
        } else {
            Tensor::from_vec(synthetic_values(&name, &shape), shape, &dev).unwrap()
        };
        (name, t)
    });
    AttentionMechanism::from_tensors(config, tensors, dtype, &dev).unwrap()
}

/// Tap i: x = 3u - 1 with u = `synthetic_uniform("tap{i}", n)`.
pub fn synthetic_taps(config: &AmConfig, batch: usize, dtype: DType) -> Vec<Tensor> {
    config
        .taps()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let shape = [batch, t.channels, t.height, t.width];
            let n = shape.iter().product();
            let v: Vec<f32> = synthetic_uniform(&format!("tap{i}"), n)
                .into_iter()
                .map(|u| (3.0 * u - 1.0) as f32)
                .collect();
            Tensor::from_vec(v, &shape[..], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        })
        .collect()
}
