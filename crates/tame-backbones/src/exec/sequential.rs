//! A sequence of layers named `<prefix>.<index>` (VGG-16's `features` and `classifier`).

use std::sync::Arc;

use candle_core::Tensor;

use super::{conv_relu_chain, ChainLayer};
use crate::conv::Conv;
use crate::dropout::Dropout;
use crate::linear::Dense;
use crate::{Mode, Result, TapCollector};

pub(crate) enum Layer {
    Conv(Conv),
    Linear(Dense),
    Relu,
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Shared by the dropout layers that draw from one generator.
    Dropout(Arc<Dropout>),
}

impl Layer {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match self {
            Layer::Conv(conv) => conv.forward(x)?,
            Layer::Linear(linear) => linear.forward(x)?,
            Layer::Relu => x.relu()?,
            &Layer::MaxPool {
                kernel,
                stride,
                padding,
            } => tame_ops::max_pool2d(x, kernel, stride, padding)?,
            Layer::Dropout(dropout) => dropout.forward(x, mode == Mode::Train)?,
        })
    }
}

pub(crate) struct Sequential {
    prefix: &'static str,
    layers: Vec<Layer>,
}

impl Sequential {
    pub(crate) fn new(prefix: &'static str, layers: Vec<Layer>) -> Self {
        Self { prefix, layers }
    }

    pub(crate) fn node_names(&self) -> Vec<String> {
        (0..self.layers.len()).map(|i| self.node_name(i)).collect()
    }

    fn node_name(&self, i: usize) -> String {
        format!("{}.{i}", self.prefix)
    }

    /// Runs the layers on `x`, offering each output to `taps`; returns early, with the last
    /// output, once `taps` is done.
    pub(crate) fn forward(&self, x: Tensor, mode: Mode, taps: &mut TapCollector) -> Result<Tensor> {
        self.run(x, mode, taps, false)
    }

    /// As [`forward`](Self::forward), the last layer's output (the logits) offered as it is:
    /// a `Var` leaf there would cut every other tap off its gradient.
    pub(crate) fn forward_logits(
        &self,
        x: Tensor,
        mode: Mode,
        taps: &mut TapCollector,
    ) -> Result<Tensor> {
        self.run(x, mode, taps, true)
    }

    fn run(&self, x: Tensor, mode: Mode, taps: &mut TapCollector, logits: bool) -> Result<Tensor> {
        let tapped = (0..self.layers.len()).any(|i| taps.wants(&self.node_name(i)));
        if x.track_op() && !tapped {
            if let Some(y) = self.chained(&x)? {
                return Ok(y);
            }
        }
        let mut x = x;
        let last = self.layers.len() - 1;
        let mut i = 0;
        while i <= last && !taps.done() {
            let name = self.node_name(i);
            x = match (&self.layers[i], self.layers.get(i + 1)) {
                // A convolution and its ReLU run as one op unless the convolution's own
                // output is a tap.
                (Layer::Conv(conv), Some(Layer::Relu)) if !taps.wants(&name) => {
                    i += 1;
                    taps.pass(&self.node_name(i), conv.forward_relu(&x)?)?
                }
                (layer, _) if logits && i == last => {
                    let y = layer.forward(&x, mode)?;
                    taps.offer(&name, &y);
                    y
                }
                (layer, _) => taps.pass(&name, layer.forward(&x, mode)?)?,
            };
            i += 1;
        }
        Ok(x)
    }

    /// The sequence as one op ([`conv_relu_chain`]) when it is made of
    /// convolutions each followed by its ReLU, and pools, and the op applies.
    fn chained(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let filters = self
            .layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv(conv) => conv.prepared(),
                _ => Ok(None),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut chain = Vec::new();
        let mut layers = self.layers.iter().zip(&filters).peekable();
        while let Some((layer, filters)) = layers.next() {
            chain.push(match layer {
                Layer::Conv(conv) if matches!(layers.peek(), Some((Layer::Relu, _))) => {
                    layers.next();
                    ChainLayer::ConvRelu {
                        weight: &conv.weight,
                        bias: &conv.bias,
                        winograd: filters.as_deref(),
                        stride: conv.stride,
                        padding: conv.padding,
                    }
                }
                &Layer::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => ChainLayer::MaxPool {
                    kernel,
                    stride,
                    padding,
                },
                _ => return Ok(None),
            });
        }
        Ok(conv_relu_chain(x, &chain)?)
    }
}
