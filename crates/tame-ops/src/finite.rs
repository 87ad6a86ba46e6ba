//! Whether a tensor's values are all finite: weights read from files and maps are checked
//! before they give numbers that look like results.

use candle_core::{DType, Result, Tensor};

/// True when `t` holds no NaN and no infinity (integer tensors always do).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() || t.elem_count() == 0 {
        return Ok(true);
    }
    let t = t.flatten_all()?;
    // NaN is the one value unequal to itself; a maximum skips it, so it is found apart.
    let nan = t.ne(&t)?.max(0)?.to_scalar::<u8>()? != 0;
    let largest = t.abs()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(!nan && largest.is_finite())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn nan_and_infinities_are_found_in_every_float_type() -> Result<()> {
        for dtype in [DType::F16, DType::BF16, DType::F32, DType::F64] {
            for (values, finite) in [
                (vec![0.5f64, -2.0, 3.0], true),
                (vec![0.5, f64::NAN, 3.0], false),
                (vec![f64::INFINITY, 1.0, 2.0], false),
                (vec![1.0, 2.0, f64::NEG_INFINITY], false),
            ] {
                let t = Tensor::new(values.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
                assert_eq!(all_finite(&t)?, finite, "{dtype:?} {values:?}");
            }
        }
        let ints = Tensor::new(&[1i64, 2], &Device::Cpu)?;
        assert!(all_finite(&ints)?);
        Ok(())
    }
}
