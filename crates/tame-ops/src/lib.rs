//! Differentiable tensor operations that candle 0.11 lacks or cannot back-propagate through.
//!
//! TAME back-propagates its loss through a frozen backbone into an upsampled mask, so every
//! operation on that path needs a working backward pass. candle's native bilinear upsampling
//! has none, its max-pool has one only when kernel == stride, and its nearest upsampling
//! overwrites gradients instead of accumulating them. The versions here are compositions of
//! operations whose backward passes candle does implement (matmul, narrow, reshape, maximum,
//! concatenation), with PyTorch's forward semantics.

mod conv;
mod depthwise;
mod norm;
mod pool;
mod resize;

pub use conv::conv2d;
pub use depthwise::{depthwise_conv2d, Padding};
pub use norm::{batch_norm_eval, batch_norm_train, BatchStats};
pub use pool::{adaptive_avg_pool2d, max_pool2d};
pub use resize::{bilinear_matrix, resize_bilinear};

#[cfg(test)]
mod gradcheck;

/// The data of a contiguous operand of a custom op (callers make operands contiguous first;
/// `op` names the operation in the error otherwise).
fn contiguous<'a, T: candle_core::WithDType>(
    storage: &'a [T],
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage[start..end]),
        None => candle_core::bail!("{op}: expected contiguous operands"),
    }
}
