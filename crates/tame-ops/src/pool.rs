//! Max pooling with any kernel, stride and padding, and adaptive average pooling.
//!
//! [`max_pool2d`] on the CPU is a custom op with its own backward pass: candle's native pool
//! has a backward only when kernel == stride (and a wrong one with ties), and composing the
//! pool from shifted windows keeps a full-size tensor per window position for the backward.
//! The forward pass is separable: the maximum along each input row's windows first, then
//! down the rows, as contiguous slice loops; 2x2 stride-2 windows (VGG-16's) read each
//! output's two columns side by side, other strides read a row's columns by phase (stride 2:
//! one pass over pairs, `split_pairs`). The backward pass sends each output's gradient to its
//! window's first maximum in row-major order, as PyTorch, each plane's gradient zeroed by
//! the task that fills it (`par_chunks_zeroed`); for 2x2 stride-2 windows the first maximum
//! is found by comparisons on the window's two rows, not by a search (random data mispredicts
//! the search's every branch). A pool after a convolution in a fused chain (`chain.rs`)
//! applies that convolution's ReLU mask while it routes the gradients.
//!
//! [`adaptive_avg_pool2d`] is a composition of candle operations (means of narrowed cells).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, WithDType};
use candle_core::{Result, Tensor, D};
use rayon::prelude::*;

use crate::{par_chunks_zeroed, run_float_kernel, split_pairs, FloatKernel};

/// The name errors give.
const OP: &str = "max_pool2d";

/// Max pooling of a (B, C, H, W) tensor with any kernel, stride and padding (padding counts as
/// -inf, as in PyTorch's `max_pool2d`; no dilation, floor mode).
///
/// On the CPU (f32/f64) a separable loop with its own backward pass runs (3-9x faster than
/// candle's native pool on VGG-16's at batch 3): as PyTorch, each output's gradient goes to
/// the first maximum of its window in row-major order. Elsewhere candle's native pool serves when no
/// gradient is tracked and kernel == stride (its backward multiplies the gradient by
/// `ties / kernel²` where it should divide by `ties`), else the element-wise maximum of the
/// kernel's shifted, subsampled windows, whose gradient is split between tied inputs.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let pool = Pool::new(x.dims4()?, kernel, stride, padding)?;
    let (h, w, out_h, out_w) = (pool.h, pool.w, pool.out_h, pool.out_w);
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(pool);
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

/// Sizes of one max pooling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
}

