//! Finite-difference gradient checks for the tests of this crate, and comparisons of the
//! native kernels with the portable path.

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::{with_kernels, Kernels};

/// A deterministic f64 tensor with values in [-1, 1) (a splitmix64 sequence).
pub fn seeded(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let values = tame_testdata::seeded_values(shape.iter().product(), seed);
    Tensor::from_vec(values, shape, device)
}

/// Checks the gradient of `sum(f(x) * r)` (r a fixed random tensor) with respect to `x`
/// against central finite differences, in f64, to 1e-6 absolute.
pub fn assert_gradients_match(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    let x = x.to_dtype(DType::F64)?;
    let weights = seeded(f(&x)?.dims(), 99, x.device())?;
    let loss = |t: &Tensor| -> Result<f64> { (f(t)? * &weights)?.sum_all()?.to_scalar::<f64>() };

    let var = Var::from_tensor(&x)?;
    let grads = (f(var.as_tensor())? * &weights)?.sum_all()?.backward()?;
    let analytic = grads
        .get(var.as_tensor())
        .ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?
        .flatten_all()?
        .to_vec1::<f64>()?;

    let base = x.flatten_all()?.to_vec1::<f64>()?;
    let eps = 1e-6;
    for (i, &g) in analytic.iter().enumerate() {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let lp = loss(&Tensor::from_vec(plus, x.dims(), x.device())?)?;
        let lm = loss(&Tensor::from_vec(minus, x.dims(), x.device())?)?;
        let numeric = (lp - lm) / (2.0 * eps);
        assert!(
            (numeric - g).abs() < 1e-6,
            "gradient of element {i}: analytic {g}, numeric {numeric}"
        );
    }
    Ok(())
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

/// `y`, then the gradients of `sum(y * r)` (r a fixed random tensor) with respect to each of
/// `inputs`.
pub fn output_and_gradients(y: &Tensor, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let r = seeded(y.dims(), 98, y.device())?.to_dtype(y.dtype())?;
    let grads = (y * r)?.sum_all()?.backward()?;
    let mut values = vec![y.detach()];
    for input in inputs {
        let grad = grads
            .get(input)
            .ok_or_else(|| candle_core::Error::Msg("no gradient reached an input".into()))?;
        values.push(grad.clone());
    }
    Ok(values)
}

/// `f` run with the native kernels, then with the portable path.
pub fn native_and_portable<T>(f: impl Fn() -> Result<T>) -> Result<(T, T)> {
    Ok((
        with_kernels(Kernels::Native, &f)?,
        with_kernels(Kernels::Portable, &f)?,
    ))
}

/// Asserts that each tensor of `got` is within `tolerance` of its counterpart in `want`.
pub fn assert_all_close(what: &str, got: &[Tensor], want: &[Tensor], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert_eq!(a.dims(), b.dims(), "{what}, tensor {i}");
        let diff = max_abs_diff(a, b);
        assert!(diff <= tolerance, "{what}, tensor {i}: {diff}");
    }
}
