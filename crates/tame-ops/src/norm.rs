//! Batch normalisation of (B, C, H, W) tensors as one pass over the data forward and backward,
//! optionally followed in the same pass by a residual addition and a ReLU (ResNet's
//! `relu(bn(x))` and `relu(bn(x) + identity)`).
//!
//! candle_nn's batch norm is a chain of broadcast operations (in train mode also a transpose
//! to channels-first and back), each a full-size tensor forward and again backward; candle's
//! ReLU backward is four more (a comparison with zeros, a cast, a product) and every node of
//! the graph costs its gradient a zero-filled tensor and an addition. The output is
//! `x * a[c] + b[c]` per channel and the gradients have closed forms: here each is a single
//! loop ([`tame_kernels::norm`]), the epilogue included; the weight's and bias's gradients
//! (when they are trainable, as in an attention mechanism) are per-channel sums that the
//! train-mode input gradient needs anyway, where candle's broadcasts would reduce each over
//! the batch and plane.
//!
//! The fused [`Epilogue`] makes `relu(bn(x) + identity)` one graph node instead of three,
//! which also spares candle's backward a zero-filled tensor and an addition for each node it
//! no longer has.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage,
};
use candle_core::{Tensor, D};
use tame_kernels::norm::{self, ChannelAffine};
use tame_kernels::Float;

use crate::mask::ReluMask;
use crate::policy::{is_half, widened, Kernels};
use crate::storage::{run_float_kernel, FloatKernel};

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
/// channel, with the running statistics, then `then`. Gradients flow to `x`, the residual,
/// and a trainable `weight` and `bias` (an attention mechanism's). The running statistics
/// must not be tracked on the fast path; where the fast path does not apply, candle's
/// operations are used.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    then: Epilogue,
) -> Result<Tensor> {
    if is_half(x.dtype()) {
        // In f32 ([`is_half`]): the per-channel scale and shift rounded to a half type
        // would be off by the same fraction at every pixel of their channel, layer after
        // layer; the parameters may be f32 already (a backbone in lower precision keeps
        // its batch norms' in f32, as PyTorch's mixed precision does).
        let (x32, residual) = (widened(x)?, then.residual.map(widened).transpose()?);
        let then = Epilogue {
            residual: residual.as_ref(),
            relu: then.relu,
        };
        let [w, b, m, v] = [weight, bias, mean, var].map(widened);
        let y = batch_norm_eval(&x32, &w?, &b?, &m?, &v?, eps, then)?;
        return y.to_dtype(x.dtype());
    }
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    let scale = (weight * &inv_std)?;
    let shift = (bias - (mean * &scale)?)?;
    if !fast_path(x, &[mean, var], &then)? {
        let c = (1, (), 1, 1);
        let y = x
            .broadcast_mul(&scale.reshape(c)?)?
            .broadcast_add(&shift.reshape(c)?)?;
        return then.compose(y);
    }
    let (_, _, h, w) = x.dims4()?;
    let op = Affine(ChannelAffine {
        scale: values(&scale)?,
        shift: values(&shift)?,
        plane: h * w,
        mean: values(mean)?,
        inv_std: values(&inv_std)?,
        train: false,
        relu: then.relu,
    });
    op.apply(x, then.residual, [weight, bias])
}

/// What a train-mode batch norm measured: the per-channel mean and biased variance of its
/// input (in f32 for a half-precision input), and the count n they were taken over (B·H·W;
/// PyTorch updates the running variance with the unbiased `var · n / (n - 1)`).
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub count: usize,
}

/// PyTorch's `batch_norm` in train mode: normalised with the batch's own statistics, which
/// are returned for the running-statistics update, then `then`. The gradient to `x`
/// includes the statistics' dependence on `x`; a trainable `weight` and `bias` get theirs
/// too.
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
    if is_half(x.dtype()) {
        // The statistics sum B·H·W values each: in f32 ([`is_half`]), as PyTorch's mixed
        // precision runs batch norm; the output rounded back, the statistics left in f32.
        let residual = then.residual.map(widened).transpose()?;
        let then = Epilogue {
            residual: residual.as_ref(),
            relu: then.relu,
        };
        let (w, b) = (widened(weight)?, widened(bias)?);
        let (y, stats) = batch_norm_train(&widened(x)?, &w, &b, eps, then)?;
        return Ok((y.to_dtype(x.dtype())?, stats));
    }
    if !fast_path(x, &[], &then)? {
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
    let op = Affine(ChannelAffine {
        scale: values(&scale)?,
        shift: values(&shift)?,
        plane: h * w,
        mean: values(&mean)?,
        inv_std: values(&inv_std)?,
        train: true,
        relu: then.relu,
    });
    let y = op.apply(&x, then.residual, [weight, bias])?;
    Ok((y, BatchStats { mean, var, count }))
}