impl Pool {
    /// The pooling of a (B, C, H, W) input, checked.
    pub(crate) fn new(
        (batch, channels, h, w): (usize, usize, usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if h + 2 * padding < kernel || w + 2 * padding < kernel || stride == 0 {
            candle_core::bail!("{OP}: input {h}x{w} is smaller than the {kernel}x{kernel} kernel");
        }
        Ok(Self {
            batch,
            channels,
            h,
            w,
            kernel,
            stride,
            padding,
            out_h: (h + 2 * padding - kernel) / stride + 1,
            out_w: (w + 2 * padding - kernel) / stride + 1,
        })
    }

    /// (B, C, H_out, W_out).
    pub(crate) fn output_dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.channels, self.out_h, self.out_w)
    }

    fn planes(&self) -> usize {
        self.batch * self.channels
    }

    /// The input positions `start..end` (of `0..extent`) under output index `o`'s window.
    fn window(&self, o: usize, extent: usize) -> std::ops::Range<usize> {
        let start = o * self.stride;
        start.saturating_sub(self.padding)
            ..(start + self.kernel)
                .saturating_sub(self.padding)
                .min(extent)
    }

    /// Index in its plane of the first maximum of output (i, j)'s window (NaN wins, as in
    /// PyTorch), or None for a window that lies wholly in the padding.
    fn argmax<T: WithDType>(&self, plane: &[T], i: usize, j: usize) -> Option<usize> {
        let mut best: Option<(usize, T)> = None;
        for r in self.window(i, self.h) {
            for c in self.window(j, self.w) {
                let v = plane[r * self.w + c];
                #[allow(clippy::eq_op)] // v != v: NaN
                let better = best.is_none_or(|(_, b)| v > b || v != v);
                if better {
                    best = Some((r * self.w + c, v));
                }
            }
        }
        best.map(|(index, _)| index)
    }

    /// Separable: the maximum along each input row's windows first, then down the rows, as
    /// contiguous slice loops (the per-window search of [`argmax`](Self::argmax) was 2.7 ms
    /// of ResNet-50's 57 ms forward). Same values: the first maximum in row-major order wins
    /// ties (0.0 vs -0.0) and NaN spreads, as in PyTorch.
    pub(crate) fn forward<T: WithDType>(&self, x: &[T]) -> Vec<T> {
        let neg_inf = T::from_f64(f64::NEG_INFINITY);
        let mut out = vec![neg_inf; self.planes() * self.out_h * self.out_w];
        out.par_chunks_mut(self.out_h * self.out_w)
            .zip(x.par_chunks(self.h * self.w))
            .for_each(|(out, plane)| {
                let mut row_maxima = vec![neg_inf; self.h * self.out_w];
                // VGG-16's 2x2 stride-2 windows read each output's two columns side by side
                // (3x faster than the phases below). Otherwise a row's columns by phase
                // (c % stride), so that each window offset reads a contiguous run (a strided
                // gather does not vectorise).
                let pairs = self.padding == 0 && self.kernel == 2 && self.stride == 2;
                let phase_len = self.w.div_ceil(self.stride);
                let mut phases = match pairs {
                    true => Vec::new(),
                    false => vec![neg_inf; self.stride * phase_len],
                };
                for (maxima, row) in row_maxima
                    .chunks_exact_mut(self.out_w)
                    .zip(plane.chunks_exact(self.w))
                {
                    if pairs {
                        for (m, pair) in maxima.iter_mut().zip(row.chunks_exact(2)) {
                            *m = larger(pair[0], pair[1]);
                        }
                        continue;
                    }
                    // Slots past a phase's last column stay -inf, as the padding counts.
                    if self.stride == 2 {
                        let (even, odd) = phases.split_at_mut(phase_len);
                        split_pairs(row, even, odd);
                    } else {
                        for (q, chunk) in row.chunks(self.stride).enumerate() {
                            for (p, &v) in chunk.iter().enumerate() {
                                phases[p * phase_len + q] = v;
                            }
                        }
                    }
                    for dc in 0..self.kernel {
                        // Outputs j whose window's column j * stride + dc - padding exists.
                        let first = self.padding.saturating_sub(dc).div_ceil(self.stride);
                        let Some(start) = (first * self.stride + dc).checked_sub(self.padding)
                        else {
                            continue;
                        };
                        if start >= self.w {
                            continue;
                        }
                        let (phase, offset) = (start % self.stride, start / self.stride);
                        let columns = &phases[phase * phase_len..][offset..phase_len];
                        for (m, &v) in maxima[first..].iter_mut().zip(columns) {
                            *m = larger(*m, v);
                        }
                    }
                }
                for (i, out_row) in out.chunks_exact_mut(self.out_w).enumerate() {
                    for r in self.window(i, self.h) {
                        let maxima = &row_maxima[r * self.out_w..(r + 1) * self.out_w];
                        for (o, &v) in out_row.iter_mut().zip(maxima) {
                            *o = larger(*o, v);
                        }
                    }
                }
            });
        out
    }

    /// Each output's gradient added to its window's first maximum; with `positive_only`, only
    /// where that maximum is above zero (the gradient through a ReLU that made `x` as well).
    pub(crate) fn backward<T: WithDType>(
        &self,
        grad_out: &[T],
        x: &[T],
        positive_only: bool,
    ) -> Vec<T> {
        let (in_plane, out_plane) = (self.h * self.w, self.out_h * self.out_w);
        par_chunks_zeroed(self.planes() * in_plane, in_plane, |p, gx| {
            let plane = &x[p * in_plane..][..in_plane];
            let gy = &grad_out[p * out_plane..][..out_plane];
            if self.padding == 0 && self.kernel == 2 && self.stride == 2 {
                self.backward_pairs(gx, plane, gy, positive_only);
                return;
            }
            for i in 0..self.out_h {
                for j in 0..self.out_w {
                    match self.argmax(plane, i, j) {
                        Some(index) if !positive_only || plane[index] > T::zero() => {
                            gx[index] += gy[i * self.out_w + j];
                        }
                        _ => {}
                    }
                }
            }
        })
    }
}

impl Pool {
    /// [`backward`](Self::backward) of one plane for 2x2 stride-2 windows (VGG-16's), which
    /// do not overlap: each window's two input rows are read side by side, the first maximum
    /// found by comparisons alone (the general window search was 59 ms of VGG-16's first
    /// pool at batch 8).
    fn backward_pairs<T: WithDType>(
        &self,
        gx: &mut [T],
        plane: &[T],
        gy: &[T],
        positive_only: bool,
    ) {
        let w = self.w;
        for (i, g_row) in gy.chunks_exact(self.out_w).enumerate() {
            let (top, bottom) = plane[2 * i * w..(2 * i + 2) * w].split_at(w);
            let (g_top, g_bottom) = gx[2 * i * w..(2 * i + 2) * w].split_at_mut(w);
            let windows = top
                .chunks_exact(2)
                .zip(bottom.chunks_exact(2))
                .zip(g_top.chunks_exact_mut(2).zip(g_bottom.chunks_exact_mut(2)));
            for (((t, b), (gt, gb)), &g) in windows.zip(g_row) {
                // Row-major order: t[0], t[1], b[0], b[1]; the earlier of equal values
                // stays, NaN wins ([`argmax`](Self::argmax)'s rule).
                let mut at = 0;
                let mut best = t[0];
                for (k, v) in [(1, t[1]), (2, b[0]), (3, b[1])] {
                    #[allow(clippy::eq_op)] // v != v: NaN
                    if v > best || v != v {
                        at = k;
                        best = v;
                    }
                }
                let live = !positive_only || best > T::zero();
                if !live {
                    continue;
                }
                match at {
                    0 => gt[0] = g,
                    1 => gt[1] = g,
                    2 => gb[0] = g,
                    _ => gb[1] = g,
                }
            }
        }
    }
}

