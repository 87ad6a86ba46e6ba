use candle_core::{DType, Device, Result, Tensor};

/// The (out x in) matrix that maps a signal of length `input` to length `output` by linear
/// interpolation with PyTorch's `align_corners=False` rule: source coordinate
/// `(dst + 0.5) * in/out - 0.5`, clamped at 0, the right neighbour clamped at the border.
///
/// Coordinates are computed in the tensor's precision as PyTorch does (f64 for f64 tensors,
/// f32 otherwise: each step is rounded to f32, which gives f32 arithmetic's results
/// exactly), so the weights agree bit for bit in the common cases.
pub fn bilinear_matrix(
    output: usize,
    input: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let round = |v: f64| match dtype {
        DType::F64 => v,
        _ => v as f32 as f64,
    };
    let mut weights = vec![0f64; output * input];
    let scale = round(input as f64 / output as f64);
    for dst in 0..output {
        let src = round(round(scale * round(dst as f64 + 0.5)) - 0.5).max(0.0);
        let left = (src as usize).min(input - 1);
        let right = (left + 1).min(input - 1);
        let lambda = round(src - left as f64);
        weights[dst * input + left] = round(weights[dst * input + left] + round(1.0 - lambda));
        weights[dst * input + right] = round(weights[dst * input + right] + lambda);
    }
    Tensor::from_vec(weights, (output, input), device)?.to_dtype(dtype)
}

/// Bilinear resize of a (B, C, H, W) tensor to (B, C, height, width), equal to PyTorch's
/// `F.interpolate(x, size, mode="bilinear", align_corners=False)` without antialiasing.
///
/// Written as `Rh · x · Rwᵀ` so that gradients flow (candle's `upsample_bilinear2d` has no
/// backward pass). Returns `x` itself when the size is unchanged.
pub fn resize_bilinear(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (_, _, in_h, in_w) = x.dims4()?;
    if (in_h, in_w) == (height, width) {
        return Ok(x.clone());
    }
    let mut y = x.clone();
    if in_w != width {
        let rw = bilinear_matrix(width, in_w, x.dtype(), x.device())?;
        y = y.broadcast_matmul(&rw.t()?)?;
    }
    if in_h != height {
        let rh = bilinear_matrix(height, in_h, x.dtype(), x.device())?;
        y = rh.broadcast_matmul(&y)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_gradients_match, seeded};

    #[test]
    fn matches_candle_native_forward() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w, oh, ow) in [
            (7, 7, 224, 224),
            (14, 14, 28, 28),
            (28, 20, 224, 99),
            (5, 9, 3, 4),
        ] {
            let x = seeded(&[2, 3, h, w], 1, &dev)?.to_dtype(DType::F32)?;
            let ours = resize_bilinear(&x, oh, ow)?;
            let native = x.upsample_bilinear2d(oh, ow, false)?;
            let diff = (ours - native)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 5e-6, "{h}x{w}->{oh}x{ow}: max diff {diff}");
        }
        Ok(())
    }

    #[test]
    fn known_values_for_doubling() -> Result<()> {
        // PyTorch: F.interpolate(tensor([[[[0., 1.]]]]), size=(1, 4), mode="bilinear")
        // gives [0, 0.25, 0.75, 1].
        let x = Tensor::new(&[[[[0f32, 1.0]]]], &Device::Cpu)?;
        let y = resize_bilinear(&x, 1, 4)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, vec![0.0, 0.25, 0.75, 1.0]);
        Ok(())
    }

    #[test]
    fn same_size_is_identity() -> Result<()> {
        let x = seeded(&[1, 2, 6, 6], 3, &Device::Cpu)?;
        let y = resize_bilinear(&x, 6, 6)?;
        assert_eq!(
            x.flatten_all()?.to_vec1::<f64>()?,
            y.flatten_all()?.to_vec1::<f64>()?
        );
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w, oh, ow) in [(3, 4, 7, 5), (6, 6, 2, 3), (2, 2, 8, 8)] {
            let x = seeded(&[2, 2, h, w], 7, &dev)?;
            assert_gradients_match(&x, |t| resize_bilinear(t, oh, ow))?;
        }
        Ok(())
    }
}
