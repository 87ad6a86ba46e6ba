//! Differentiable tensor operations that candle 0.11 lacks, cannot back-propagate through,
//! or runs too slowly, with PyTorch's forward semantics.
//!
//! TAME back-propagates its loss through a frozen backbone into an upsampled mask, so every
//! operation on that path needs a working backward pass. candle's native bilinear upsampling
//! has none, its max-pool has one only when kernel == stride, and its nearest upsampling
//! overwrites gradients instead of accumulating them; its CPU convolution, grouped convolution
//! and batch norm run several times slower than the kernels here (each module gives figures).
//!
//! Two kinds of operation live here:
//! - compositions of operations whose backward passes candle does implement (matmul, narrow,
//!   reshape, maximum, concatenation): [`resize_bilinear`] (two interpolation matrices),
//!   [`adaptive_avg_pool2d`], [`linear`](fn@linear) (its products arranged for the weight's
//!   memory traffic);
//! - custom ops with kernels of their own, forward and backward: [`max_pool2d`] (`pool.rs`),
//!   [`conv2d`] and its fused forms (`conv.rs`, `conv/winograd.rs`), [`depthwise_conv2d`],
//!   [`batch_norm_eval`] / [`batch_norm_train`] (`norm.rs`), and the train-mode runs of frozen
//!   layers [`bottleneck_train`] and [`conv_relu_chain`], each one graph node. They run f32 and
//!   f64 on the CPU and hand anything else (other devices such as CUDA, other dtypes such as
//!   f16, operands they give no gradient to, such as tracked running statistics) to
//!   compositions of candle operations.
//!
//! Each module's documentation says how its op is made fast, with the measurements behind it.
//!
//! # Conventions of the kernels
//!
//! - A kernel sees the contiguous data of its operands as slices of one float type (the
//!   crate's `FloatKernel` trait; of candle it knows only the element trait `WithDType`); the
//!   op around it unpacks candle's storage and makes the graph node.
//! - Work is split over rayon's global pool. Outputs are initialised by the tasks that fill
//!   them, chunk by chunk, while the chunk is in that core's cache (`par_chunks_zeroed`;
//!   `par_chunks_written`, with no zeroing at all, where the task writes every value itself,
//!   as the batch norms' passes do): zero-filling a whole output first is a pass over it on one
//!   thread.
//! - A ReLU fused into an op passes no gradient where its output is zero (`ReluMask`,
//!   PyTorch's rule). Applied in place it stores every value back (`clamp_negatives`): a store
//!   only where the value is negative compiles to masked vector stores, slow on AMD's cores.
//! - Rows split into their two phases for a stride-2 window (max pools, im2col, Winograd's
//!   input blocks) go through one pass over pairs (`split_pairs`): strided gathers ran one
//!   value at a time.
//! - Work buffers (column matrices, Winograd operands) are reused per thread (`scratch.rs`).
//!
//! Every op is tested against a straightforward implementation (candle's own where it has
//! one), its own backward passes against finite differences, and the fused runs of layers
//! against the composed ops, bit for bit.

mod bottleneck;
mod chain;
mod conv;
mod depthwise;
mod linear;
mod norm;
mod pool;
mod resize;
mod scratch;

pub use bottleneck::{bottleneck_train, FrozenBlock, FrozenConvBn};
pub use chain::{conv_relu_chain, ChainLayer};
pub use conv::{conv2d, conv2d_fused, conv2d_fused_residual, WinogradFilters};
pub use depthwise::{depthwise_conv2d, Padding};
pub use linear::linear;
pub use norm::{batch_norm_eval, batch_norm_train, BatchStats, Epilogue};
pub use pool::{adaptive_avg_pool2d, max_pool2d};
pub use resize::{bilinear_matrix, resize_bilinear};

#[cfg(test)]
mod gradcheck;

/// The arithmetic of a custom op on the contiguous data of its operands, all of one float
/// type.
trait FloatKernel {
    fn run<T: candle_core::WithDType>(&self, operands: &[&[T]]) -> Vec<T>;
}