/// The custom ops run where the native kernels do ([`Kernels`]: f32/f64 on the CPU), with
/// `frozen` per-channel operands and a residual on the CPU; a residual must match the
/// input.
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
    Ok(Kernels::for_tensor(x) == Kernels::Native
        && then.residual.is_none_or(|r| r.device().is_cpu())
        && frozen.iter().all(|t| !t.track_op()))
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// The per-channel sums of a (B, C, H, W) tensor, (C), accumulated in f64: a bias's
/// gradient. candle's `sum` over axes 0, 2 and 3 is a strided reduction many times slower.
pub(crate) fn channel_sums(t: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = t.dims4()?;
    if Kernels::for_tensor(t) == Kernels::Portable {
        return t.sum(vec![0, 2, 3]);
    }
    t.contiguous()?.apply_op1_no_bwd(&ChannelSums {
        channels: c,
        plane: h * w,
    })
}

struct ChannelSums {
    channels: usize,
    /// H x W.
    plane: usize,
}

impl FloatKernel for ChannelSums {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        norm::channel_sums(operands[0], self.channels, self.plane)
    }
}

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "tame-channel-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(storage, layout)], "channel_sums")?;
        Ok((out, Shape::from(self.channels)))
    }
}

/// (B, C, H, W) -> (2, C): each channel's mean and biased variance, accumulated in f64.
struct Moments {
    channels: usize,
    /// H x W.
    plane: usize,
}

impl FloatKernel for Moments {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        norm::moments(operands[0], self.channels, self.plane)
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

/// The batch norm's pass ([`ChannelAffine`]) as a graph node: (x), or (x, residual).
#[derive(Clone)]
struct Affine(ChannelAffine);

impl FloatKernel for Affine {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        self.0.forward(operands[0], operands.get(1).copied())
    }
}

impl Affine {
    /// The op on `x` (and `residual`), as a node of the graph. Trainable `params` (weight,
    /// bias) join as one (2, C) operand, so that the op's backward hands them their
    /// gradient; their values are already folded into scale and shift.
    fn apply(self, x: &Tensor, residual: Option<&Tensor>, params: [&Tensor; 2]) -> Result<Tensor> {
        let x = x.contiguous()?;
        let trainable = params.iter().any(|t| t.track_op());
        match residual {
            Some(r) if trainable => x.apply_op3(
                &r.contiguous()?,
                &Tensor::stack(&params, 0)?,
                WithParams(self),
            ),
            Some(r) => x.apply_op2(&r.contiguous()?, self),
            None if trainable => x.apply_op2(&Tensor::stack(&params, 0)?, WithParams(self)),
            None => x.apply_op1(self),
        }
    }

    /// The residual's gradient: the output's, through the ReLU when there is one.
    fn residual_grad(&self, y: &Tensor, grad_y: &Tensor) -> Result<Tensor> {
        if self.0.relu {
            grad_y.contiguous()?.apply_op2_no_bwd(y, &ReluMask)
        } else {
            Ok(grad_y.clone())
        }
    }

    /// The gradients of x (when `x_tracked`) and of the (weight, bias) rows (when
    /// `params_tracked`) from (x, y, grad_y): the per-channel sums once, then the pass over
    /// the input gradient.
    fn grads(
        &self,
        x: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
        x_tracked: bool,
        params_tracked: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_y = grad_y.contiguous()?;
        let sums = if self.0.train || params_tracked {
            Some(grad_y.apply_op3_no_bwd(x, y, &AffineGrad(self.0.clone(), Grad::Params))?)
        } else {
            None
        };
        let which = match &sums {
            Some(s) => Grad::InputWith(s.clone()),
            None => Grad::Input,
        };
        let grad_x = x_tracked
            .then(|| grad_y.apply_op3_no_bwd(x, y, &AffineGrad(self.0.clone(), which)))
            .transpose()?;
        Ok((grad_x, sums.filter(|_| params_tracked)))
    }
}

