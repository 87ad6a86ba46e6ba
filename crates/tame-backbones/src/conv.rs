//! The dense convolution layer of VGG-16 and ResNet-50: weights by torchvision's names, the
//! arithmetic in [`tame_ops::conv2d`] (candle's CPU convolution and its backward pass are
//! several times slower; see docs/BENCHMARKS.md).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use tame_ops::Padding;

pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: Padding,
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
        Ok(Self {
            weight: vb.get((cout, cin, k, k), "weight")?,
            bias: if bias {
                Some(vb.get(cout, "bias")?)
            } else {
                None
            },
            stride,
            padding: Padding::uniform(padding),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = tame_ops::conv2d(x, &self.weight, self.stride, self.padding)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}
