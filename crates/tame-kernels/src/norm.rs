//! The passes of a batch norm over (B, C, H, W) data, forward and backward, optionally
//! followed in the same pass by a residual addition and a ReLU (ResNet's `relu(bn(x))` and
//! `relu(bn(x) + identity)`), and the per-channel reductions they need.
//!
//! The output is `x * a[c] + b[c]` per channel and the gradients have closed forms: each is
//! a single loop, the epilogue included; the weight's and bias's gradients are per-channel
//! sums that the train-mode input gradient needs anyway. The passes write every value of
//! their chunks without zeroing them first (`par_chunks_written`). The per-channel gradient
//! sums Σg' and Σg'·(x − mean) run over each plane in sixteen lanes of the element type,
//! added up in f64, one loop per sum: with both in one loop LLVM paired each lane's two sums
//! into a vector instead of vectorising across the lanes, ~5x slower on a plane in cache.

use rayon::prelude::*;

use crate::slices::par_chunks_written;
use crate::Float;

/// Lanes of independent partial sums: a single running sum is one dependent addition per
/// value (latency-bound); eight let the additions overlap and vectorise.
const LANES: usize = 8;

/// The sum of `f(v)` over `values`, accumulated in f64.
fn sum_f64<T: Copy>(values: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut lanes = [0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// `g`, or zero where a fused ReLU clamped the output `y` (no gradient where y = 0, as
/// PyTorch's).
#[inline(always)]
fn live<T: Float, const RELU: bool>(g: T, y: T) -> T {
    if !RELU || y > T::ZERO {
        g
    } else {
        T::ZERO
    }
}

/// Σ g' and Σ g'·(x − m) over one plane (g' = [`live`] g), in sixteen lanes of T (one
/// AVX-512 register of f32) added up in f64. One loop per sum: with both in one loop, LLVM
/// pairs each lane's two sums into a vector instead of vectorising across the lanes, and
/// runs ~5x slower on a plane in cache.
fn plane_sums<T: Float, const RELU: bool>(g: &[T], x: &[T], y: &[T], m: T) -> (f64, f64) {
    const WIDTH: usize = 16;
    let body = g.len() / WIDTH * WIDTH;
    let (g_body, x_body, y_body) = (&g[..body], &x[..body], &y[..body]);
    let mut sg = [T::ZERO; WIDTH];
    for (gc, yc) in g_body.chunks_exact(WIDTH).zip(y_body.chunks_exact(WIDTH)) {
        for i in 0..WIDTH {
            sg[i] += live::<T, RELU>(gc[i], yc[i]);
        }
    }
    let mut sgx = [T::ZERO; WIDTH];
    let chunks = g_body
        .chunks_exact(WIDTH)
        .zip(x_body.chunks_exact(WIDTH))
        .zip(y_body.chunks_exact(WIDTH));
    for ((gc, xc), yc) in chunks {
        for i in 0..WIDTH {
            sgx[i] += live::<T, RELU>(gc[i], yc[i]) * (xc[i] - m);
        }
    }
    let mut total_g: f64 = sg.iter().map(|v| v.to_f64()).sum();
    let mut total_gx: f64 = sgx.iter().map(|v| v.to_f64()).sum();
    for ((&gv, &xv), &yv) in g[body..].iter().zip(&x[body..]).zip(&y[body..]) {
        let gv = live::<T, RELU>(gv, yv);
        total_g += gv.to_f64();
        total_gx += (gv * (xv - m)).to_f64();
    }
    (total_g, total_gx)
}

/// Σ f(v) over the values of channel `ch` of a contiguous (B, C, H, W) buffer with `channels`
/// channels of `plane` values each.
fn channel_total<T: Copy>(
    x: &[T],
    channels: usize,
    plane: usize,
    ch: usize,
    f: impl Fn(T) -> f64,
) -> f64 {
    let planes = x.chunks(plane).skip(ch).step_by(channels);
    planes.map(|p| sum_f64(p, &f)).sum()
}

/// The per-channel sums of a contiguous (B, C, H, W) buffer `t` with `channels` channels of
/// `plane` values each, (C), accumulated in f64: a bias's gradient.
pub fn channel_sums<T: Float>(t: &[T], channels: usize, plane: usize) -> Vec<T> {
    (0..channels)
        .into_par_iter()
        .map(|ch| T::from_f64(channel_total(t, channels, plane, ch, |v| v.to_f64())))
        .collect()
}

/// Each channel's mean and biased variance of a contiguous (B, C, H, W) buffer `x` with
/// `channels` channels of `plane` values each, accumulated in f64: (2, C), the means first.
pub fn moments<T: Float>(x: &[T], channels: usize, plane: usize) -> Vec<T> {
    let c = channels;
    let per_channel: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let count = (x.len() / c) as f64;
            let mean = channel_total(x, c, plane, ch, |v| v.to_f64()) / count;
            let sq = channel_total(x, c, plane, ch, |v| (v.to_f64() - mean).powi(2));
            (mean, sq / count)
        })
        .collect();
    let means = per_channel.iter().map(|m| T::from_f64(m.0));
    let vars = per_channel.iter().map(|m| T::from_f64(m.1));
    means.chain(vars).collect()
}