impl CustomOp1 for Affine {
    fn name(&self) -> &'static str {
        "tame-batch-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(storage, layout)], OP)?;
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(x, y, grad_y, true, false)?.0)
    }
}

impl CustomOp2 for Affine {
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
        let grad_x = self.grads(x, y, grad_y, x.track_op(), false)?.0;
        let grad_residual = residual
            .track_op()
            .then(|| self.residual_grad(y, grad_y))
            .transpose()?;
        Ok((grad_x, grad_residual))
    }
}

/// [`Affine`] with trainable (weight, bias) as its last operand, stacked (2, C):
/// (x, params), or (x, residual, params).
struct WithParams(Affine);

impl CustomOp2 for WithParams {
    fn name(&self) -> &'static str {
        "tame-batch-norm-trainable"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _params: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(&self.0, &[(s1, l1)], OP)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.0.grads(x, y, grad_y, x.track_op(), params.track_op())
    }
}

impl CustomOp3 for WithParams {
    fn name(&self) -> &'static str {
        "tame-batch-norm-add-trainable"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        _params: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(&self.0, &[(s1, l1), (s2, l2)], OP)?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        params: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_params) = self
            .0
            .grads(x, y, grad_y, x.track_op(), params.track_op())?;
        let grad_residual = residual
            .track_op()
            .then(|| self.0.residual_grad(y, grad_y))
            .transpose()?;
        Ok((grad_x, grad_residual, grad_params))
    }
}

/// Which gradient an [`AffineGrad`] computes from (grad_y, x, y).
enum Grad {
    /// The (2, C) rows of [`ChannelAffine::param_grads`].
    Params,
    /// grad_x in eval mode (no sums needed).
    Input,
    /// grad_x with the sums of [`Grad::Params`].
    InputWith(Tensor),
}

/// (grad_y, x, y) -> a gradient of [`ChannelAffine`].
struct AffineGrad(ChannelAffine, Grad);

impl FloatKernel for AffineGrad {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        let (g, x, y) = (operands[0], operands[1], operands[2]);
        match self.1 {
            Grad::Params => self.0.param_grads(g, x, y),
            Grad::Input => self.0.backward(g, x, y, None),
            Grad::InputWith(_) => self.0.backward(g, x, y, Some(operands[3])),
        }
    }
}

