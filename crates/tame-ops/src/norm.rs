//! Batch normalisation of (B, C, H, W) tensors with frozen scale and shift, as one pass over
//! the data forward and backward, optionally followed in the same pass by a residual addition
//! and a ReLU (ResNet's `relu(bn(x))` and `relu(bn(x) + identity)`).
//!
//! candle_nn's batch norm is a chain of broadcast operations (in train mode also a transpose
//! to channels-first and back), each a full-size tensor forward and again backward; candle's
//! ReLU backward is four more (a comparison with zeros, a cast, a product) and every node of
//! the graph costs its gradient a zero-filled tensor and an addition. With the weight and bias
//! frozen, as in a backbone, the output is `x * a[c] + b[c]` per channel and the input
//! gradient has a closed form; here both are single loops, the epilogue included.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape};
use candle_core::{Tensor, WithDType, D};
use rayon::prelude::*;

use crate::{clamp_negatives, run_float_kernel, FloatKernel, ReluMask};

/// The name errors give.
const OP: &str = "batch_norm";

/// What the pass of a batch norm does to its output after normalising: add `residual` (a
/// tensor of the input's shape), then clamp negatives when `relu`. The default does neither.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

impl<'a> Epilogue<'a> {
    /// `relu(y)`.
    pub fn relu() -> Self {
        Self {
            residual: None,
            relu: true,
        }
    }

    /// `relu(y + residual)`.
    pub fn add_relu(residual: &'a Tensor) -> Self {
        Self {
            residual: Some(residual),
            relu: true,
        }
    }

    /// The epilogue with candle's operations, for the paths that compose them.
    fn compose(&self, y: Tensor) -> Result<Tensor> {
        let y = match self.residual {
            Some(r) => (y + r)?,
            None => y,
        };
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// PyTorch's `batch_norm` in eval mode: `(x - mean) / sqrt(var + eps) * weight + bias` per
/// channel, with the running statistics, then `then`. Gradients flow to `x` and the
/// residual only (the other operands must not be tracked on the fast path; if any is,
/// candle's operations are used).
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    then: Epilogue,
) -> Result<Tensor> {
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    let scale = (weight * &inv_std)?;
    let shift = (bias - (mean * &scale)?)?;
    if !fast_path(x, &[weight, bias, mean, var], &then)? {
        let c = (1, (), 1, 1);
        let y = x
            .broadcast_mul(&scale.reshape(c)?)?
            .broadcast_add(&shift.reshape(c)?)?;
        return then.compose(y);
    }
    let (_, _, h, w) = x.dims4()?;
    let op = ChannelAffine {
        scale: values(&scale)?,
        shift: values(&shift)?,
        plane: h * w,
        train: None,
        relu: then.relu,
    };
    op.apply(x, then.residual)
}

/// What a train-mode batch norm measured: the per-channel mean and biased variance of its
/// input, and the count n they were taken over (B·H·W; PyTorch updates the running variance
/// with the unbiased `var · n / (n - 1)`).
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub count: usize,
}

/// PyTorch's `batch_norm` in train mode: normalised with the batch's own statistics, which
/// are returned for the running-statistics update, then `then`. The gradient to `x`
/// includes the statistics' dependence on `x`; `weight` and `bias` must not be tracked on
/// the fast path.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    then: Epilogue,
) -> Result<(Tensor, BatchStats)> {
    let (b, c, h, w) = x.dims4()?;
    let count = b * h * w;
    if count < 2 {
        candle_core::bail!("{OP}: train mode needs more than one value per channel");
    }
    if !fast_path(x, &[weight, bias], &then)? {
        let mean = x
            .mean_keepdim(D::Minus1)?
            .mean_keepdim(D::Minus2)?
            .mean_keepdim(0)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred
            .sqr()?
            .mean_keepdim(D::Minus1)?
            .mean_keepdim(D::Minus2)?
            .mean_keepdim(0)?;
        let shape = (1, c, 1, 1);
        let y = centred
            .broadcast_div(&(&var + eps)?.sqrt()?)?
            .broadcast_mul(&weight.reshape(shape)?)?
            .broadcast_add(&bias.reshape(shape)?)?;
        let stats = BatchStats {
            mean: mean.flatten_all()?.detach(),
            var: var.flatten_all()?.detach(),
            count,
        };
        return Ok((then.compose(y)?, stats));
    }
    let x = x.contiguous()?;
    let moments = x.apply_op1_no_bwd(&Moments {
        channels: c,
        plane: h * w,
    })?;
    let mean = moments.get(0)?;
    let var = moments.get(1)?;
    let inv_std = (&var + eps)?.sqrt()?.recip()?;
    let scale = (weight * &inv_std)?;
    let shift = (bias - (&mean * &scale)?)?;
    let op = ChannelAffine {
        scale: values(&scale)?,
        shift: values(&shift)?,
        plane: h * w,
        train: Some(TrainTerms {
            mean: values(&mean)?,
            inv_std: values(&inv_std)?,
        }),
        relu: then.relu,
    };
    let y = op.apply(&x, then.residual)?;
    Ok((y, BatchStats { mean, var, count }))
}

