//! How networks are executed: fused CPU runs of frozen layers.
//!
//! A run of layers whose inner outputs no tap asks for can be one graph node instead of one
//! per layer: ResNet-50's train-mode bottleneck blocks ([`bottleneck_train`]) and VGG-16's
//! features in its masked training pass ([`conv_relu_chain`]). Each runs the kernels of
//! `tame-kernels` that the separate ops of `tame-ops` run, in the same order, so that the
//! numbers are the composed ops' bit for bit; each returns `None` where it does not apply,
//! and the network composes the separate ops instead.

mod bottleneck;
mod chain;
#[cfg(test)]
mod testing;

pub use bottleneck::{bottleneck_train, FrozenBlock, FrozenConvBn};
pub use chain::{conv_relu_chain, ChainLayer};

use candle_core::Tensor;
use tame_ops::Kernels;

/// The fused ops run where the native kernels do ([`Kernels`]: f32 and f64 on the CPU,
/// unless the portable path is chosen); elsewhere the network composes the separate ops.
fn runs_here(x: &Tensor) -> bool {
    Kernels::for_tensor(x) == Kernels::Native
}

/// A fused op's stash, locked; a panic elsewhere while it was held leaves a valid value (it
/// is replaced whole).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