impl CustomOp3 for AffineGrad {
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
        let mut operands = vec![(s1, l1), (s2, l2), (s3, l3)];
        let sums = match &self.1 {
            Grad::InputWith(s) => Some(s.storage_and_layout()),
            _ => None,
        };
        if let Some((storage, layout)) = &sums {
            match &**storage {
                Storage::Cpu(s) => operands.push((s, *layout)),
                _ => candle_core::bail!("{OP}: sums on another device"),
            }
        }
        let out = run_float_kernel(self, &operands, OP)?;
        let shape = match self.1 {
            Grad::Params => Shape::from((2, self.0.scale.len())),
            _ => l2.shape().clone(),
        };
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::gradcheck::{
        assert_all_close, assert_gradients_match, max_abs_diff, native_and_portable,
        output_and_gradients, seeded,
    };

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
    fn trainable_weight_and_bias_get_the_gradients_of_candle_nn() -> Result<()> {
        use candle_core::ModuleT;
        let dev = Device::Cpu;
        let x = seeded(&[3, 2, 4, 5], 21, &dev)?;
        let res = seeded(x.dims(), 20, &dev)?;
        let [w, b, m, v] = operands(2)?;
        let r = seeded(x.dims(), 22, &dev)?;
        for train in [false, true] {
            // Without an epilogue, then each of them (a residual, as the attention
            // mechanism's skip connection, with and without the ReLU).
            for epilogue in 0..4 {
                let vars = [&x, &w, &b, &res].map(|t| Var::from_tensor(t).unwrap());
                let [xv, wv, bv, rv] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
                let then = match epilogue {
                    0 => Epilogue::default(),
                    i => epilogues(rv)[i - 1],
                };
                let ours = if train {
                    batch_norm_train(xv, wv, bv, 1e-5, then)?.0
                } else {
                    batch_norm_eval(xv, wv, bv, &m, &v, 1e-5, then)?
                };
                let bn = candle_nn::BatchNorm::new(
                    2,
                    m.clone(),
                    v.clone(),
                    wv.clone(),
                    bv.clone(),
                    1e-5,
                )?;
                let theirs = then.compose(bn.forward_t(xv, train)?)?;
                assert!(max_abs_diff(&ours, &theirs) < 1e-12);
                let g1 = (ours * &r)?.sum_all()?.backward()?;
                let g2 = (theirs * &r)?.sum_all()?.backward()?;
                let names = ["x", "weight", "bias", "residual"];
                let inputs = if then.residual.is_some() { 4 } else { 3 };
                for (var, name) in vars.iter().zip(names).take(inputs) {
                    let (a, b) = (g1.get(var).unwrap(), g2.get(var).unwrap());
                    let d = max_abs_diff(a, b);
                    assert!(d < 1e-12, "train {train}, {then:?}, {name}: {d}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn weight_and_bias_gradients_match_finite_differences() -> Result<()> {
        let x = seeded(&[2, 3, 3, 4], 23, &Device::Cpu)?;
        let [w, b, m, v] = operands(3)?;
        let relu = Epilogue::relu();
        assert_gradients_match(&w, |w| Ok(batch_norm_train(&x, w, &b, 1e-5, relu)?.0))?;
        assert_gradients_match(&b, |b| Ok(batch_norm_train(&x, &w, b, 1e-5, relu)?.0))?;
        assert_gradients_match(&w, |w| batch_norm_eval(&x, w, &b, &m, &v, 1e-5, relu))?;
        assert_gradients_match(&b, |b| batch_norm_eval(&x, &w, b, &m, &v, 1e-5, relu))?;
        Ok(())
    }

    #[test]
    fn weight_and_bias_gradients_with_a_residual_match_finite_differences() -> Result<()> {
        let x = seeded(&[2, 2, 3, 3], 11, &Device::Cpu)?;
        let r = seeded(&[2, 2, 3, 3], 12, &Device::Cpu)?;
        let [w, b, m, v] = operands(2)?;
        let then = Epilogue::add_relu(&r);
        assert_gradients_match(&w, |w| Ok(batch_norm_train(&x, w, &b, 1e-5, then)?.0))?;
        assert_gradients_match(&b, |b| Ok(batch_norm_train(&x, &w, b, 1e-5, then)?.0))?;
        assert_gradients_match(&w, |w| batch_norm_eval(&x, w, &b, &m, &v, 1e-5, then))?;
        Ok(())
    }

    #[test]
    fn channel_sums_equal_candles_sum() -> Result<()> {
        let t = seeded(&[3, 4, 5, 7], 24, &Device::Cpu)?;
        let ours = channel_sums(&t)?;
        assert_eq!(ours.dims(), [4]);
        assert!(max_abs_diff(&ours, &t.sum(vec![0, 2, 3])?) < 1e-12);
        let f32s = channel_sums(&t.to_dtype(DType::F32)?)?;
        assert!(max_abs_diff(&f32s.to_dtype(DType::F64)?, &ours) < 1e-5);
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

    /// The native kernels and the portable path (candle's broadcasts, what a GPU runs) agree
    /// to 1e-12 in f64, in train and eval mode, with every epilogue: the output and the
    /// gradients of the input, the trainable weight and bias, and the residual.
    #[test]
    fn native_and_portable_agree() -> Result<()> {
        let dev = Device::Cpu;
        let [w, b, m, v] = operands(2)?;
        let tensors = [
            seeded(&[3, 2, 4, 5], 31, &dev)?,
            w,
            b,
            seeded(&[3, 2, 4, 5], 32, &dev)?,
        ];
        let vars = tensors.map(|t| Var::from_tensor(&t).unwrap());
        let [x, w, b, r] = vars.each_ref().map(|v| v.as_tensor());
        for train in [false, true] {
            for epilogue in 0..4 {
                let then = match epilogue {
                    0 => Epilogue::default(),
                    i => epilogues(r)[i - 1],
                };
                let inputs = [x, w, b, r];
                let inputs = &inputs[..if then.residual.is_some() { 4 } else { 3 }];
                let (native, portable) = native_and_portable(|| {
                    let y = if train {
                        batch_norm_train(x, w, b, 1e-5, then)?.0
                    } else {
                        batch_norm_eval(x, w, b, &m, &v, 1e-5, then)?
                    };
                    output_and_gradients(&y, inputs)
                })?;
                let what = format!("train {train}, {then:?}");
                assert_all_close(&what, &native, &portable, 1e-12);
            }
        }
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
