//! Depthwise 2-D convolution (one filter per channel) as a direct loop, with its backward
//! pass.
//!
//! candle 0.11 runs a grouped convolution as one convolution per group, so a depthwise layer of
//! 1152 channels costs 1152 im2col + GEMM calls forward and as many transposed convolutions
//! backward: EfficientNet's depthwise layers ran tens of times slower than their arithmetic.
//! The loop here does the same sums, one (image, channel) plane per task.

use rayon::prelude::*;

use crate::{Float, Padding, ShapeError};

/// Sizes of one depthwise convolution.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    top: usize,
    left: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    /// The sizes of a depthwise convolution of a (B, C, H, W) input with (C, 1, k, k)
    /// filters, after checking that the padded input holds a filter.
    pub fn new(
        (batch, channels, h, w): (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        p: Padding,
    ) -> Result<Self, ShapeError> {
        if stride == 0 || h + p.top + p.bottom < k || w + p.left + p.right < k {
            return Err(ShapeError(format!(
                "depthwise_conv2d: input {h}x{w} is smaller than the {k}x{k} filter"
            )));
        }
        Ok(Self {
            batch,
            channels,
            h,
            w,
            k,
            stride,
            top: p.top,
            left: p.left,
            out_h: (h + p.top + p.bottom - k) / stride + 1,
            out_w: (w + p.left + p.right - k) / stride + 1,
        })
    }

    /// (B, C, H_out, W_out).
    pub fn output_dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.channels, self.out_h, self.out_w)
    }

    /// The input rows (or columns) a filter tap `kk` reads for outputs `0..out`: the first
    /// output index whose input is inside the image, and the end of that range.
    fn valid(&self, kk: usize, pad: usize, extent: usize, out: usize) -> (usize, usize) {
        // Input index = o * stride + kk - pad must lie in 0..extent.
        let first = pad.saturating_sub(kk).div_ceil(self.stride);
        let end = if extent + pad > kk {
            ((extent + pad - kk - 1) / self.stride + 1).min(out)
        } else {
            0
        };
        (first, end.max(first))
    }

    fn input_plane(&self) -> usize {
        self.h * self.w
    }

    fn output_plane(&self) -> usize {
        self.out_h * self.out_w
    }
}

/// The output (B, C, H_out, W_out) of `x` (B, C, H, W) and `weight` (C, 1, k, k): out[b, c] =
/// correlation of x[b, c] with filter c (one plane per task).
pub fn forward<T: Float>(g: &Geometry, x: &[T], weight: &[T]) -> Vec<T> {
    let mut out = vec![T::ZERO; g.batch * g.channels * g.output_plane()];
    out.par_chunks_mut(g.output_plane())
        .enumerate()
        .for_each(|(plane, out)| {
            let c = plane % g.channels;
            let x = &x[plane * g.input_plane()..(plane + 1) * g.input_plane()];
            let filter = &weight[c * g.k * g.k..(c + 1) * g.k * g.k];
            for ky in 0..g.k {
                let (oy0, oy1) = g.valid(ky, g.top, g.h, g.out_h);
                for kx in 0..g.k {
                    let (ox0, ox1) = g.valid(kx, g.left, g.w, g.out_w);
                    let f = filter[ky * g.k + kx];
                    for oy in oy0..oy1 {
                        let iy = oy * g.stride + ky - g.top;
                        let row = &x[iy * g.w..(iy + 1) * g.w];
                        let out_row = &mut out[oy * g.out_w..(oy + 1) * g.out_w];
                        for ox in ox0..ox1 {
                            out_row[ox] += row[ox * g.stride + kx - g.left] * f;
                        }
                    }
                }
            }
        });
    out
}

/// d loss / d x from the output's gradient: each output gradient spread back over the inputs
/// its filter read.
pub fn grad_input<T: Float>(g: &Geometry, grad_out: &[T], weight: &[T]) -> Vec<T> {
    let mut grad = vec![T::ZERO; g.batch * g.channels * g.input_plane()];
    grad.par_chunks_mut(g.input_plane())
        .enumerate()
        .for_each(|(plane, grad)| {
            let c = plane % g.channels;
            let go = &grad_out[plane * g.output_plane()..(plane + 1) * g.output_plane()];
            let filter = &weight[c * g.k * g.k..(c + 1) * g.k * g.k];
            for ky in 0..g.k {
                let (oy0, oy1) = g.valid(ky, g.top, g.h, g.out_h);
                for kx in 0..g.k {
                    let (ox0, ox1) = g.valid(kx, g.left, g.w, g.out_w);
                    let f = filter[ky * g.k + kx];
                    for oy in oy0..oy1 {
                        let iy = oy * g.stride + ky - g.top;
                        let go_row = &go[oy * g.out_w..(oy + 1) * g.out_w];
                        let row = &mut grad[iy * g.w..(iy + 1) * g.w];
                        for ox in ox0..ox1 {
                            row[ox * g.stride + kx - g.left] += go_row[ox] * f;
                        }
                    }
                }
            }
        });
    grad
}

/// d loss / d weight: per channel, the output gradient correlated with the input, summed
/// over the batch.
pub fn grad_weight<T: Float>(g: &Geometry, grad_out: &[T], x: &[T]) -> Vec<T> {
    let mut grad = vec![T::ZERO; g.channels * g.k * g.k];
    grad.par_chunks_mut(g.k * g.k)
        .enumerate()
        .for_each(|(c, grad)| {
            for b in 0..g.batch {
                let plane = b * g.channels + c;
                let go = &grad_out[plane * g.output_plane()..(plane + 1) * g.output_plane()];
                let x = &x[plane * g.input_plane()..(plane + 1) * g.input_plane()];
                for ky in 0..g.k {
                    let (oy0, oy1) = g.valid(ky, g.top, g.h, g.out_h);
                    for kx in 0..g.k {
                        let (ox0, ox1) = g.valid(kx, g.left, g.w, g.out_w);
                        let mut acc = T::ZERO;
                        for oy in oy0..oy1 {
                            let iy = oy * g.stride + ky - g.top;
                            let row = &x[iy * g.w..(iy + 1) * g.w];
                            let go_row = &go[oy * g.out_w..(oy + 1) * g.out_w];
                            for ox in ox0..ox1 {
                                acc += go_row[ox] * row[ox * g.stride + kx - g.left];
                            }
                        }
                        grad[ky * g.k + kx] += acc;
                    }
                }
            }
        });
    grad
}