/// Runs `kernel` on f32 or f64 CPU operands (callers make them contiguous first; `op` names
/// the operation in the errors).
fn run_float_kernel(
    kernel: &impl FloatKernel,
    operands: &[(&candle_core::CpuStorage, &candle_core::Layout)],
    op: &str,
) -> candle_core::Result<candle_core::CpuStorage> {
    use candle_core::CpuStorage;
    fn data<'a, T>(
        operands: &[(&'a CpuStorage, &candle_core::Layout)],
        of_type: fn(&CpuStorage) -> Option<&Vec<T>>,
        op: &str,
    ) -> candle_core::Result<Vec<&'a [T]>> {
        operands
            .iter()
            .map(|&(storage, layout)| {
                let values = of_type(storage).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{op}: f32 or f64 operands of one type expected"
                    ))
                })?;
                match layout.contiguous_offsets() {
                    Some((start, end)) => Ok(&values[start..end]),
                    None => candle_core::bail!("{op}: expected contiguous operands"),
                }
            })
            .collect()
    }
    fn f32s(s: &CpuStorage) -> Option<&Vec<f32>> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn f64s(s: &CpuStorage) -> Option<&Vec<f64>> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    Ok(match operands.first().map(|o| o.0) {
        Some(CpuStorage::F32(_)) => CpuStorage::F32(kernel.run(&data(operands, f32s, op)?)),
        Some(CpuStorage::F64(_)) => CpuStorage::F64(kernel.run(&data(operands, f64s, op)?)),
        _ => candle_core::bail!("{op}: f32 or f64 operands of one type expected"),
    })
}

/// A fused op's stash, locked; a panic elsewhere while it was held leaves a valid value (it
/// is replaced whole).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `len` values made in parallel, `chunk` at a time, by `fill(index, chunk)` (chunk `index`
/// holds values `index * chunk..`): each chunk is zeroed by the task that fills it, while it
/// is in that core's cache. Zero-filling a whole output first is a pass over all of it on
/// one thread (with the convolutions' output fill, ~7 % of a ResNet-50 training step).
fn par_chunks_zeroed<T: candle_core::WithDType>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let mut values: Vec<T> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, part)| {
            part.fill(MaybeUninit::new(T::zero()));
            // SAFETY: every value of the part was just written; MaybeUninit<T> has T's layout.
            let part = unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(i, part);
        });
    // SAFETY: the parts cover 0..len and were all written above.
    unsafe { values.set_len(len) };
    values
}

/// As [`par_chunks_zeroed`] for a `fill` that writes every value of its chunk itself: no
/// zeroing first (a batch norm's output and input gradient, ~1.5 % of a ResNet-50
/// training step as memset).
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
unsafe fn par_chunks_written<T: candle_core::WithDType>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut values: Vec<T> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, part)| fill(i, part));
    // SAFETY: the parts cover 0..len and the caller vouches that `fill` wrote them all.
    unsafe { values.set_len(len) };
    values
}

/// input[2t] -> even[t] and input[2t + 1] -> odd[t] (even and odd as long), as far as
/// they reach: a row split into its two phases for a stride-2 window (convolution, max
/// pool, Winograd's blocks). One pass over pairs: strided gathers ran one value at a time.
pub(crate) fn split_pairs<T: candle_core::WithDType>(input: &[T], even: &mut [T], odd: &mut [T]) {
    let pairs = input.chunks_exact(2);
    let last = pairs.remainder().first();
    for ((pair, e), o) in pairs.zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
    // An odd-length input's last value, input[2 · (len / 2)], goes to even[len / 2].
    if let (Some(&v), Some(d)) = (last, even.get_mut(input.len() / 2)) {
        *d = v;
    }
}

/// ReLU in place (NaN stays NaN, as PyTorch's).
///
/// Every value is stored back, the kept ones as `v + 0` (-0 becomes +0): a store of `v`
/// itself is a no-op the compiler drops, leaving a store only where the value is negative,
/// which vectorises to masked stores. AMD's cores run those slowly: they were a third of the
/// time of the convolutions' bias, residual and ReLU passes in ResNet-50's forward pass.
fn clamp_negatives<T: candle_core::WithDType>(values: &mut [T]) {
    for v in values {
        *v = if *v < T::zero() {
            T::zero()
        } else {
            *v + T::zero()
        };
    }
}

