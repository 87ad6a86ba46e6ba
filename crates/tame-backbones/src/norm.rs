//! The batch norm layer of ResNet-50 and EfficientNet-Lite0: parameters by PyTorch's names,
//! the arithmetic in [`tame_ops::batch_norm_eval`] / [`tame_ops::batch_norm_train`] (one pass
//! each way instead of candle_nn's chain of broadcasts, the ReLU and residual addition that
//! follow fused in), running statistics updated in memory
//! in train mode as PyTorch updates them.

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarBuilder;
use tame_ops::{BatchStats, Epilogue};

pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    /// `<vb>.weight`, `.bias`, `.running_mean`, `.running_var` of `channels` each; in f32
    /// in a network of a half-precision type, as PyTorch's mixed precision keeps them (the
    /// ops compute in f32 on such inputs).
    pub fn new(vb: VarBuilder, channels: usize, eps: f64, momentum: f64) -> Result<Self> {
        let vb = match vb.dtype() {
            DType::BF16 | DType::F16 => vb.set_dtype(DType::F32),
            _ => vb,
        };
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            running_mean: Var::from_tensor(&vb.get(channels, "running_mean")?)?,
            running_var: Var::from_tensor(&vb.get(channels, "running_var")?)?,
            eps,
            momentum,
        })
    }

    /// Eval: the running statistics. Train: the batch's, and the running ones move towards
    /// them by `momentum` (the variance unbiased, as PyTorch).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_then(x, train, Epilogue::default())
    }

    /// [`forward`](Self::forward) followed by `then` (a residual addition, a ReLU) in the
    /// same pass.
    pub fn forward_then(&self, x: &Tensor, train: bool, then: Epilogue) -> Result<Tensor> {
        if !train {
            // Detached: the statistics are Vars only so that train mode can update them in
            // place; no gradient should flow to them.
            return tame_ops::batch_norm_eval(
                x,
                &self.weight,
                &self.bias,
                &self.running_mean.as_tensor().detach(),
                &self.running_var.as_tensor().detach(),
                self.eps,
                then,
            );
        }
        let (y, stats) = tame_ops::batch_norm_train(x, &self.weight, &self.bias, self.eps, then)?;
        self.track(stats)?;
        Ok(y)
    }

    /// Moves the running statistics towards a train-mode pass's batch statistics.
    pub fn track(&self, stats: BatchStats) -> Result<()> {
        let m = self.momentum;
        let n = stats.count as f64;
        let dtype = self.running_mean.dtype();
        let (batch_mean, batch_var) = (stats.mean.to_dtype(dtype)?, stats.var.to_dtype(dtype)?);
        let mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (batch_mean * m)?)?;
        let var =
            ((self.running_var.as_tensor() * (1.0 - m))? + (batch_var * (m * n / (n - 1.0)))?)?;
        self.running_mean.set(&mean)?;
        self.running_var.set(&var)
    }

    /// The parameters a fused train-mode block reads: weight, bias, eps.
    pub fn affine_parameters(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }

    /// Eval mode as a per-channel affine map x * scale + shift, in f64: scale = weight /
    /// sqrt(running_var + eps), shift = bias - running_mean * scale.
    pub fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let f64 = |t: &Tensor| t.detach().to_dtype(DType::F64);
        let std = (f64(self.running_var.as_tensor())? + self.eps)?.sqrt()?;
        let scale = (f64(&self.weight)? / std)?;
        let shift = (f64(&self.bias)? - (f64(self.running_mean.as_tensor())? * &scale)?)?;
        Ok((scale, shift))
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }
}
