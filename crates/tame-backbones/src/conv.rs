//! The dense convolution layer of VGG-16 and ResNet-50: weights by torchvision's names, the
//! arithmetic in [`tame_ops::conv2d_fused`] (candle's CPU convolution and its backward pass
//! are several times slower; per-layer figures in
//! `docs/benchmarks/2026-11-27_to_12-01_first-speed-rounds.md`, "Where the time goes").
//!
//! Each 3x3 stride-1 convolution of loaded (not trainable) weights prepares its
//! [`WinogradFilters`] on its first pass that needs them (16/9 of its weight's memory), so
//! that later passes do not transform the filters again; they are dropped when a folded copy
//! replaces the convolution. [`ConvBn`] is ResNet-50's convolution + batch norm pair: in eval
//! mode one convolution with the batch norm folded into its weight and bias (the ReLU, and at
//! a block's end the identity, added in the same pass), made on the first eval pass and
//! dropped by every train pass, which moves the running statistics it comes from.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use tame_ops::{BatchStats, Epilogue, Padding, WinogradFilters};

use crate::exec::{ChainLayer, FrozenConvBn};
use crate::norm::BatchNorm;

pub struct Conv {
    weight: Tensor,
    /// Zeros for a convolution without bias: the fused op adds one either way.
    bias: Tensor,
    stride: usize,
    padding: Padding,
    /// The weight's filters transformed once for the Winograd path (3x3, stride 1): the
    /// weights of a loaded backbone never change. Made on the first pass that needs them
    /// and dropped by [`forget_prepared`](Self::forget_prepared), so that a convolution
    /// whose folded copy runs instead holds no second copy of them.
    winograd: Mutex<Option<Arc<WinogradFilters>>>,
}

