//! Max pooling with any kernel, stride and padding, forward and backward.
//!
//! The forward pass is separable: the maximum along each input row's windows first, then
//! down the rows, as contiguous slice loops; 2x2 stride-2 windows (VGG-16's) read each
//! output's two columns side by side, other strides read a row's columns by phase (stride 2:
//! one pass over pairs, `split_pairs`). The backward pass sends each output's gradient to its
//! window's first maximum in row-major order, as PyTorch, each plane's gradient zeroed by
//! the task that fills it (`par_chunks_zeroed`); for 2x2 stride-2 windows the first maximum
//! is found by comparisons on the window's two rows, not by a search (random data mispredicts
//! the search's every branch). A pool after a convolution whose ReLU made its input can apply
//! that ReLU's mask while it routes the gradients (`positive_only`).

use rayon::prelude::*;

use crate::slices::{par_chunks_zeroed, split_pairs};
use crate::{Float, ShapeError};

/// The name errors give.
const OP: &str = "max_pool2d";

/// Sizes of one max pooling.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
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
    /// The pooling of a (B, C, H, W) input by `kernel` x `kernel` windows every `stride`
    /// pixels, the input padded with -inf by `padding` on every side (no dilation, floor
    /// mode), checked.
    pub fn new(
        (batch, channels, h, w): (usize, usize, usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self, ShapeError> {
        if h + 2 * padding < kernel || w + 2 * padding < kernel || stride == 0 {
            return Err(ShapeError(format!(
                "{OP}: input {h}x{w} is smaller than the {kernel}x{kernel} kernel"
            )));
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
    pub fn output_dims(&self) -> (usize, usize, usize, usize) {
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
    fn argmax<T: Float>(&self, plane: &[T], i: usize, j: usize) -> Option<usize> {
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

    /// The pool of `x` (B, C, H, W), (B, C, H_out, W_out); NaN spreads, as in PyTorch.
    ///
    /// Separable: the maximum along each input row's windows first, then down the rows, as
    /// contiguous slice loops (the per-window search of [`argmax`](Self::argmax) was 2.7 ms
    /// of ResNet-50's 57 ms forward). Same values: the first maximum in row-major order wins
    /// ties (0.0 vs -0.0) and NaN spreads, as in PyTorch.
    pub fn forward<T: Float>(&self, x: &[T]) -> Vec<T> {
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

    /// The gradient of `x` from the output's `grad_out`: each output's gradient added to its
    /// window's first maximum in `x` (row-major order, as PyTorch); with `positive_only`, only
    /// where that maximum is above zero (the gradient through a ReLU that made `x` as well).
    pub fn backward<T: Float>(&self, grad_out: &[T], x: &[T], positive_only: bool) -> Vec<T> {
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
                        Some(index) if !positive_only || plane[index] > T::ZERO => {
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
    fn backward_pairs<T: Float>(&self, gx: &mut [T], plane: &[T], gy: &[T], positive_only: bool) {
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
                let live = !positive_only || best > T::ZERO;
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

/// `v` if it is larger than `best` or NaN, else `best` (the earlier of equal values stays).
#[allow(clippy::eq_op)] // v != v: NaN
fn larger<T: Float>(best: T, v: T) -> T {
    if v > best || v != v {
        v
    } else {
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
