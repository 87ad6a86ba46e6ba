//! The dense convolution layer of VGG-16 and ResNet-50: weights by torchvision's names, the
//! arithmetic in [`tame_ops::conv2d_fused`] (candle's CPU convolution and its backward pass
//! are several times slower; per-layer figures in
//! `docs/benchmarks/2026-11-27_to_12-01_first-speed-rounds.md`, "Where the time goes").
//!
//! Each 3x3 stride-1 convolution of loaded (not trainable) weights prepares its
//! [`WinogradFilters`] on its first pass that needs them (16/9 of its weight's memory), so
//! that later passes do not transform the filters again; they are dropped when a folded copy
//! (`exec::ConvBn`) replaces the convolution.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use tame_ops::{Padding, WinogradFilters};

use crate::lock;

pub struct Conv {
    pub(crate) weight: Tensor,
    /// Zeros for a convolution without bias: the fused op adds one either way.
    pub(crate) bias: Tensor,
    pub(crate) stride: usize,
    pub(crate) padding: Padding,
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
    pub(crate) fn folded(&self, scale: &Tensor, shift: &Tensor) -> Result<Option<Self>> {
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

    pub(crate) fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (w, b) = (&self.weight, &self.bias);
        let winograd = self.prepared()?;
        let winograd = winograd.as_deref();
        tame_ops::conv2d_fused(x, w, winograd, b, self.stride, self.padding, relu)
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
    pub(crate) fn forget_prepared(&self) {
        *lock(&self.winograd) = None;
    }
}
