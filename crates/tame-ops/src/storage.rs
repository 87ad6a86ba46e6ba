//! The bridge from candle's CPU storage to the kernels of `tame-kernels`, for custom ops
//! (this crate's, and the fused runs of layers that `tame-backbones` builds on the same
//! kernels): a kernel sees the contiguous data of its operands as slices of one [`Float`]
//! type; the op around it unpacks the storage and makes the graph node.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use tame_kernels::Float;

/// The arithmetic of a custom op on the contiguous data of its operands, all of one float
/// type.
pub trait FloatKernel {
    /// The op's output from `operands`, in the order the op gives them.
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T>;
}

/// Runs `kernel` on f32 or f64 CPU operands (callers make them contiguous first; `op` names
/// the operation in the errors).
pub fn run_float_kernel(
    kernel: &impl FloatKernel,
    operands: &[(&CpuStorage, &Layout)],
    op: &str,
) -> Result<CpuStorage> {
    fn data<'a, T>(
        operands: &[(&'a CpuStorage, &Layout)],
        of_type: fn(&CpuStorage) -> Option<&Vec<T>>,
        op: &str,
    ) -> Result<Vec<&'a [T]>> {
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

/// Runs `kernel` on `args` followed by the `captured` tensors (an op's weights, which it
/// holds rather than takes as arguments); all on the CPU and contiguous.
pub fn run_with_captured(
    kernel: &impl FloatKernel,
    args: &[(&CpuStorage, &Layout)],
    captured: &[&Tensor],
    op: &str,
) -> Result<CpuStorage> {
    let guards: Vec<_> = captured.iter().map(|t| t.storage_and_layout()).collect();
    let mut operands = args.to_vec();
    for (storage, layout) in &guards {
        match &**storage {
            Storage::Cpu(s) => operands.push((s, *layout)),
            _ => candle_core::bail!("{op}: weights on another device"),
        }
    }
    run_float_kernel(kernel, &operands, op)
}
