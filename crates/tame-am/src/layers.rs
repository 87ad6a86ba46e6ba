//! The two layer kinds of the mechanism, on (B, C, L) tensors (L = H * W): a 1x1 convolution
//! is then a matrix product over channels, and batch statistics are means over axes 0 and 2.

use std::sync::atomic::{AtomicI64, Ordering};

use candle_core::{Tensor, Var};

use crate::AmError;

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// A 1x1 convolution with bias; `weight` is stored as (out, in, 1, 1) like PyTorch's.
pub(crate) struct Conv1x1 {
    pub weight: Var,
    pub bias: Var,
}

impl Conv1x1 {
    fn out_in(&self) -> candle_core::Result<(usize, usize)> {
        let (o, i, _, _) = self.weight.dims4()?;
        Ok((o, i))
    }

    /// The weight as an (out, in) matrix.
    pub fn matrix(&self) -> candle_core::Result<Tensor> {
        self.weight.as_tensor().reshape(self.out_in()?)
    }

    /// (B, in, L) -> (B, out, L), as a convolution: its weight gradient is one product per
    /// image accumulated in place, where a matrix product broadcast over the batch would
    /// make a (B, out, in) gradient and then reduce it.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, l) = x.dims3()?;
        let (weight, bias) = (self.weight.as_tensor(), self.bias.as_tensor());
        let no_padding = tame_ops::Padding::uniform(0);
        tame_ops::conv2d_fused(
            &x.reshape((b, c, l, 1))?,
            weight,
            None,
            bias,
            1,
            no_padding,
            false,
        )?
        .reshape((b, (), l))
    }
}

/// PyTorch's `BatchNorm2d` (eps 1e-5, momentum 0.1, affine, running statistics).
pub(crate) struct BatchNorm {
    pub weight: Var,
    pub bias: Var,
    /// Running statistics are Vars only so that `&self` can update them; they are used
    /// detached and never receive gradients.
    pub running_mean: Var,
    pub running_var: Var,
    pub batches_tracked: AtomicI64,
}

impl BatchNorm {
    /// Normalises a (B, C, L) tensor. Train mode uses the biased batch variance and updates
    /// the running statistics with the unbiased one, as PyTorch does.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor, AmError> {
        self.forward_then(x, None, train)
    }

    /// `relu(bn(x) + skip)` in the batch norm's pass (the skip connection of TAME's
    /// feature branches), one graph node instead of three.
    pub fn forward_add_relu(
        &self,
        x: &Tensor,
        skip: &Tensor,
        train: bool,
    ) -> Result<Tensor, AmError> {
        self.forward_then(x, Some(skip), train)
    }

    /// bn(x), or `relu(bn(x) + skip)`, on (B, C, L) tensors.
    fn forward_then(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, AmError> {
        let (b, c, l) = x.dims3()?;
        // tame_ops' batch norm: one pass each way, with the weight's and bias's gradients
        // (candle's broadcast operations reduce each gradient over the batch and plane).
        let x4 = x.reshape((b, c, l, 1))?;
        let (weight, bias) = (self.weight.as_tensor(), self.bias.as_tensor());
        let skip4 = skip.map(|s| s.reshape((b, c, l, 1))).transpose()?;
        let then = match &skip4 {
            Some(s) => tame_ops::Epilogue::add_relu(s),
            None => tame_ops::Epilogue::default(),
        };
        let y = if train {
            if b * l < 2 {
                return Err(AmError::BatchTooSmall(b * l));
            }
            let (y, stats) = tame_ops::batch_norm_train(&x4, weight, bias, BN_EPS, then)?;
            self.update_running(&stats.mean, &stats.var, stats.count)?;
            y
        } else {
            let mean = self.running_mean.as_detached_tensor();
            let var = self.running_var.as_detached_tensor();
            tame_ops::batch_norm_eval(&x4, weight, bias, &mean, &var, BN_EPS, then)?
        };
        Ok(y.reshape((b, c, l))?)
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> candle_core::Result<()> {
        let mean = mean.detach().flatten_all()?;
        let unbiased = (var.detach().flatten_all()? * (n as f64 / (n - 1) as f64))?;
        let keep = 1.0 - BN_MOMENTUM;
        let rm = ((self.running_mean.as_detached_tensor() * keep)? + (mean * BN_MOMENTUM)?)?;
        let rv = ((self.running_var.as_detached_tensor() * keep)? + (unbiased * BN_MOMENTUM)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        self.batches_tracked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn batches_tracked(&self) -> i64 {
        self.batches_tracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>())
            .unwrap()
    }

    /// The convolution form of the 1x1 layer against the plain broadcast matrix product, for
    /// the output and the gradients of the input, the weight and the bias (float64).
    #[test]
    fn conv1x1_equals_the_broadcast_matrix_product() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let rand = |shape: &[usize]| Tensor::randn(0f64, 1.0, shape, &dev);
        let layer = Conv1x1 {
            weight: Var::from_tensor(&rand(&[5, 3, 1, 1])?)?,
            bias: Var::from_tensor(&rand(&[5])?)?,
        };
        let x = Var::from_tensor(&rand(&[2, 3, 7])?)?;
        let r = rand(&[2, 5, 7])?;
        let ours = layer.forward(x.as_tensor())?;
        let plain = layer
            .matrix()?
            .broadcast_matmul(x.as_tensor())?
            .broadcast_add(&layer.bias.as_tensor().reshape((1, 5, 1))?)?;
        assert_eq!(ours.dtype(), DType::F64);
        assert!(max_abs_diff(&ours, &plain) < 1e-12);
        let g1 = (ours * &r)?.sum_all()?.backward()?;
        let g2 = (plain * &r)?.sum_all()?.backward()?;
        for t in [
            x.as_tensor(),
            layer.weight.as_tensor(),
            layer.bias.as_tensor(),
        ] {
            assert!(max_abs_diff(g1.get(t).unwrap(), g2.get(t).unwrap()) < 1e-12);
        }
        Ok(())
    }
}