/// y = x * scale[c] + shift[c] (+ residual) (then ReLU), the batch norm's pass with its
/// per-channel factors folded; backward as batch norm in eval mode (`train` false: the
/// statistics are constants) or in train mode (they depend on x).
#[derive(Clone)]
pub struct ChannelAffine {
    /// Per channel, the factor of x: weight · inv_std.
    pub scale: Vec<f64>,
    /// Per channel, the term added: bias − mean · scale.
    pub shift: Vec<f64>,
    /// H x W.
    pub plane: usize,
    /// The statistics it normalises with: the batch's in train mode, the running ones in
    /// eval mode.
    pub mean: Vec<f64>,
    /// Per channel, 1 / sqrt(var + eps) of those statistics.
    pub inv_std: Vec<f64>,
    /// The statistics are the batch's own, so the input gradient goes through them too.
    pub train: bool,
    /// A ReLU follows (after the residual, when there is one).
    pub relu: bool,
}

impl ChannelAffine {
    /// y = relu?(x · scale[c] + shift[c] + residual) of contiguous (B, C, H, W) data.
    pub fn forward<T: Float>(&self, x: &[T], residual: Option<&[T]>) -> Vec<T> {
        let plane = self.plane;
        let c = self.scale.len();
        let relu = self.relu;
        let out = move |v: T| if relu && v < T::ZERO { T::ZERO } else { v };
        // SAFETY: each loop writes every value of its chunk (x's chunk is as long).
        unsafe {
            par_chunks_written(x.len(), plane, |i, y| {
                let x = &x[i * plane..][..y.len()];
                let (a, b) = (
                    T::from_f64(self.scale[i % c]),
                    T::from_f64(self.shift[i % c]),
                );
                match residual {
                    Some(r) => {
                        let r = &r[i * plane..][..y.len()];
                        for ((y, &x), &r) in y.iter_mut().zip(x).zip(r) {
                            y.write(out(x * a + b + r));
                        }
                    }
                    None => {
                        for (y, &x) in y.iter_mut().zip(x) {
                            y.write(out(x * a + b));
                        }
                    }
                }
            })
        }
    }

