//! Batch normalisation of (B, C, H, W) tensors with frozen scale and shift, as one pass over
//! the data forward and backward.
//!
//! candle_nn's batch norm is a chain of broadcast operations (in train mode also a transpose
//! to channels-first and back), each a full-size tensor forward and again backward. With the
//! weight and bias frozen, as in a backbone, the output is `x * a[c] + b[c]` per channel, and
//! the input gradient has a closed form; here both are single loops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use candle_core::{WithDType, D};
use rayon::prelude::*;

use crate::{run_float_kernel, FloatKernel};

/// The name errors give.
const OP: &str = "batch_norm";

/// PyTorch's `batch_norm` in eval mode: `(x - mean) / sqrt(var + eps) * weight + bias` per
/// channel, with the running statistics. Gradients flow to `x` only (the other operands must
/// not be tracked on the fast path; if any is, candle's operations are used).
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    let scale = (weight * &inv_std)?;
    let shift = (bias - (mean * &scale)?)?;
    if !fast_path(x, &[weight, bias, mean, var]) {
        let c = (1, (), 1, 1);
        return x
            .broadcast_mul(&scale.reshape(c)?)?
            .broadcast_add(&shift.reshape(c)?);
    }
    let (_, _, h, w) = x.dims4()?;
    let op = ChannelAffine {
        scale: values(&scale)?,
        shift: values(&shift)?,
        plane: h * w,
        train: None,
    };
    x.contiguous()?.apply_op1(op)
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
/// are returned for the running-statistics update. The gradient to `x` includes the
/// statistics' dependence on `x`; `weight` and `bias` must not be tracked on the fast path.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let (b, c, h, w) = x.dims4()?;
    let count = b * h * w;
    if count < 2 {
        candle_core::bail!("{OP}: train mode needs more than one value per channel");
    }
    if !fast_path(x, &[weight, bias]) {
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
        return Ok((y, stats));
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
    };
    let y = x.apply_op1(op)?;
    Ok((y, BatchStats { mean, var, count }))
}

/// The custom ops run f32/f64 on the CPU with frozen per-channel operands.
fn fast_path(x: &Tensor, frozen: &[&Tensor]) -> bool {
    x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && frozen.iter().all(|t| !t.track_op())
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
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
                let (mut sum, mut count) = (0f64, 0usize);
                for p in planes.clone() {
                    sum += p.iter().map(|v| v.to_f64()).sum::<f64>();
                    count += p.len();
                }
                let mean = sum / count as f64;
                let sq: f64 = planes
                    .map(|p| p.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>())
                    .sum();
                (mean, sq / count as f64)
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

/// y = x * scale[c] + shift[c]; backward as batch norm in eval mode (`train` None) or in
/// train mode.
#[derive(Clone)]
struct ChannelAffine {
    scale: Vec<f64>,
    shift: Vec<f64>,
    /// H x W.
    plane: usize,
    train: Option<TrainTerms>,
}

impl FloatKernel for ChannelAffine {
    fn run<T: WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
        self.forward(operands[0])
    }
}

impl ChannelAffine {
    fn forward<T: WithDType>(&self, x: &[T]) -> Vec<T> {
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
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * a + b;
                }
            });
        y
    }

    /// Eval: g·scale. Train (x̂ = (x − mean)·inv_std):
    /// scale · (g − mean(g) − x̂ · mean(g·x̂)), the means over the channel's B·H·W values.
    fn backward<T: WithDType>(&self, g: &[T], x: &[T]) -> Vec<T> {
        let plane = self.plane;
        let c = self.scale.len();
        let (mean_g, mean_gx) = match &self.train {
            None => (vec![0.0; c], vec![0.0; c]),
            Some(t) => {
                let count = (g.len() / c) as f64;
                let sums: Vec<(f64, f64)> = (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let (mut sg, mut sgx) = (0f64, 0f64);
                        let gs = g.chunks(plane).skip(ch).step_by(c);
                        let xs = x.chunks(plane).skip(ch).step_by(c);
                        for (gp, xp) in gs.zip(xs) {
                            for (&gv, &xv) in gp.iter().zip(xp) {
                                let xhat = (xv.to_f64() - t.mean[ch]) * t.inv_std[ch];
                                sg += gv.to_f64();
                                sgx += gv.to_f64() * xhat;
                            }
                        }
                        (sg / count, sgx / count)
                    })
                    .collect();
                sums.into_iter().unzip()
            }
        };
        let mut dx = vec![T::zero(); g.len()];
        dx.par_chunks_mut(plane)
            .zip(g.par_chunks(plane))
            .zip(x.par_chunks(plane))
            .enumerate()
            .for_each(|(i, ((dx, g), x))| {
                let ch = i % c;
                let a = self.scale[ch];
                match &self.train {
                    None => {
                        let a = T::from_f64(a);
                        for (d, &gv) in dx.iter_mut().zip(g) {
                            *d = gv * a;
                        }
                    }
                    Some(t) => {
                        let (m, s) = (t.mean[ch], t.inv_std[ch]);
                        for ((d, &gv), &xv) in dx.iter_mut().zip(g).zip(x) {
                            let xhat = (xv.to_f64() - m) * s;
                            *d = T::from_f64(a * (gv.to_f64() - mean_g[ch] - xhat * mean_gx[ch]));
                        }
                    }
                }
            });
        dx
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

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_y
            .contiguous()?
            .apply_op2_no_bwd(x, &ChannelAffineGrad(self.clone()))?;
        Ok(Some(grad))
    }
}

/// (grad_y, x) -> grad_x of [`ChannelAffine`].
struct ChannelAffineGrad(ChannelAffine);

impl FloatKernel for ChannelAffineGrad {
    fn run<T: WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
        self.0.backward(operands[0], operands[1])
    }
}

impl CustomOp2 for ChannelAffineGrad {
    fn name(&self) -> &'static str {
        "tame-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2)], OP)?;
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
        let ours = batch_norm_eval(&x, &w, &b, &m, &v, 1e-5)?;
        let theirs = reference(3)?.forward_t(&x, false)?;
        assert!(max_abs_diff(&ours, &theirs) < 1e-12);
        assert_gradients_match(&x, |x| batch_norm_eval(x, &w, &b, &m, &v, 1e-5))?;
        Ok(())
    }

    #[test]
    fn train_mode_equals_candle_nn_and_returns_the_batch_statistics() -> Result<()> {
        use candle_core::ModuleT;
        let x = seeded(&[2, 3, 4, 5], 8, &Device::Cpu)?;
        let [w, b, ..] = operands(3)?;
        let (ours, stats) = batch_norm_train(&x, &w, &b, 1e-5)?;
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
        assert_gradients_match(&x, |x| Ok(batch_norm_train(x, &w, &b, 1e-5)?.0))?;

        let r = seeded(&[3, 2, 3, 4], 10, &Device::Cpu)?;
        let xv = Var::from_tensor(&x)?;
        let ours = (batch_norm_train(xv.as_tensor(), &w, &b, 1e-5)?.0 * &r)?
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
        let (y, _) = batch_norm_train(&x, wv.as_tensor(), &b, 1e-5)?;
        let (fast, _) = batch_norm_train(&x, &w, &b, 1e-5)?;
        assert!(max_abs_diff(&y, &fast) < 1e-12);
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(&wv).is_some());
        Ok(())
    }
}
