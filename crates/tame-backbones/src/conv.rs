//! The dense convolution layer of VGG-16 and ResNet-50: weights by torchvision's names, the
//! arithmetic in [`tame_ops::conv2d_fused`] (candle's CPU convolution and its backward pass
//! are several times slower; see docs/BENCHMARKS.md).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use tame_ops::{Padding, WinogradFilters};

pub struct Conv {
    weight: Tensor,
    /// Zeros for a convolution without bias: the fused op adds one either way.
    bias: Tensor,
    stride: usize,
    padding: Padding,
    /// The weight's filters transformed once for the Winograd path (3x3, stride 1): the
    /// weights of a loaded backbone never change.
    winograd: Option<WinogradFilters>,
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
        // A trainable weight (a `Var`) would leave prepared filters stale.
        let winograd = if stride == 1 && !weight.is_variable() {
            WinogradFilters::new(&weight)?
        } else {
            None
        };
        Ok(Self {
            weight,
            winograd,
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

    fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (w, b) = (&self.weight, &self.bias);
        let winograd = self.winograd.as_ref();
        tame_ops::conv2d_fused(x, w, winograd, b, self.stride, self.padding, relu)
    }
}
