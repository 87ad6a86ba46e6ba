use candle_core::{Result, Tensor, D};

/// Max pooling of a (B, C, H, W) tensor with any kernel, stride and padding (padding counts as
/// -inf, as in PyTorch's `max_pool2d`; no dilation, floor mode).
///
/// candle's native pool has no backward pass unless kernel == stride, so this takes the
/// element-wise maximum of the kernel's shifted, subsampled windows instead. At ties the
/// gradient is split between the tied inputs (PyTorch sends it to one of them); on real
/// activations ties are measure-zero.
///
/// candle's native pool is used only when no gradient is tracked: its backward pass (kernel ==
/// stride) multiplies the gradient by `ties / kernel²` where it should divide by `ties`, so it
/// comes out `kernel²` times too small.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if !x.track_op() && padding == 0 && kernel == stride && h % kernel == 0 && w % kernel == 0 {
        return x.max_pool2d(kernel);
    }
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!(
            "max_pool2d: input {h}x{w} is smaller than the {kernel}x{kernel} kernel"
        );
    }
    let out_h = (h + 2 * padding - kernel) / stride + 1;
    let out_w = (w + 2 * padding - kernel) / stride + 1;
    // Pad so that every window offset can take `out * stride` elements and fold them.
    let padded = pad_neg_inf(x, padding, kernel - 1 + out_h * stride - h - padding, 2)?;
    let padded = pad_neg_inf(
        &padded,
        padding,
        kernel - 1 + out_w * stride - w - padding,
        3,
    )?;
    let mut result: Option<Tensor> = None;
    for di in 0..kernel {
        let rows = subsample(&padded, 2, di, out_h, stride)?;
        for dj in 0..kernel {
            let window = subsample(&rows, 3, dj, out_w, stride)?;
            result = Some(match result {
                None => window,
                Some(acc) => acc.maximum(&window)?,
            });
        }
    }
    result.ok_or_else(|| candle_core::Error::Msg("max_pool2d: empty kernel".into()))
}

/// Elements `start, start + stride, ...` (`count` of them) along `dim` (2 or 3).
fn subsample(x: &Tensor, dim: usize, start: usize, count: usize, stride: usize) -> Result<Tensor> {
    let taken = x.narrow(dim, start, count * stride)?;
    if stride == 1 {
        return Ok(taken);
    }
    let mut shape = taken.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, stride);
    taken
        .reshape(shape)?
        .narrow(dim + 1, 0, 1)?
        .squeeze(dim + 1)
}

fn pad_neg_inf(x: &Tensor, before: usize, after: usize, dim: usize) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let mut parts = Vec::with_capacity(3);
    let mut shape = x.dims().to_vec();
    if before > 0 {
        shape[dim] = before;
        parts.push(
            Tensor::full(f32::NEG_INFINITY, shape.as_slice(), x.device())?.to_dtype(x.dtype())?,
        );
    }
    parts.push(x.clone());
    if after > 0 {
        shape[dim] = after;
        parts.push(
            Tensor::full(f32::NEG_INFINITY, shape.as_slice(), x.device())?.to_dtype(x.dtype())?,
        );
    }
    Tensor::cat(&parts, dim)
}

/// PyTorch's `adaptive_avg_pool2d`: output cell (i, j) averages rows
/// `floor(i*H/oh) .. ceil((i+1)*H/oh)` and the matching columns.
pub fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if (out_h, out_w) == (1, 1) {
        return x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2);
    }
    let pooled_rows = pool_axis(x, 2, h, out_h)?;
    pool_axis(&pooled_rows, 3, w, out_w)
}

fn pool_axis(x: &Tensor, dim: usize, len: usize, out: usize) -> Result<Tensor> {
    if len == out {
        return Ok(x.clone());
    }
    let cells = (0..out)
        .map(|i| {
            let start = i * len / out;
            let end = ((i + 1) * len).div_ceil(out);
            x.narrow(dim, start, end - start)?.mean_keepdim(dim)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&cells, dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_gradients_match, seeded};
    use candle_core::Device;

    /// Straightforward loop implementation used as the reference.
    fn naive_max_pool(x: &[f64], h: usize, w: usize, k: usize, s: usize, p: usize) -> Vec<f64> {
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let mut out = vec![f64::NEG_INFINITY; oh * ow];
        for i in 0..oh {
            for j in 0..ow {
                for di in 0..k {
                    for dj in 0..k {
                        let (r, c) = (
                            (i * s + di) as isize - p as isize,
                            (j * s + dj) as isize - p as isize,
                        );
                        if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                            let v = x[r as usize * w + c as usize];
                            out[i * ow + j] = out[i * ow + j].max(v);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn max_pool_matches_naive_loop() -> Result<()> {
        for (h, w, k, s, p) in [
            (112, 112, 3, 2, 1),
            (7, 9, 3, 2, 1),
            (8, 8, 2, 2, 0),
            (6, 5, 3, 1, 1),
            (9, 9, 3, 3, 0),
        ] {
            let x = seeded(&[1, 1, h, w], 11, &Device::Cpu)?;
            let got = max_pool2d(&x, k, s, p)?.flatten_all()?.to_vec1::<f64>()?;
            let want = naive_max_pool(&x.flatten_all()?.to_vec1::<f64>()?, h, w, k, s, p);
            assert_eq!(got, want, "{h}x{w} k{k} s{s} p{p}");
        }
        Ok(())
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() -> Result<()> {
        // (4, 4, 2, 2, 0) is the case where candle's own backward pass is wrong.
        for (h, w, k, s, p) in [(7, 6, 3, 2, 1), (4, 4, 2, 2, 0), (5, 5, 3, 1, 1)] {
            let x = seeded(&[2, 2, h, w], 5, &Device::Cpu)?;
            assert_gradients_match(&x, |t| max_pool2d(t, k, s, p))?;
        }
        Ok(())
    }

    #[test]
    fn adaptive_pool_matches_definition() -> Result<()> {
        // 5 -> 3 bins: [0,2), [1,4), [3,5) as in PyTorch.
        let x = Tensor::new(&[[[[1f64, 2.0, 3.0, 4.0, 5.0]]]], &Device::Cpu)?;
        let y = adaptive_avg_pool2d(&x, 1, 3)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert_eq!(y, vec![1.5, 3.0, 4.5]);
        // 1x1 input replicated to 7x7, as VGG's pool does for tiny inputs.
        let x = Tensor::new(&[[[[2f64]]]], &Device::Cpu)?;
        let y = adaptive_avg_pool2d(&x, 7, 7)?;
        assert_eq!(y.dims(), &[1, 1, 7, 7]);
        assert_eq!(y.sum_all()?.to_scalar::<f64>()?, 98.0);
        Ok(())
    }

    #[test]
    fn adaptive_pool_gradient_matches_finite_differences() -> Result<()> {
        let x = seeded(&[1, 2, 5, 6], 9, &Device::Cpu)?;
        assert_gradients_match(&x, |t| adaptive_avg_pool2d(t, 3, 4))?;
        assert_gradients_match(&x, |t| adaptive_avg_pool2d(t, 1, 1))
    }
}
