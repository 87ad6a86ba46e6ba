//! A convolution followed by batch norm (ResNet-50's pairs), optionally by a ReLU.
//!
//! In eval mode the batch norm is an affine map per channel, so it folds into the
//! convolution's weights and bias: the pair and its ReLU run as one fused convolution instead
//! of three passes over the output. The folded weights are made on the first eval pass and
//! kept until a train-mode pass moves the running statistics. Whenever the convolution's or
//! the batch norm's own output is a tap, the pair runs unfolded.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::Tensor;

use crate::conv::Conv;
use crate::norm::BatchNorm;
use crate::{Result, TapCollector};

pub struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
    folded: Mutex<Option<Arc<Conv>>>,
}

/// The tap names of a pair's nodes; `relu` is `None` when no ReLU follows.
pub struct Nodes<'a> {
    pub conv: &'a str,
    pub bn: &'a str,
    pub relu: Option<&'a str>,
}

impl ConvBn {
    pub fn new(conv: Conv, bn: BatchNorm) -> Self {
        Self {
            conv,
            bn,
            folded: Mutex::new(None),
        }
    }

    pub fn bn(&self) -> &BatchNorm {
        &self.bn
    }

    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        nodes: Nodes,
        taps: &mut TapCollector,
    ) -> Result<Tensor> {
        if !train && !taps.wants(nodes.conv) && !taps.wants(nodes.bn) {
            let folded = self.folded()?;
            return match nodes.relu {
                Some(relu) => taps.pass(relu, folded.forward_relu(x)?),
                None => Ok(folded.forward(x)?),
            };
        }
        let y = taps.pass(nodes.conv, self.conv.forward(x)?)?;
        let y = taps.pass(nodes.bn, self.bn.forward(&y, train)?)?;
        if train {
            *self.folded.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        match nodes.relu {
            Some(relu) => taps.pass(relu, y.relu()?),
            None => Ok(y),
        }
    }

    fn folded(&self) -> candle_core::Result<Arc<Conv>> {
        let mut folded = self.folded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(conv) = folded.as_ref() {
            return Ok(conv.clone());
        }
        let (scale, shift) = self.bn.eval_affine()?;
        let conv = Arc::new(self.conv.scaled(&scale, &shift)?);
        *folded = Some(conv.clone());
        Ok(conv)
    }
}