/// The custom ops run f32/f64 on the CPU with frozen per-channel operands; a residual must
/// match the input.
fn fast_path(x: &Tensor, frozen: &[&Tensor], then: &Epilogue) -> Result<bool> {
    if let Some(r) = then.residual {
        if r.dims() != x.dims() || r.dtype() != x.dtype() {
            candle_core::bail!(
                "{OP}: residual {:?} {:?} for an input {:?} {:?}",
                r.dims(),
                r.dtype(),
                x.dims(),
                x.dtype()
            );
        }
    }
    Ok(x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && then.residual.is_none_or(|r| r.device().is_cpu())
        && frozen.iter().all(|t| !t.track_op()))
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

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
fn live<T: WithDType, const RELU: bool>(g: T, y: T) -> T {
    if !RELU || y > T::zero() {
        g
    } else {
        T::zero()
    }
}

/// Σ g' and Σ g'·(x − m) over one plane (g' = [`live`] g), in sixteen lanes of T (one
/// AVX-512 register of f32) added up in f64.
fn plane_sums<T: WithDType, const RELU: bool>(g: &[T], x: &[T], y: &[T], m: T) -> (f64, f64) {
    const WIDTH: usize = 16;
    let (mut sg, mut sgx) = ([T::zero(); WIDTH], [T::zero(); WIDTH]);
    let body = g.len() / WIDTH * WIDTH;
    let chunks = g[..body]
        .chunks_exact(WIDTH)
        .zip(x[..body].chunks_exact(WIDTH))
        .zip(y[..body].chunks_exact(WIDTH));
    for ((gc, xc), yc) in chunks {
        for i in 0..WIDTH {
            let gv = live::<T, RELU>(gc[i], yc[i]);
            sg[i] += gv;
            sgx[i] += gv * (xc[i] - m);
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

/// (B, C, H, W) -> (2, C): each channel's mean and biased variance, accumulated in f64.
struct Moments {
    channels: usize,
    /// H x W.
    plane: usize,
}

impl FloatKernel for Moments {
    fn run<T: WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
        let (x, c, plane) = (operands[0], self.channels, self.plane);
        let per_channel: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = x.chunks(plane).skip(ch).step_by(c);
                let count = (x.len() / c) as f64;
                let sum: f64 = planes.clone().map(|p| sum_f64(p, |v| v.to_f64())).sum();
                let mean = sum / count;
                let sq: f64 = planes
                    .map(|p| sum_f64(p, |v| (v.to_f64() - mean).powi(2)))
                    .sum();
                (mean, sq / count)
            })
            .collect();
        let means = per_channel.iter().map(|m| T::from_f64(m.0));
        let vars = per_channel.iter().map(|m| T::from_f64(m.1));
        means.chain(vars).collect()
    }
}

impl CustomOp1 for Moments {
    fn name(&self) -> &'static str {
        "tame-batch-moments"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(storage, layout)], OP)?;
        Ok((out, Shape::from((2, self.channels))))
    }
}

/// The batch statistics a train-mode gradient needs.
#[derive(Clone)]
struct TrainTerms {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
}

/// y = x * scale[c] + shift[c] (+ residual) (then ReLU); backward as batch norm in eval mode
/// (`train` None) or in train mode.
#[derive(Clone)]
struct ChannelAffine {
    scale: Vec<f64>,
    shift: Vec<f64>,
    /// H x W.
    plane: usize,
    train: Option<TrainTerms>,
    relu: bool,
}

impl FloatKernel for ChannelAffine {
    fn run<T: WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
        self.forward(operands[0], operands.get(1).copied())
    }
}

