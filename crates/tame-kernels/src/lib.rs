//! The CPU kernels of TAME's tensor operations, forward and backward: dense convolution
//! (im2col + GEMM, and Winograd's F(2x2, 3x3) for 3x3 stride-1 layers), depthwise
//! convolution, max pooling and the batch norm's passes.
//!
//! **Invariant:** kernels know nothing of candle; data come as contiguous slices of one
//! [`Float`] type (f32 or f64) with the shapes beside them ([`conv::Geometry`],
//! [`depthwise::Geometry`], [`pool::Pool`], [`norm::ChannelAffine`]), and results go back as
//! vectors. The graph nodes around them, and the choice between them and candle's portable
//! operations, are `tame-ops`'.
//!
//! Each module's documentation says how its kernel is made fast, with the measurements
//! behind it.
//!
//! # Conventions
//!
//! - Work is split over rayon's pool. Outputs are initialised by the tasks that fill them,
//!   chunk by chunk, while the chunk is in that core's cache (`par_chunks_zeroed`;
//!   `par_chunks_written`, with no zeroing at all, where the task writes every value itself,
//!   as the batch norms' passes do): zero-filling a whole output first is a pass over it on
//!   one thread.
//! - A ReLU fused into a kernel passes no gradient where its output is zero ([`relu_masked`],
//!   PyTorch's rule). Applied in place it stores every value back (`clamp_negatives`): a
//!   store only where the value is negative compiles to masked vector stores, slow on AMD's
//!   cores.
//! - Rows split into their two phases for a stride-2 window (max pools, im2col, Winograd's
//!   input blocks) go through one pass over pairs (`split_pairs`): strided gathers ran one
//!   value at a time.
//! - Work buffers (column matrices, Winograd operands) are reused per thread (`scratch.rs`).

pub mod conv;
pub mod depthwise;
mod float;
pub mod norm;
pub mod pool;
mod scratch;
mod slices;

pub use float::Float;
pub use slices::relu_masked;

/// Zero padding of the four sides, in pixels (TensorFlow's "SAME" padding is asymmetric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// The same padding on every side.
    pub const fn uniform(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }
}

/// Sizes that do not fit together (an input smaller than its filter, a weight for other
/// channels); the message names the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(String);