impl Conv {
    /// A `k x k` convolution `cin -> cout` reading `<vb>.weight` (and `<vb>.bias` when
    /// `bias`), as PyTorch's `Conv2d(cin, cout, k, stride, padding, bias=bias)`.
    pub fn new(
        vb: VarBuilder,
        (cin, cout, k): (usize, usize, usize),
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((cout, cin, k, k), "weight")?;
        Ok(Self {
            weight,
            winograd: Mutex::default(),
            bias: if bias {
                vb.get(cout, "bias")?
            } else {
                Tensor::zeros(cout, vb.dtype(), vb.device())?
            },
            stride,
            padding: Padding::uniform(padding),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// `relu(forward(x))` in one op (one pass over the output, one backward).
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    /// This convolution followed by the per-channel affine map x * scale + shift (f64,
    /// C_out each), as one convolution: the weight scaled per output channel, the bias
    /// mapped. A trainable weight is never folded (`None`): the copy would go stale.
    fn folded(&self, scale: &Tensor, shift: &Tensor) -> Result<Option<Self>> {
        if self.weight.is_variable() {
            return Ok(None);
        }
        let dtype = self.weight.dtype();
        let per_channel = scale.reshape((scale.dim(0)?, 1, 1, 1))?;
        let weight = self
            .weight
            .to_dtype(DType::F64)?
            .broadcast_mul(&per_channel)?
            .to_dtype(dtype)?;
        let bias = ((self.bias.to_dtype(DType::F64)? * scale)? + shift)?.to_dtype(dtype)?;
        Ok(Some(Self {
            weight,
            bias,
            stride: self.stride,
            padding: self.padding,
            winograd: Mutex::default(),
        }))
    }

    fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (w, b) = (&self.weight, &self.bias);
        let winograd = self.prepared()?;
        let winograd = winograd.as_deref();
        tame_ops::conv2d_fused(x, w, winograd, b, self.stride, self.padding, relu)
    }

    /// `relu(forward(x))` as a layer of a fused chain (`exec::conv_relu_chain`), with
    /// the filters of [`prepared`](Self::prepared).
    pub fn chain_layer<'a>(&'a self, filters: Option<&'a WinogradFilters>) -> ChainLayer<'a> {
        ChainLayer::ConvRelu {
            weight: &self.weight,
            bias: &self.bias,
            winograd: filters,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// The Winograd filters, made on the first call (none for other strides, and for a
    /// trainable weight, which would leave them stale).
    pub fn prepared(&self) -> Result<Option<Arc<WinogradFilters>>> {
        if self.stride != 1 || self.weight.is_variable() {
            return Ok(None);
        }
        let mut prepared = lock(&self.winograd);
        if prepared.is_none() {
            *prepared = WinogradFilters::new(&self.weight)?.map(Arc::new);
        }
        Ok(prepared.clone())
    }

    /// Drops the prepared Winograd filters (made again when a pass needs them).
    fn forget_prepared(&self) {
        *lock(&self.winograd) = None;
    }
}

/// A cache's lock; a panic elsewhere while it was held leaves a valid cache (or none).
fn lock<T>(cache: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// A convolution and the batch norm after it (ResNet-50's pairs). In eval mode the two are
/// one convolution with the batch norm folded into its weight and bias (the ReLU after it
/// fused too): one pass over the output instead of two, the same numbers up to rounding.
/// The folded copy is built on the first eval pass and dropped by every train pass, which
/// moves the running statistics it was made from.
pub struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
    folded: Mutex<Option<Arc<Conv>>>,
}

impl ConvBn {
    pub fn new(conv: Conv, bn: BatchNorm) -> Self {
        Self {
            conv,
            bn,
            folded: Mutex::new(None),
        }
    }

    pub fn conv(&self) -> &Conv {
        &self.conv
    }

    /// The batch norm, for its running statistics (its passes go through
    /// [`bn_forward_then`](Self::bn_forward_then)).
    pub fn bn(&self) -> &BatchNorm {
        &self.bn
    }

    /// `bn(conv(x))` (then ReLU when `relu`) in eval mode, on the folded convolution when
    /// the weight can be folded.
    pub fn forward_eval(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        match self.folded()? {
            Some(conv) => conv.apply(x, relu),
            None => {
                let epilogue = if relu {
                    Epilogue::relu()
                } else {
                    Epilogue::default()
                };
                self.bn
                    .forward_then(&self.conv.forward(x)?, false, epilogue)
            }
        }
    }

    /// `relu(bn(conv(x)) + residual)` in eval mode (a bottleneck's end), on the folded
    /// convolution with the residual added in its pass when the weight can be folded.
    pub fn forward_eval_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match self.folded()? {
            Some(conv) => {
                let winograd = conv.prepared()?;
                tame_ops::conv2d_fused_residual(
                    x,
                    &conv.weight,
                    winograd.as_deref(),
                    &conv.bias,
                    residual,
                    conv.stride,
                    conv.padding,
                )
            }
            None => {
                self.bn
                    .forward_then(&self.conv.forward(x)?, false, Epilogue::add_relu(residual))
            }
        }
    }

    /// The batch norm of an unfolded pass (`train`: batch statistics, which also moves the
    /// running ones, so the folded copy is dropped).
    pub fn bn_forward_then(&self, x: &Tensor, train: bool, then: Epilogue) -> Result<Tensor> {
        if train {
            *lock(&self.folded) = None;
        }
        self.bn.forward_then(x, train, then)
    }

    /// The Winograd filters a train-mode pass of this pair may use, for [`frozen`](Self::frozen).
    pub fn prepared_filters(&self) -> Result<Option<Arc<WinogradFilters>>> {
        self.conv.prepared()
    }

    /// The pair as a layer of a fused train-mode block (`exec::bottleneck_train`), with
    /// the filters of [`prepared_filters`](Self::prepared_filters).
    pub fn frozen<'a>(&'a self, filters: Option<&'a WinogradFilters>) -> FrozenConvBn<'a> {
        let (gamma, beta, eps) = self.bn.affine_parameters();
        FrozenConvBn {
            weight: &self.conv.weight,
            winograd: filters,
            stride: self.conv.stride,
            padding: self.conv.padding,
            gamma,
            beta,
            eps,
        }
    }

    /// A fused train-mode pass's batch statistics: the running ones move (and the folded
    /// copy, made from them, is dropped), as in [`bn_forward_then`](Self::bn_forward_then).
    pub fn track(&self, stats: BatchStats) -> Result<()> {
        *lock(&self.folded) = None;
        self.bn.track(stats)
    }

    fn folded(&self) -> Result<Option<Arc<Conv>>> {
        let mut folded = lock(&self.folded);
        if folded.is_none() {
            // The unfolded convolution's filters first: both copies need not live at once.
            self.conv.forget_prepared();
            let (scale, shift) = self.bn.eval_affine()?;
            *folded = self.conv.folded(&scale, &shift)?.map(Arc::new);
        }
        Ok(folded.clone())
    }
}