impl ChannelAffine {
    /// The op on `x` (and `residual`), as a node of the graph.
    fn apply(self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let x = x.contiguous()?;
        match residual {
            Some(r) => x.apply_op2(&r.contiguous()?, self),
            None => x.apply_op1(self),
        }
    }

    fn forward<T: WithDType>(&self, x: &[T], residual: Option<&[T]>) -> Vec<T> {
        let plane = self.plane;
        let c = self.scale.len();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(i, (y, x))| {
                let (a, b) = (
                    T::from_f64(self.scale[i % c]),
                    T::from_f64(self.shift[i % c]),
                );
                match residual {
                    Some(r) => {
                        let r = &r[i * plane..][..plane];
                        for ((y, &x), &r) in y.iter_mut().zip(x).zip(r) {
                            *y = x * a + b + r;
                        }
                    }
                    None => {
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = x * a + b;
                        }
                    }
                }
                if self.relu {
                    clamp_negatives(y);
                }
            });
        y
    }

    /// The input gradient from the output's gradient `g`, with `g` zeroed where the ReLU
    /// clamped (y = 0) when there is one. Eval: g·scale. Train (x̂ = (x − mean)·inv_std):
    /// scale · (g − mean(g) − x̂ · mean(g·x̂)), the means over the channel's B·H·W values.
    fn backward<T: WithDType>(&self, g: &[T], x: &[T], y: &[T]) -> Vec<T> {
        // The ReLU as a constant: each variant's loops compile to branch-free vector code.
        if self.relu {
            self.backward_with::<T, true>(g, x, y)
        } else {
            self.backward_with::<T, false>(g, x, y)
        }
    }

    fn backward_with<T: WithDType, const RELU: bool>(&self, g: &[T], x: &[T], y: &[T]) -> Vec<T> {
        let plane = self.plane;
        let c = self.scale.len();
        let (mean_g, mean_gx): (Vec<f64>, Vec<f64>) = match &self.train {
            None => (vec![0.0; c], vec![0.0; c]),
            Some(t) => {
                let count = (g.len() / c) as f64;
                (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let m = T::from_f64(t.mean[ch]);
                        let (mut sg, mut sgx) = (0f64, 0f64);
                        for i in (ch..g.len() / plane).step_by(c) {
                            let at = i * plane..(i + 1) * plane;
                            let (gp, xp, yp) = (&g[at.clone()], &x[at.clone()], &y[at]);
                            let (a, b) = plane_sums::<T, RELU>(gp, xp, yp, m);
                            sg += a;
                            sgx += b;
                        }
                        (sg / count, sgx * t.inv_std[ch] / count)
                    })
                    .unzip()
            }
        };
        let mut dx = vec![T::zero(); g.len()];
        dx.par_chunks_mut(plane)
            .zip(g.par_chunks(plane))
            .zip(x.par_chunks(plane).zip(y.par_chunks(plane)))
            .enumerate()
            .for_each(|(i, ((dx, g), (x, y)))| {
                let ch = i % c;
                let a = self.scale[ch];
                match &self.train {
                    None => {
                        let a = T::from_f64(a);
                        for ((d, &gv), &yv) in dx.iter_mut().zip(g).zip(y) {
                            *d = live::<T, RELU>(gv, yv) * a;
                        }
                    }
                    Some(t) => {
                        // a·(g − mean_g − (x − mean)·inv_std·mean_gx), the per-channel
                        // factors folded first.
                        let (s, mg, mgx) = (t.inv_std[ch], mean_g[ch], mean_gx[ch]);
                        let m = T::from_f64(t.mean[ch]);
                        let (k0, k1, k2) = (
                            T::from_f64(a),
                            T::from_f64(a * mg),
                            T::from_f64(a * s * mgx),
                        );
                        for (((d, &gv), &xv), &yv) in dx.iter_mut().zip(g).zip(x).zip(y) {
                            *d = k0 * live::<T, RELU>(gv, yv) - k1 - (xv - m) * k2;
                        }
                    }
                }
            });
        dx
    }

    /// grad_x from (x, y, grad_y).
    fn input_grad(&self, x: &Tensor, y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        grad_y
            .contiguous()?
            .apply_op3_no_bwd(x, y, &ChannelAffineGrad(self.clone()))
    }
}

impl CustomOp1 for ChannelAffine {
    fn name(&self) -> &'static str {
        "tame-batch-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(storage, layout)], OP)?;
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.input_grad(x, y, grad_y)?))
    }
}

