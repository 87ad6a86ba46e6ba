//! Differentiable tensor operations that candle 0.11 lacks, cannot back-propagate through,
//! or runs too slowly, with PyTorch's forward semantics.
//!
//! TAME back-propagates its loss through a frozen backbone into an upsampled mask, so every
//! operation on that path needs a working backward pass. candle's native bilinear upsampling
//! has none, its max-pool has one only when kernel == stride, and its nearest upsampling
//! overwrites gradients instead of accumulating them; its CPU convolution, grouped convolution
//! and batch norm run several times slower than the kernels of `tame-kernels` (each module
//! gives figures).
//!
//! # The operations
//!
//! - Compositions of operations whose backward passes candle does implement (matmul, narrow,
//!   reshape, maximum, concatenation): [`resize_bilinear`] (two interpolation matrices, see
//!   [`bilinear_matrix`]), [`adaptive_avg_pool2d`], [`linear`](fn@linear) (its products
//!   arranged for the weight's memory traffic).
//! - Custom ops, forward and backward, over the kernels of `tame-kernels`: [`max_pool2d`],
//!   [`conv2d`] and its fused forms [`conv2d_fused`] and [`conv2d_fused_residual`] (with a
//!   frozen weight's [`WinogradFilters`]), [`depthwise_conv2d`], and [`batch_norm_eval`] /
//!   [`batch_norm_train`] (with a fused [`Epilogue`]; [`BatchStats`] for the running
//!   statistics). They run the native kernels on f32 and f64 CPU tensors and hand anything
//!   else (other devices such as CUDA, other dtypes such as f16, operands they give no
//!   gradient to, such as tracked running statistics) to portable compositions of candle
//!   operations.
//!
//! [`Kernels`] is the one place that decides between the two: `TAME_KERNELS=portable` runs
//! the portable compositions on the CPU too (the path a GPU runs, testable without one), and
//! [`with_kernels`] chooses for one thread's calls.
//!
//! [`host`] holds the copies between host memory and a device, counted so that tests can
//! bound them in the per-batch loops.
//!
//! Half-precision tensors (bf16, f16: a backbone run in lower precision) take the portable
//! path; there batch norms and average pools are computed in f32 and rounded back (a half
//! type's few mantissa bits lose a sum of thousands of values), and so are the convolutions
//! on the CPU, which candle has no bf16 kernel for.
//!
//! [`storage`] is the bridge from candle's CPU storage to the kernels, for custom ops built
//! elsewhere on the same kernels (the fused runs of layers of `tame-backbones`).
//!
//! Every op is tested against a straightforward implementation (candle's own where it has
//! one), its own backward passes against finite differences, and its native kernels against
//! its portable path.

mod conv;
mod depthwise;
mod finite;
pub mod host;
mod linear;
mod mask;
mod norm;
mod policy;
mod pool;
mod resize;
pub mod storage;

pub use conv::{conv2d, conv2d_fused, conv2d_fused_residual, grouped_conv2d, WinogradFilters};
pub use depthwise::depthwise_conv2d;
pub use finite::all_finite;
pub use linear::linear;
pub use norm::{batch_norm_eval, batch_norm_train, BatchStats, Epilogue};
pub use policy::{with_kernels, Kernels};
pub use pool::{adaptive_avg_pool2d, max_pool2d};
pub use resize::{bilinear_matrix, resize_bilinear};
pub use tame_kernels::Padding;

#[cfg(test)]
mod gradcheck;
#[cfg(test)]
mod half;
