//! Depthwise 2-D convolution (one filter per channel) as a graph node over the direct loop
//! of [`tame_kernels::depthwise`], with its own backward pass.
//!
//! candle 0.11 runs a grouped convolution as one convolution per group, so a depthwise layer of
//! 1152 channels costs 1152 im2col + GEMM calls forward and as many transposed convolutions
//! backward: EfficientNet's depthwise layers ran tens of times slower than their arithmetic.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use tame_kernels::depthwise::{self, Geometry};
use tame_kernels::{Float, Padding};

use crate::policy::{widened, Kernels};
use crate::storage::{run_float_kernel, FloatKernel};

/// The name errors give.
const OP: &str = "depthwise_conv2d";

/// Depthwise convolution of `x` (B, C, H, W) with `weight` (C, 1, K, K): output channel c is
/// input channel c correlated with filter c, after zero `padding`, every `stride` pixels —
/// PyTorch's `conv2d(x, weight, stride=stride, groups=C)` on the padded input.
///
/// Where the native kernels run ([`Kernels`]: f32/f64 on the CPU) this is a direct loop
/// (forward and backward); elsewhere candle's grouped convolution is used.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: Padding,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (wc, one, kh, kw) = weight.dims4()?;
    if wc != c || one != 1 || kh != kw {
        candle_core::bail!(
            "{OP}: weight {:?} does not fit {c} channels with square filters",
            weight.dims()
        );
    }
    let geometry =
        Geometry::new((b, c, h, w), kh, stride, padding).map_err(candle_core::Error::msg)?;
    if Kernels::for_tensor(x) == Kernels::Portable {
        // As the dense convolution: candle has no bf16 kernel on the CPU.
        if crate::conv::widens(x) {
            let y = depthwise_conv2d(&widened(x)?, &widened(weight)?, stride, padding)?;
            return y.to_dtype(x.dtype());
        }
        return crate::grouped_conv2d(x, weight, stride, padding, c);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, DepthwiseOp(geometry))
}

/// (x, weight) -> the depthwise convolution of x.
struct DepthwiseOp(Geometry);

impl FloatKernel for DepthwiseOp {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        depthwise::forward(&self.0, operands[0], operands[1])
    }
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = Shape::from(self.0.output_dims());
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2)], OP)?;
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = &self.0;
        let grad_out = grad_out.contiguous()?;
        let (gx, gw) = match x.dtype() {
            DType::F32 => grads::<f32>(g, x, weight, &grad_out)?,
            DType::F64 => grads::<f64>(g, x, weight, &grad_out)?,
            dtype => candle_core::bail!("{OP}: no backward pass for {dtype:?}"),
        };
        Ok((Some(gx), gw))
    }
}

