//! Max pooling with any kernel, stride and padding, and adaptive average pooling.
//!
//! [`max_pool2d`] on the CPU is a custom op over the kernel of [`tame_kernels::pool`], with
//! its own backward pass: candle's native pool has a backward only when kernel == stride
//! (and a wrong one with ties), and composing the pool from shifted windows keeps a
//! full-size tensor per window position for the backward.
//!
//! [`adaptive_avg_pool2d`] is a composition of candle operations (means of narrowed cells).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use candle_core::{Result, Tensor, D};
use tame_kernels::pool::Pool;
use tame_kernels::Float;

use crate::policy::{is_half, widened, Kernels};
use crate::storage::{run_float_kernel, FloatKernel};

/// The name errors give.
const OP: &str = "max_pool2d";

/// Max pooling of a (B, C, H, W) tensor with any kernel, stride and padding (padding counts as
/// -inf, as in PyTorch's `max_pool2d`; no dilation, floor mode).
///
/// Where the native kernels run ([`Kernels`]: f32/f64 on the CPU) a separable loop with its
/// own backward pass runs (3-9x faster than candle's native pool on VGG-16's at batch 3): as
/// PyTorch, each output's gradient goes to the first maximum of its window in row-major
/// order. Elsewhere candle's native pool serves when no gradient is tracked and kernel ==
/// stride (its backward multiplies the gradient by
/// `ties / kernel²` where it should divide by `ties`), else the element-wise maximum of the
/// kernel's shifted, subsampled windows, whose gradient is split between tied inputs.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let pool = Pool::new(x.dims4()?, kernel, stride, padding).map_err(candle_core::Error::msg)?;
    let (_, _, h, w) = x.dims4()?;
    let (_, _, out_h, out_w) = pool.output_dims();
    if Kernels::for_tensor(x) == Kernels::Native {
        return x.contiguous()?.apply_op1(MaxPool(pool));
    }
    if !x.track_op() && padding == 0 && kernel == stride && h % kernel == 0 && w % kernel == 0 {
        return x.max_pool2d(kernel);
    }
    shifted_window_maximum(x, kernel, stride, padding, (out_h, out_w))
}

/// The pool as the element-wise maximum of the kernel's shifted, subsampled windows: only
/// operations candle can back-propagate through, on any device.
fn shifted_window_maximum(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    (out_h, out_w): (usize, usize),
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
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
    result.ok_or_else(|| candle_core::Error::Msg(format!("{OP}: empty kernel")))
}

/// [`max_pool2d`]'s op: x -> the pool of x.
struct MaxPool(Pool);

impl FloatKernel for MaxPool {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        self.0.forward(operands[0])
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "tame-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(storage, layout)], OP)?;
        Ok((out, Shape::from(self.0.output_dims())))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad_out: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_out
                .contiguous()?
                .apply_op2_no_bwd(x, &PoolGrad(self.0))?,
        ))
    }
}

/// (grad_out, x) -> grad_x of [`MaxPool`].
struct PoolGrad(Pool);

impl FloatKernel for PoolGrad {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        self.0.backward(operands[0], operands[1], false)
    }
}

impl CustomOp2 for PoolGrad {
    fn name(&self) -> &'static str {
        "tame-max-pool2d-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2)], OP)?;
        Ok((out, Shape::from(l2.dims())))
    }
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
    if is_half(x.dtype()) {
        // Means of many values: in f32 ([`is_half`]), rounded back.
        return adaptive_avg_pool2d(&widened(x)?, out_h, out_w)?.to_dtype(x.dtype());
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
    use crate::gradcheck::{
        assert_all_close, assert_gradients_match, native_and_portable, output_and_gradients, seeded,
    };
    use crate::{with_kernels, Kernels};
    use candle_core::{DType, Device, Var};

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
    fn direct_loop_equals_the_shifted_window_maximum() -> Result<()> {
        for (h, w, k, s, p) in [(7, 9, 3, 2, 1), (8, 8, 2, 2, 0), (6, 5, 3, 1, 1)] {
            let x = candle_core::Var::from_tensor(&seeded(&[2, 3, h, w], 4, &Device::Cpu)?)?;
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let direct = max_pool2d(x.as_tensor(), k, s, p)?;
            let composed = shifted_window_maximum(x.as_tensor(), k, s, p, (oh, ow))?;
            let diff = (direct - composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert_eq!(diff, 0.0, "{h}x{w} k{k} s{s} p{p}");
        }
        Ok(())
    }

    /// The native kernels and the portable path (the shifted windows' maximum, or candle's
    /// own pool where no gradient is asked for: what a GPU runs) agree on data without ties:
    /// the outputs exactly, the gradients to 1e-12 (overlapping windows add up in another
    /// order).
    #[test]
    fn native_and_portable_agree() -> Result<()> {
        for (h, w, k, s, p) in [
            (7, 9, 3, 2, 1),
            (8, 8, 2, 2, 0),
            (6, 5, 3, 1, 1),
            (9, 9, 3, 3, 0),
        ] {
            let x = Var::from_tensor(&seeded(&[2, 3, h, w], 6, &Device::Cpu)?)?;
            let x = x.as_tensor();
            let (native, portable) = native_and_portable(|| {
                let mut values = output_and_gradients(&max_pool2d(x, k, s, p)?, &[x])?;
                values.push(max_pool2d(&x.detach(), k, s, p)?);
                Ok(values)
            })?;
            let what = format!("{h}x{w} k{k} s{s} p{p}");
            assert_all_close(&what, &native, &portable, 1e-12);
            for i in [0, 2] {
                assert_all_close(&what, &native[i..=i], &portable[i..=i], 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_of_a_tie_goes_to_the_first_maximum() -> Result<()> {
        // The native kernels' rule (the portable path splits the gradient between ties).
        with_kernels(Kernels::Native, || {
            // One 2x2 window of equal values: PyTorch sends the whole gradient to (0, 0).
            let x = candle_core::Var::from_tensor(&Tensor::ones(
                (1, 1, 2, 2),
                DType::F64,
                &Device::Cpu,
            )?)?;
            let grads = (max_pool2d(x.as_tensor(), 2, 2, 0)? * 3.0)?
                .sum_all()?
                .backward()?;
            let g = grads
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()?
                .to_vec1::<f64>()?;
            assert_eq!(g, vec![3.0, 0.0, 0.0, 0.0]);
            Ok(())
        })
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