impl FloatKernel for Pool {
    fn run<T: WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
        self.forward(operands[0])
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "tame-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(storage, layout)], OP)?;
        Ok((out, Shape::from(self.output_dims())))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad_out: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_out
                .contiguous()?
                .apply_op2_no_bwd(x, &PoolGrad(*self))?,
        ))
    }
}

/// `v` if it is larger than `best` or NaN, else `best` (the earlier of equal values stays).
#[allow(clippy::eq_op)] // v != v: NaN
fn larger<T: WithDType>(best: T, v: T) -> T {
    if v > best || v != v {
        v
    } else {
        best
    }
}

/// (grad_out, x) -> grad_x of [`Pool`].
struct PoolGrad(Pool);

impl FloatKernel for PoolGrad {
    fn run<T: WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
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

    /// The separable forward picks, bit for bit, the value at each window's first maximum
    /// (the element the backward pass sends the gradient to), with ties, signed zeros, NaN
    /// and windows partly or wholly in the padding.
    #[test]
    fn separable_forward_equals_each_windows_first_maximum() {
        let specials = [0.0, -0.0, 1.0, -1.0, f64::NAN, f64::NEG_INFINITY, 2.0];
        for (h, w, k, s, p) in [
            (9, 8, 3, 2, 1),
            (7, 9, 3, 2, 1),
            (5, 7, 2, 1, 1),
            (6, 6, 3, 3, 2),
            (4, 4, 2, 2, 0),
        ] {
            let pool = Pool {
                batch: 1,
                channels: 2,
                h,
                w,
                kernel: k,
                stride: s,
                padding: p,
                out_h: (h + 2 * p - k) / s + 1,
                out_w: (w + 2 * p - k) / s + 1,
            };
            // Runs of one value; then zeros of both signs alone (ties in every window).
            let patterns: [&dyn Fn(usize) -> f64; 2] = [&|i| specials[(i / 3) % 7], &|i| {
                specials[(i * 5 + i / 7) % 2]
            }];
            for pattern in patterns {
                let x: Vec<f64> = (0..2 * h * w).map(pattern).collect();
                let got = pool.forward(&x);
                for (c, plane) in x.chunks(h * w).enumerate() {
                    for i in 0..pool.out_h {
                        for j in 0..pool.out_w {
                            let want = pool
                                .argmax(plane, i, j)
                                .map_or(f64::NEG_INFINITY, |index| plane[index]);
                            let at = (c * pool.out_h + i) * pool.out_w + j;
                            let case = format!("{h}x{w} k{k} s{s} p{p}");
                            assert_eq!(got[at].to_bits(), want.to_bits(), "{case}");
                        }
                    }
                }
            }
        }
    }

    /// The 2x2 stride-2 backward pass against the general one (each window's first
    /// maximum by [`Pool::argmax`]), with ties, signed zeros, NaN, odd sizes that leave a row
    /// and a column out, and the ReLU mask.
    #[test]
    fn pairs_backward_equals_the_window_search() {
        let specials = [0.0, -0.0, 1.0, -1.0, f64::NAN, f64::NEG_INFINITY, 2.0];
        for (h, w) in [(4, 4), (5, 7), (6, 3)] {
            let pool = Pool::new((1, 2, h, w), 2, 2, 0).unwrap();
            let patterns: [&dyn Fn(usize) -> f64; 3] = [
                &|i| specials[(i / 3) % 7],
                &|i| specials[(i * 5 + i / 7) % 2],
                &|i| specials[(i * 3 + i / 5) % 7],
            ];
            for (pattern, positive_only) in patterns.iter().zip([false, true, true]) {
                let x: Vec<f64> = (0..2 * h * w).map(pattern).collect();
                let g: Vec<f64> = (0..2 * pool.out_h * pool.out_w)
                    .map(|i| 1.0 + i as f64)
                    .collect();
                let got = pool.backward(&g, &x, positive_only);
                let mut want = vec![0.0; x.len()];
                for (c, plane) in x.chunks(h * w).enumerate() {
                    for i in 0..pool.out_h {
                        for j in 0..pool.out_w {
                            let index = pool.argmax(plane, i, j).unwrap();
                            if !positive_only || plane[index] > 0.0 {
                                want[c * h * w + index] += g[(c * pool.out_h + i) * pool.out_w + j];
                            }
                        }
                    }
                }
                assert_eq!(got, want, "{h}x{w}, positive only {positive_only}");
            }
        }
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

    #[test]
    fn gradient_of_a_tie_goes_to_the_first_maximum() -> Result<()> {
        // One 2x2 window of equal values: PyTorch sends the whole gradient to (0, 0).
        let x =
            candle_core::Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F64, &Device::Cpu)?)?;
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
