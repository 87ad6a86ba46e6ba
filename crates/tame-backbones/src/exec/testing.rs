//! What the tests of the fused runs share: seeded tensors and exact comparisons.

use candle_core::{DType, Device, Result, Tensor};

/// A deterministic f64 tensor with values in [-1, 1) (a splitmix64 sequence).
pub fn seeded(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let values = tame_testdata::seeded_values(shape.iter().product(), seed);
    Tensor::from_vec(values, shape, device)
}

/// The largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .and_then(|d| {
            d.abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()
        })
        .expect("tensors of one shape")
}

/// Asserts that a fused op's (output, input gradient) equal the composed ops' exactly, and
/// that the gradient is not all zeros (a test that could not fail).
pub fn assert_same_output_and_gradient(
    what: &str,
    got: (&Tensor, &Tensor),
    want: (&Tensor, &Tensor),
) {
    assert_eq!(got.0.dims(), want.0.dims(), "{what}: shape");
    assert_eq!(max_abs_diff(got.0, want.0), 0.0, "{what}: output");
    assert_eq!(max_abs_diff(got.1, want.1), 0.0, "{what}: input gradient");
    let zeros = got.1.zeros_like().expect("zeros");
    assert!(max_abs_diff(got.1, &zeros) > 0.0, "{what}: zero gradient");
}
