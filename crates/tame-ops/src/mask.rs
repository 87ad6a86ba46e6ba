//! The backward pass of a ReLU fused into the op that produced its output.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use tame_kernels::{relu_masked, Float};

use crate::storage::{run_float_kernel, FloatKernel};

/// (grad_y, y) -> grad_y where y > 0, else 0: the gradient through a ReLU fused into the op
/// that produced y (PyTorch's rule: no gradient where the output is zero).
pub(crate) struct ReluMask;

impl FloatKernel for ReluMask {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        relu_masked(operands[0], operands[1])
    }
}

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "tame-relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2)], "relu")?;
        Ok((out, l1.shape().clone()))
    }
}