impl CustomOp2 for ChannelAffine {
    fn name(&self) -> &'static str {
        "tame-batch-norm-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2)], OP)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_x = x
            .track_op()
            .then(|| self.input_grad(x, y, grad_y))
            .transpose()?;
        let grad_residual = match (residual.track_op(), self.relu) {
            (false, _) => None,
            (true, true) => Some(grad_y.contiguous()?.apply_op2_no_bwd(y, &ReluMask)?),
            (true, false) => Some(grad_y.clone()),
        };
        Ok((grad_x, grad_residual))
    }
}

/// (grad_y, x, y) -> grad_x of [`ChannelAffine`].
struct ChannelAffineGrad(ChannelAffine);

impl FloatKernel for ChannelAffineGrad {
    fn run<T: WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
        self.0.backward(operands[0], operands[1], operands[2])
    }
}

impl CustomOp3 for ChannelAffineGrad {
    fn name(&self) -> &'static str {
        "tame-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2), (s3, l3)], OP)?;
        Ok((out, l2.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::gradcheck::{assert_gradients_match, max_abs_diff, seeded};

    /// Per-channel operands: weight, bias, running mean, positive running variance.
    fn operands(c: usize) -> Result<[Tensor; 4]> {
        let dev = Device::Cpu;
        Ok([
            (seeded(&[c], 1, &dev)? + 1.5)?,
            seeded(&[c], 2, &dev)?,
            seeded(&[c], 3, &dev)?,
            (seeded(&[c], 4, &dev)? + 1.2)?,
        ])
    }

    /// candle_nn's batch norm on the same operands.
    fn reference(c: usize) -> Result<candle_nn::BatchNorm> {
        let [w, b, m, v] = operands(c)?;
        candle_nn::BatchNorm::new(c, m, v, w, b, 1e-5)
    }

    #[test]
    fn eval_mode_equals_candle_nn() -> Result<()> {
        use candle_core::ModuleT;
        let x = seeded(&[2, 3, 4, 5], 7, &Device::Cpu)?;
        let [w, b, m, v] = operands(3)?;
        let ours = batch_norm_eval(&x, &w, &b, &m, &v, 1e-5, Epilogue::default())?;
        let theirs = reference(3)?.forward_t(&x, false)?;
        assert!(max_abs_diff(&ours, &theirs) < 1e-12);
        assert_gradients_match(&x, |x| {
            batch_norm_eval(x, &w, &b, &m, &v, 1e-5, Epilogue::default())
        })?;
        Ok(())
    }

    #[test]
    fn train_mode_equals_candle_nn_and_returns_the_batch_statistics() -> Result<()> {
        use candle_core::ModuleT;
        let x = seeded(&[2, 3, 4, 5], 8, &Device::Cpu)?;
        let [w, b, ..] = operands(3)?;
        let (ours, stats) = batch_norm_train(&x, &w, &b, 1e-5, Epilogue::default())?;
        let bn = reference(3)?;
        let theirs = bn.forward_t(&x, true)?;
        assert!(max_abs_diff(&ours, &theirs) < 1e-12);
        assert_eq!(stats.count, 2 * 4 * 5);
        // candle_nn's running statistics after one update with momentum 0.1.
        let [_, _, m, v] = operands(3)?;
        let n = stats.count as f64;
        let mean = ((&m * 0.9)? + (&stats.mean * 0.1)?)?;
        let var = ((&v * 0.9)? + (&stats.var * (0.1 * n / (n - 1.0)))?)?;
        assert!(max_abs_diff(&mean, bn.running_mean()) < 1e-12);
        assert!(max_abs_diff(&var, bn.running_var()) < 1e-12);
        Ok(())
    }

    #[test]
    fn train_mode_gradient_matches_finite_differences_and_candle_nn() -> Result<()> {
        use candle_core::ModuleT;
        let x = seeded(&[3, 2, 3, 4], 9, &Device::Cpu)?;
        let [w, b, ..] = operands(2)?;
        assert_gradients_match(&x, |x| {
            Ok(batch_norm_train(x, &w, &b, 1e-5, Epilogue::default())?.0)
        })?;

        let r = seeded(&[3, 2, 3, 4], 10, &Device::Cpu)?;
        let xv = Var::from_tensor(&x)?;
        let ours = (batch_norm_train(xv.as_tensor(), &w, &b, 1e-5, Epilogue::default())?.0 * &r)?
            .sum_all()?
            .backward()?;
        let bn = reference(2)?;
        let theirs = (bn.forward_t(xv.as_tensor(), true)? * &r)?
            .sum_all()?
            .backward()?;
        let (a, b) = (ours.get(&xv).unwrap(), theirs.get(&xv).unwrap());
        assert!(max_abs_diff(a, b) < 1e-10);
        Ok(())
    }

    #[test]
    fn tracked_operands_take_candles_operations() -> Result<()> {
        // A trainable weight: the result and its gradient still come out right.
        let x = seeded(&[2, 2, 3, 3], 11, &Device::Cpu)?;
        let [w, b, ..] = operands(2)?;
        let wv = Var::from_tensor(&w)?;
        let (y, _) = batch_norm_train(&x, wv.as_tensor(), &b, 1e-5, Epilogue::default())?;
        let (fast, _) = batch_norm_train(&x, &w, &b, 1e-5, Epilogue::default())?;
        assert!(max_abs_diff(&y, &fast) < 1e-12);
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(&wv).is_some());
        Ok(())
    }

    /// Every epilogue on a tensor whose normalised values straddle zero.
    fn epilogues(residual: &Tensor) -> [Epilogue<'_>; 3] {
        [
            Epilogue::relu(),
            Epilogue::add_relu(residual),
            Epilogue {
                residual: Some(residual),
                relu: false,
            },
        ]
    }

    #[test]
    fn fused_epilogues_equal_the_separate_ops_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[2, 3, 4, 5], 12, &dev)?;
        let r = seeded(&[2, 3, 4, 5], 13, &dev)?;
        let [w, b, m, v] = operands(3)?;
        // The fused op against the same batch norm followed by candle's add and ReLU, for
        // the output and the gradients of both inputs; train and eval mode.
        for train in [false, true] {
            let norm = |x: &Tensor, then: Epilogue| -> Result<Tensor> {
                if train {
                    Ok(batch_norm_train(x, &w, &b, 1e-5, then)?.0)
                } else {
                    batch_norm_eval(x, &w, &b, &m, &v, 1e-5, then)
                }
            };
            let (xv, rv) = (Var::from_tensor(&x)?, Var::from_tensor(&r)?);
            for then in epilogues(rv.as_tensor()) {
                let fused = norm(xv.as_tensor(), then)?;
                let separate = then.compose(norm(xv.as_tensor(), Epilogue::default())?)?;
                assert!(max_abs_diff(&fused, &separate) < 1e-12);
                let weights = seeded(x.dims(), 14, &dev)?;
                let g1 = (fused * &weights)?.sum_all()?.backward()?;
                let g2 = (separate * &weights)?.sum_all()?.backward()?;
                let inputs = if then.residual.is_some() { 2 } else { 1 };
                for var in [&xv, &rv].into_iter().take(inputs) {
                    let (a, b) = (g1.get(var).unwrap(), g2.get(var).unwrap());
                    assert!(max_abs_diff(a, b) < 1e-12, "train {train}, {then:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn fused_epilogue_gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[2, 2, 3, 4], 15, &dev)?;
        let r = seeded(&[2, 2, 3, 4], 16, &dev)?;
        let [w, b, m, v] = operands(2)?;
        for then in epilogues(&r) {
            assert_gradients_match(&x, |x| batch_norm_eval(x, &w, &b, &m, &v, 1e-5, then))?;
            assert_gradients_match(&x, |x| Ok(batch_norm_train(x, &w, &b, 1e-5, then)?.0))?;
        }
        // With respect to the residual.
        let xe = x.clone();
        assert_gradients_match(&r, |r| {
            batch_norm_eval(&xe, &w, &b, &m, &v, 1e-5, Epilogue::add_relu(r))
        })?;
        Ok(())
    }

    #[test]
    fn a_residual_of_another_shape_is_refused() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[1, 2, 3, 3], 17, &dev)?;
        let r = seeded(&[1, 2, 3, 2], 18, &dev)?;
        let [w, b, m, v] = operands(2)?;
        let err = batch_norm_eval(&x, &w, &b, &m, &v, 1e-5, Epilogue::add_relu(&r)).unwrap_err();
        assert!(err.to_string().contains("residual"), "{err}");
        Ok(())
    }
}
