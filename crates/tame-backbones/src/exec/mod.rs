//! How the networks run. A definition (`vgg.rs`, `resnet.rs`, `efficientnet.rs`) says what
//! its layers are, their checkpoint and tap names, and chains its forward pass through the
//! runners here; the runners decide which nodes run together. They fuse only nodes whose own
//! outputs no tap asks for (asking for one keeps that node apart), and a pass stops as soon as
//! nothing more is needed. The ops choose the native CPU kernels or the portable candle path
//! ([`tame_ops::Kernels`]: CUDA, other dtypes, or `TAME_KERNELS=portable`); the fused runs of
//! frozen layers here exist on the native kernels only and step aside otherwise.
//!
//! - **Layer sequences** ([`Sequential`]: VGG-16's features and classifier) run each
//!   convolution with its ReLU as one op ([`tame_ops::conv2d_fused`]), unless the
//!   convolution's own output is a tap. In a pass that back-propagates to its input and taps
//!   none of a sequence of convolutions, ReLUs and pools (TAME's masked training pass over
//!   VGG-16's features), the sequence runs as one [`conv_relu_chain`] op: one graph node for
//!   thirteen convolutions and five pools.
//! - **Convolution + batch norm pairs** ([`ConvBn`]) fuse the batch norm with the ReLU and
//!   the identity after it; in eval mode the batch norm is folded into the convolution before
//!   it (the ReLU, and at a block's end the identity, added in the same pass:
//!   [`tame_ops::conv2d_fused_residual`]). The folded copy is made on the first eval pass and
//!   dropped by every train pass, which moves the running statistics it comes from.
//! - **Residual stages** ([`run_stages`]) run, in train mode, each run of consecutive
//!   bottleneck blocks whose inner nodes no tap asks for, ended by a block whose output a tap
//!   asks for, as one [`bottleneck_train`] op, each batch norm's running statistics updated as
//!   its own op would. TAME's unmasked pass taps the stage outputs `layer2` to `layer4` (three
//!   ops); the masked pass, which back-propagates to the image, taps none: ResNet-50's sixteen
//!   blocks are one graph node.
//!
//! The fused runs use the kernels of `tame-kernels` that the separate ops of `tame-ops` run, in
//! the same order, so that their numbers are the composed ops' bit for bit.

mod bottleneck;
mod chain;
mod conv_bn;
mod residual;
mod sequential;
#[cfg(test)]
mod testing;

pub(crate) use bottleneck::{bottleneck_train, FrozenBlock, FrozenConvBn};
pub(crate) use chain::{conv_relu_chain, ChainLayer};
pub(crate) use conv_bn::{conv_bn_relu, ConvBn};
pub(crate) use residual::{run_stages, Bottleneck, Stage};
pub(crate) use sequential::{Layer, Sequential};

use candle_core::Tensor;
use tame_ops::Kernels;

/// The fused ops run where the native kernels do ([`Kernels`]: f32 and f64 on the CPU,
/// unless the portable path is chosen); elsewhere the network composes the separate ops.
fn runs_here(x: &Tensor) -> bool {
    Kernels::for_tensor(x) == Kernels::Native
}