    /// Per channel, Σ g' and Σ g'·x̂ with g' = g zeroed where the ReLU clamped (y = 0) and
    /// x̂ = (x − mean)·inv_std: the gradients of the bias and of the weight, and what the
    /// train-mode input gradient needs. (2, C): the weight's row first.
    pub fn param_grads<T: Float>(&self, g: &[T], x: &[T], y: &[T]) -> Vec<T> {
        // The ReLU as a constant: each variant's loops compile to branch-free vector code.
        let sums = if self.relu {
            Self::channel_sums::<T, true>
        } else {
            Self::channel_sums::<T, false>
        };
        let c = self.scale.len();
        let (sg, sgx): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| sums(self, ch, g, x, y))
            .unzip();
        let weight = sgx
            .iter()
            .zip(&self.inv_std)
            .map(|(v, s)| T::from_f64(v * s));
        weight.chain(sg.iter().map(|&v| T::from_f64(v))).collect()
    }

    /// Σ g' and Σ g'·(x − mean) over channel `ch`'s planes.
    fn channel_sums<T: Float, const RELU: bool>(
        &self,
        ch: usize,
        g: &[T],
        x: &[T],
        y: &[T],
    ) -> (f64, f64) {
        let (plane, c) = (self.plane, self.scale.len());
        let m = T::from_f64(self.mean[ch]);
        let (mut sg, mut sgx) = (0f64, 0f64);
        for i in (ch..g.len() / plane).step_by(c) {
            let at = i * plane..(i + 1) * plane;
            let (a, b) = plane_sums::<T, RELU>(&g[at.clone()], &x[at.clone()], &y[at], m);
            sg += a;
            sgx += b;
        }
        (sg, sgx)
    }

    /// The input gradient from the output's gradient `g`, with `g` zeroed where the ReLU
    /// clamped (y = 0) when there is one. Eval: g·scale. Train: scale · (g − mean(g) − x̂ ·
    /// mean(g·x̂)), the means over the channel's B·H·W values, from `sums` (the
    /// [`param_grads`](Self::param_grads) of the same g).
    pub fn backward<T: Float>(&self, g: &[T], x: &[T], y: &[T], sums: Option<&[T]>) -> Vec<T> {
        if self.relu {
            self.backward_with::<T, true>(g, x, y, sums)
        } else {
            self.backward_with::<T, false>(g, x, y, sums)
        }
    }

    fn backward_with<T: Float, const RELU: bool>(
        &self,
        g: &[T],
        x: &[T],
        y: &[T],
        sums: Option<&[T]>,
    ) -> Vec<T> {
        let plane = self.plane;
        let c = self.scale.len();
        let count = (g.len() / c) as f64;
        // Per channel: (mean(g'), mean(g'·x̂)), used in train mode only.
        let means: Vec<(f64, f64)> = match sums {
            Some(s) if self.train => (0..c)
                .map(|ch| (s[c + ch].to_f64() / count, s[ch].to_f64() / count))
                .collect(),
            _ => vec![(0.0, 0.0); c],
        };
        // SAFETY: each loop writes every value of its chunk (g's, x's and y's are as long).
        unsafe {
            par_chunks_written(g.len(), plane, |i, dx| {
                let [g, x, y] = [g, x, y].map(|t| &t[i * plane..][..dx.len()]);
                let ch = i % c;
                let a = self.scale[ch];
                if !self.train {
                    let a = T::from_f64(a);
                    for ((d, &gv), &yv) in dx.iter_mut().zip(g).zip(y) {
                        d.write(live::<T, RELU>(gv, yv) * a);
                    }
                    return;
                }
                // a·(g − mean_g − (x − mean)·inv_std·mean_gx), the per-channel factors
                // folded first.
                let (s, (mg, mgx)) = (self.inv_std[ch], means[ch]);
                let m = T::from_f64(self.mean[ch]);
                let (k0, k1, k2) = (
                    T::from_f64(a),
                    T::from_f64(a * mg),
                    T::from_f64(a * s * mgx),
                );
                for (((d, &gv), &xv), &yv) in dx.iter_mut().zip(g).zip(x).zip(y) {
                    d.write(k0 * live::<T, RELU>(gv, yv) - k1 - (xv - m) * k2);
                }
            })
        }
    }
}