/// (grad_y, y) -> grad_y where y > 0, else 0: the backward pass of a ReLU fused into the op
/// that produced y (PyTorch's: no gradient where the output is zero).
struct ReluMask;

impl FloatKernel for ReluMask {
    fn run<T: candle_core::WithDType>(&self, operands: &[&[T]]) -> Vec<T> {
        relu_masked(operands[0], operands[1])
    }
}

/// `g` where `y` > 0, else 0 (in parallel).
fn relu_masked<T: candle_core::WithDType>(g: &[T], y: &[T]) -> Vec<T> {
    use rayon::prelude::*;
    g.par_iter()
        .zip(y)
        .map(|(&g, &y)| if y > T::zero() { g } else { T::zero() })
        .collect()
}

/// Runs `kernel` on `args` followed by the `captured` tensors (an op's weights, which it
/// holds rather than takes as arguments); all on the CPU.
fn run_with_captured(
    kernel: &impl FloatKernel,
    args: &[(&candle_core::CpuStorage, &candle_core::Layout)],
    captured: &[&candle_core::Tensor],
    op: &str,
) -> candle_core::Result<candle_core::CpuStorage> {
    let guards: Vec<_> = captured.iter().map(|t| t.storage_and_layout()).collect();
    let mut operands = args.to_vec();
    for (storage, layout) in &guards {
        match &**storage {
            candle_core::Storage::Cpu(s) => operands.push((s, *layout)),
            _ => candle_core::bail!("{op}: weights on another device"),
        }
    }
    run_float_kernel(kernel, &operands, op)
}

impl candle_core::CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "tame-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2)], "relu")?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::{clamp_negatives, par_chunks_written, par_chunks_zeroed};

    /// As the plain `if v < 0 { v = 0 }`, NaN and infinities included, over a length that
    /// leaves a remainder after the vector loop.
    #[test]
    fn relu_in_place_zeroes_the_negatives_only() {
        let mut values: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        values.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            -1e-30,
        ]);
        let mut expected = values.clone();
        for v in &mut expected {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
        clamp_negatives(&mut values);
        for (i, (v, e)) in values.iter().zip(&expected).enumerate() {
            assert!(v == e || (v.is_nan() && e.is_nan()), "{i}: {v} vs {e}");
        }
        let mut doubles = vec![-2.0f64, 3.0, f64::NAN];
        clamp_negatives(&mut doubles);
        assert_eq!(doubles[..2], [0.0, 3.0]);
        assert!(doubles[2].is_nan());
    }

    /// Every chunk is handed out once, zeroed, with its index; a short last chunk too.
    #[test]
    fn chunks_arrive_zeroed_with_their_index() {
        for (len, chunk) in [(10, 3), (9, 3), (1, 4), (0, 5), (7, 0)] {
            let values: Vec<f32> = par_chunks_zeroed(len, chunk, |i, part| {
                for (j, v) in part.iter_mut().enumerate() {
                    assert_eq!(*v, 0.0);
                    *v += (i * chunk.max(1) + j) as f32;
                }
            });
            let expected: Vec<f32> = (0..len).map(|v| v as f32).collect();
            assert_eq!(values, expected, "len {len}, chunk {chunk}");
        }
    }

    /// Every chunk is handed out once with its index, a short last chunk too, and what the
    /// fill writes is the result.
    #[test]
    fn written_chunks_cover_the_values_with_their_index() {
        for (len, chunk) in [(10, 3), (9, 3), (1, 4), (0, 5), (7, 0)] {
            // SAFETY: the fill writes every value of its chunk.
            let values: Vec<f32> = unsafe {
                par_chunks_written(len, chunk, |i, part| {
                    for (j, v) in part.iter_mut().enumerate() {
                        v.write((i * chunk.max(1) + j) as f32);
                    }
                })
            };
            let expected: Vec<f32> = (0..len).map(|v| v as f32).collect();
            assert_eq!(values, expected, "len {len}, chunk {chunk}");
        }
    }
}
