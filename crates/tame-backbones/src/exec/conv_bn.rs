//! A convolution and the batch norm after it, run as one convolution in eval mode (the batch
//! norm folded into its weight and bias) and as a convolution plus one batch-norm op with its
//! epilogue in train mode, unless a tap asks for a node the fusion would hide.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use tame_ops::{BatchStats, Epilogue, WinogradFilters};

use super::FrozenConvBn;

use crate::conv::Conv;
use crate::norm::BatchNorm;
use crate::{lock, Result, TapCollector};

/// `relu(bn(conv(x)))` with its three nodes offered under `names`: the folded convolution in
/// eval mode unless a tap asks for the convolution's or the batch norm's own output; else
/// `relu(bn(x))` as one op unless the batch norm's output is asked for.
pub(crate) fn conv_bn_relu(
    pair: &ConvBn,
    x: &Tensor,
    train: bool,
    taps: &mut TapCollector,
    [conv_name, bn_name, relu_name]: [&str; 3],
) -> Result<Tensor> {
    if !train && !taps.wants(conv_name) && !taps.wants(bn_name) {
        let y = pair.forward_eval(x, true)?;
        return taps.pass(relu_name, y);
    }
    let y = taps.pass(conv_name, pair.conv().forward(x)?)?;
    let y = if taps.wants(bn_name) {
        let y = pair.bn_forward_then(&y, train, Epilogue::default())?;
        taps.pass(bn_name, y)?.relu()?
    } else {
        pair.bn_forward_then(&y, train, Epilogue::relu())?
    };
    taps.pass(relu_name, y)
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
    pub fn forward_eval(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
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
    pub fn forward_eval_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
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
    pub fn bn_forward_then(
        &self,
        x: &Tensor,
        train: bool,
        then: Epilogue,
    ) -> candle_core::Result<Tensor> {
        if train {
            *lock(&self.folded) = None;
        }
        self.bn.forward_then(x, train, then)
    }

    /// The Winograd filters a train-mode pass of this pair may use, for [`frozen`](Self::frozen).
    pub fn prepared_filters(&self) -> candle_core::Result<Option<Arc<WinogradFilters>>> {
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
    pub fn track(&self, stats: BatchStats) -> candle_core::Result<()> {
        *lock(&self.folded) = None;
        self.bn.track(stats)
    }

    fn folded(&self) -> candle_core::Result<Option<Arc<Conv>>> {
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