/// Both gradients; the weight's only when something tracks it (frozen backbones do not).
fn grads<T: WithDType + Float>(
    g: &Geometry,
    x: &Tensor,
    weight: &Tensor,
    grad_out: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let go = grad_out.flatten_all()?.to_vec1::<T>()?;
    let w = weight.flatten_all()?.to_vec1::<T>()?;
    let gx = Tensor::from_vec(depthwise::grad_input(g, &go, &w), x.shape(), x.device())?;
    let gw = if weight.track_op() {
        let xs = x.flatten_all()?.to_vec1::<T>()?;
        Some(Tensor::from_vec(
            depthwise::grad_weight(g, &go, &xs),
            weight.shape(),
            weight.device(),
        )?)
    } else {
        None
    };
    Ok((gx, gw))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::gradcheck::{
        assert_all_close, assert_gradients_match, max_abs_diff, native_and_portable,
        output_and_gradients, seeded,
    };

    /// candle's grouped convolution on the explicitly padded input (the portable path).
    fn reference(x: &Tensor, w: &Tensor, stride: usize, p: Padding) -> Tensor {
        crate::grouped_conv2d(x, w, stride, p, x.dim(1).unwrap()).unwrap()
    }

    const CASES: [(usize, usize, usize, usize, Padding); 5] = [
        // (h, w, k, stride, padding)
        (
            7,
            7,
            3,
            1,
            Padding {
                top: 1,
                bottom: 1,
                left: 1,
                right: 1,
            },
        ),
        (
            8,
            6,
            3,
            2,
            Padding {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1,
            },
        ),
        (
            9,
            9,
            5,
            2,
            Padding {
                top: 1,
                bottom: 2,
                left: 2,
                right: 1,
            },
        ),
        (
            5,
            4,
            5,
            1,
            Padding {
                top: 2,
                bottom: 2,
                left: 2,
                right: 2,
            },
        ),
        (
            6,
            6,
            3,
            3,
            Padding {
                top: 0,
                bottom: 0,
                left: 0,
                right: 0,
            },
        ),
    ];

    #[test]
    fn forward_equals_the_grouped_convolution() {
        let dev = Device::Cpu;
        for (i, &(h, w, k, s, p)) in CASES.iter().enumerate() {
            let x = seeded(&[2, 3, h, w], i as u64, &dev).unwrap();
            let wt = seeded(&[3, 1, k, k], 50 + i as u64, &dev).unwrap();
            let ours = depthwise_conv2d(&x, &wt, s, p).unwrap();
            let theirs = reference(&x, &wt, s, p);
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_abs_diff(&ours, &theirs) < 1e-12, "case {i}");
            let ours32 = depthwise_conv2d(
                &x.to_dtype(DType::F32).unwrap(),
                &wt.to_dtype(DType::F32).unwrap(),
                s,
                p,
            )
            .unwrap();
            assert!(max_abs_diff(&ours32.to_dtype(DType::F64).unwrap(), &theirs) < 1e-5);
        }
    }

    #[test]
    fn input_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        for (i, &(h, w, k, s, p)) in CASES.iter().enumerate() {
            let x = seeded(&[2, 2, h, w], 10 + i as u64, &dev).unwrap();
            let wt = seeded(&[2, 1, k, k], 60 + i as u64, &dev).unwrap();
            assert_gradients_match(&x, |t| depthwise_conv2d(t, &wt, s, p)).unwrap();
        }
    }

    #[test]
    fn weight_gradient_equals_the_grouped_convolution() {
        let dev = Device::Cpu;
        for (i, &(h, w, k, s, p)) in CASES.iter().enumerate() {
            let x = seeded(&[2, 3, h, w], 20 + i as u64, &dev).unwrap();
            let r = seeded(
                &[
                    2,
                    3,
                    (h + p.top + p.bottom - k) / s + 1,
                    (w + p.left + p.right - k) / s + 1,
                ],
                7,
                &dev,
            )
            .unwrap();
            let wt =
                Var::from_tensor(&seeded(&[3, 1, k, k], 70 + i as u64, &dev).unwrap()).unwrap();
            let ours = (depthwise_conv2d(&x, wt.as_tensor(), s, p).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let theirs = (reference(&x, wt.as_tensor(), s, p) * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (
                ours.get(wt.as_tensor()).unwrap(),
                theirs.get(wt.as_tensor()).unwrap(),
            );
            assert!(max_abs_diff(a, b) < 1e-10, "case {i}");
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&seeded(&[1, 2, 5, 5], 1, &dev).unwrap()).unwrap();
        let wt = seeded(&[2, 1, 3, 3], 2, &dev).unwrap();
        let grads = depthwise_conv2d(x.as_tensor(), &wt, 1, Padding::uniform(1))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(&wt).is_none());
    }

    /// The native kernels and the portable path (candle's grouped convolution, what a GPU
    /// runs) agree to 1e-12 in f64, output and both gradients.
    #[test]
    fn native_and_portable_agree() -> Result<()> {
        let dev = Device::Cpu;
        for (i, &(h, w, k, s, p)) in CASES.iter().enumerate() {
            let vars = [
                seeded(&[2, 3, h, w], 30 + i as u64, &dev)?,
                seeded(&[3, 1, k, k], 80 + i as u64, &dev)?,
            ]
            .map(|t| Var::from_tensor(&t).unwrap());
            let [x, wt] = vars.each_ref().map(|v| v.as_tensor());
            let (native, portable) = native_and_portable(|| {
                output_and_gradients(&depthwise_conv2d(x, wt, s, p)?, &[x, wt])
            })?;
            assert_all_close(&format!("case {i}"), &native, &portable, 1e-12);
        }
        Ok(())
    }

    #[test]
    fn refuses_mismatched_weights() {
        let dev = Device::Cpu;
        let x = seeded(&[1, 2, 5, 5], 1, &dev).unwrap();
        let wt = seeded(&[3, 1, 3, 3], 2, &dev).unwrap();
        assert!(depthwise_conv2d(&x, &wt, 1, Padding::uniform(1)).is_err());
    }
}
