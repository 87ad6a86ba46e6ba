//! A chain of frozen `relu(conv2d(x) + bias)` layers and max pools (VGG-16's features) as
//! one op, forward and backward (to the chain's input alone).
//!
//! Composed, each layer is a graph node, and candle's backward pass gives every node's input
//! a zero-filled gradient and an addition: for VGG-16's features at batch 8, ~480 MB of
//! tensors filled and added again (~0.2 s a backward pass). Here the chain is one node whose
//! backward walks its layers with the same kernels, so the numbers are the composed chain's;
//! a pool that follows a convolution applies that convolution's ReLU mask while it routes
//! each gradient to its window's maximum, instead of a pass of its own.
//!
//! VGG-16 decides when it applies (a pass that back-propagates to its input and taps none of
//! its features: TAME's masked training pass). With a weight that tracks a gradient, or off
//! the CPU, it returns `None` and the caller composes the separate ops.

use std::any::Any;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use tame_kernels::conv::{self, Geometry};
use tame_kernels::pool::Pool;
use tame_kernels::{relu_masked, Float, Padding};
use tame_ops::storage::{run_with_captured, FloatKernel};
use tame_ops::WinogradFilters;

use super::runs_here;
use crate::lock;

/// The name errors give.
const OP: &str = "conv_relu_chain";

/// One layer of a chain.
#[derive(Clone, Copy)]
pub enum ChainLayer<'a> {
    /// `relu(conv2d(x, weight) + bias)` (weight (C_out, C_in, K, K), bias (C_out)), with the
    /// weight's prepared filters for a 3x3 stride-1 convolution.
    ConvRelu {
        weight: &'a Tensor,
        bias: &'a Tensor,
        winograd: Option<&'a WinogradFilters>,
        stride: usize,
        padding: Padding,
    },
    /// [`tame_ops::max_pool2d`] with these sizes.
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
}

/// The chain `layers` applied to `x` (B, C, H, W), as one op.
///
/// `None` where the op does not apply — where the native kernels do not run
/// ([`tame_ops::Kernels`]: another device or dtype than f32/f64 on the CPU, or the portable
/// path chosen), a weight or bias that tracks a gradient, no layers — and the caller composes the layers
/// from the separate ops instead.
pub fn conv_relu_chain(x: &Tensor, layers: &[ChainLayer]) -> Result<Option<Tensor>> {
    let frozen = layers.iter().all(|layer| match layer {
        ChainLayer::ConvRelu { weight, bias, .. } => !weight.track_op() && !bias.track_op(),
        ChainLayer::MaxPool { .. } => true,
    });
    if !runs_here(x) || !frozen || layers.is_empty() {
        return Ok(None);
    }
    let mut steps = Vec::with_capacity(layers.len());
    let mut dims = x.dims4()?;
    for layer in layers {
        let step = Step::new(layer, dims, x.dtype())?;
        dims = step.output_dims();
        steps.push(step);
    }
    let op = Chain {
        steps,
        keep: x.track_op(),
        saved: Mutex::new(None),
    };
    let x = x.contiguous()?;
    Ok(Some(if op.keep {
        x.apply_op1(op)?
    } else {
        x.apply_op1_no_bwd(&op)?
    }))
}

enum Step {
    ConvRelu {
        g: Geometry,
        weight: Tensor,
        bias: Tensor,
        filters: Option<Tensor>,
    },
    MaxPool(Pool),
}

impl Step {
    fn new(layer: &ChainLayer, input: (usize, usize, usize, usize), dtype: DType) -> Result<Self> {
        Ok(match *layer {
            ChainLayer::ConvRelu {
                weight,
                bias,
                winograd,
                stride,
                padding,
            } => {
                let g = Geometry::new(input, weight.dims4()?, stride, padding)
                    .map_err(candle_core::Error::msg)?;
                let c_out = g.output_dims().1;
                if bias.dims() != [c_out] || [weight, bias].iter().any(|t| t.dtype() != dtype) {
                    candle_core::bail!(
                        "{OP}: a {:?} {:?} weight and {:?} {:?} bias for {c_out} output channels of {dtype:?}",
                        weight.dims(),
                        weight.dtype(),
                        bias.dims(),
                        bias.dtype()
                    );
                }
                Step::ConvRelu {
                    filters: winograd
                        .map(|f| f.transformed(weight, dtype).cloned())
                        .transpose()?,
                    weight: weight.contiguous()?,
                    bias: bias.contiguous()?,
                    g,
                }
            }
            ChainLayer::MaxPool {
                kernel,
                stride,
                padding,
            } => Step::MaxPool(
                Pool::new(input, kernel, stride, padding).map_err(candle_core::Error::msg)?,
            ),
        })
    }

    fn output_dims(&self) -> (usize, usize, usize, usize) {
        match self {
            Step::ConvRelu { g, .. } => g.output_dims(),
            Step::MaxPool(pool) => pool.output_dims(),
        }
    }
}

/// A convolution's operands among a kernel's: weight, bias, prepared filters.
type ConvOperands<'a, T> = (&'a [T], &'a [T], Option<&'a [T]>);

struct Chain {
    steps: Vec<Step>,
    /// The backward pass will run: keep what it reads.
    keep: bool,
    /// The output of every step but the last, as a `Vec<Vec<T>>` for the pass's T.
    saved: Mutex<Option<Box<dyn Any + Send + Sync>>>,
}

impl Chain {
    /// The tensors the kernels read besides their arguments: each convolution's weight and
    /// bias, then the prepared filters.
    fn captured(&self) -> Vec<&Tensor> {
        let convs = self.steps.iter().filter_map(|s| match s {
            Step::ConvRelu {
                weight,
                bias,
                filters,
                ..
            } => Some((weight, bias, filters)),
            Step::MaxPool(_) => None,
        });
        let (params, filters): (Vec<_>, Vec<_>) =
            convs.map(|(w, b, f)| ([w, b], f.as_ref())).unzip();
        params
            .into_iter()
            .flatten()
            .chain(filters.into_iter().flatten())
            .collect()
    }

    /// Each step's convolution operands (`None` for a pool), from operands laid out as
    /// [`captured`](Self::captured) lists them after the first `skip`.
    fn conv_operands<'a, T>(
        &self,
        operands: &[&'a [T]],
        skip: usize,
    ) -> Vec<Option<ConvOperands<'a, T>>> {
        let convs = self
            .steps
            .iter()
            .filter(|s| matches!(s, Step::ConvRelu { .. }))
            .count();
        let mut params = operands[skip..skip + 2 * convs].chunks_exact(2);
        let mut filters = operands[skip + 2 * convs..].iter().copied();
        self.steps
            .iter()
            .map(|s| match s {
                Step::ConvRelu { filters: f, .. } => {
                    let p = params.next().expect("two operands per convolution");
                    Some((p[0], p[1], f.as_ref().and_then(|_| filters.next())))
                }
                Step::MaxPool(_) => None,
            })
            .collect()
    }
}

impl FloatKernel for Chain {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        let x = operands[0];
        let convs = self.conv_operands(operands, 1);
        let mut outputs: Vec<Vec<T>> = Vec::with_capacity(self.steps.len());
        for (step, conv) in self.steps.iter().zip(&convs) {
            let input = outputs.last().map_or(x, Vec::as_slice);
            let y = match (step, conv) {
                (Step::ConvRelu { g, .. }, Some((w, b, f))) => {
                    conv::forward(g, input, w, *f, b, None, true)
                }
                (Step::MaxPool(pool), _) => pool.forward(input),
                (Step::ConvRelu { .. }, None) => unreachable!("operands for every convolution"),
            };
            if !self.keep {
                outputs.clear();
            }
            outputs.push(y);
        }
        let out = outputs.pop().expect("at least one layer");
        if self.keep {
            *lock(&self.saved) = Some(Box::new(outputs));
        }
        out
    }
}

impl CustomOp1 for Chain {
    fn name(&self) -> &'static str {
        "tame-conv-relu-chain"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = run_with_captured(self, &[(storage, layout)], &self.captured(), OP)?;
        let dims = self.steps.last().expect("at least one layer").output_dims();
        Ok((out, Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, out: &Tensor, grad_out: &Tensor) -> Result<Option<Tensor>> {
        let grad_x = grad_out
            .contiguous()?
            .apply_op3_no_bwd(out, x, &ChainGrad(self))?;
        Ok(Some(grad_x))
    }
}

/// (grad_out, out, x) -> grad_x of a [`Chain`] pass.
struct ChainGrad<'a>(&'a Chain);

impl FloatKernel for ChainGrad<'_> {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        let chain = self.0;
        let saved = lock(&chain.saved);
        let saved = saved
            .as_ref()
            .and_then(|s| s.downcast_ref::<Vec<Vec<T>>>())
            .expect("a chain's backward pass runs after its forward pass, in one dtype");
        let (grad_out, out, x) = (operands[0], operands[1], operands[2]);
        let convs = chain.conv_operands(operands, 3);
        let last = chain.steps.len() - 1;
        let output = |i: usize| if i == last { out } else { &saved[i] };
        let input = |i: usize| if i == 0 { x } else { &saved[i - 1] };
        let mut g = grad_out.to_vec();
        // The gradient already zero wherever the step's ReLU clamped (a pool applied it).
        let mut masked = false;
        for i in (0..=last).rev() {
            g = match (&chain.steps[i], &convs[i]) {
                (Step::ConvRelu { g: geometry, .. }, Some((w, ..))) => {
                    let live = if masked {
                        g
                    } else {
                        relu_masked(&g, output(i))
                    };
                    masked = false;
                    conv::input_grad(geometry, &live, w)
                }
                (Step::MaxPool(pool), _) => {
                    masked = i > 0 && matches!(chain.steps[i - 1], Step::ConvRelu { .. });
                    pool.backward(&g, input(i), masked)
                }
                (Step::ConvRelu { .. }, None) => unreachable!("operands for every convolution"),
            };
        }
        g
    }
}

impl CustomOp3 for ChainGrad<'_> {
    fn name(&self) -> &'static str {
        "tame-conv-relu-chain-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let args = [(s1, l1), (s2, l2), (s3, l3)];
        let out = run_with_captured(self, &args, &self.0.captured(), OP)?;
        Ok((out, l3.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::exec::testing::{assert_same_output_and_gradient, max_abs_diff, seeded};
    use tame_ops::{conv2d_fused, max_pool2d, with_kernels, Kernels};

    /// A layer's tensors: (weight, bias, filters) for a convolution, sizes for a pool.
    enum Spec {
        Conv(Tensor, Tensor, Option<WinogradFilters>),
        Pool(usize, usize, usize),
    }

    /// A convolution whose biases are shifted by `shift` (negative: many outputs clamp,
    /// whole pool windows among them).
    fn conv(
        c_in: usize,
        c_out: usize,
        k: usize,
        shift: f64,
        seed: u64,
        dtype: DType,
    ) -> Result<Spec> {
        let dev = Device::Cpu;
        let scale = (2.0 / (c_in * k * k) as f64).sqrt();
        let weight = (seeded(&[c_out, c_in, k, k], seed, &dev)? * scale)?.to_dtype(dtype)?;
        let bias = (seeded(&[c_out], seed + 1, &dev)? + shift)?.to_dtype(dtype)?;
        let filters = WinogradFilters::new(&weight)?;
        Ok(Spec::Conv(weight, bias, filters))
    }

    fn layers(specs: &[Spec]) -> Vec<ChainLayer<'_>> {
        specs
            .iter()
            .map(|s| match s {
                Spec::Conv(weight, bias, filters) => ChainLayer::ConvRelu {
                    weight,
                    bias,
                    winograd: filters.as_ref(),
                    stride: 1,
                    padding: Padding::uniform(weight.dim(3).unwrap() / 2),
                },
                &Spec::Pool(kernel, stride, padding) => ChainLayer::MaxPool {
                    kernel,
                    stride,
                    padding,
                },
            })
            .collect()
    }

    fn composed(x: &Tensor, layers: &[ChainLayer]) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in layers {
            x = match *layer {
                ChainLayer::ConvRelu {
                    weight,
                    bias,
                    winograd,
                    stride,
                    padding,
                } => conv2d_fused(&x, weight, winograd, bias, stride, padding, true)?,
                ChainLayer::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => max_pool2d(&x, kernel, stride, padding)?,
            };
        }
        Ok(x)
    }

    /// The output and the input gradient of `sum(f(x) * r)`.
    fn run(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let var = Var::from_tensor(x)?;
        let y = f(var.as_tensor())?;
        let r = seeded(y.dims(), 5, x.device())?.to_dtype(x.dtype())?;
        let grads = (&y * r)?.sum_all()?.backward()?;
        Ok((y, grads.get(var.as_tensor()).expect("a gradient").clone()))
    }

    #[test]
    fn chain_is_the_composed_layers_bit_for_bit() -> Result<()> {
        // The fused op and the separate ops on the same native kernels.
        with_kernels(Kernels::Native, || {
            for dtype in [DType::F64, DType::F32] {
                // VGG in miniature (the 64-channel layer on the Winograd path), then a 3x3/2
                // padded pool, a pool right after a pool, and a 1x1 convolution.
                let specs = [
                    conv(3, 64, 3, -0.3, 1, dtype)?,
                    conv(64, 64, 3, -1.0, 3, dtype)?,
                    Spec::Pool(2, 2, 0),
                    conv(64, 8, 3, -0.5, 5, dtype)?,
                    Spec::Pool(3, 2, 1),
                    Spec::Pool(2, 2, 0),
                    conv(8, 4, 1, 0.0, 7, dtype)?,
                ];
                let x = seeded(&[2, 3, 18, 17], 11, &Device::Cpu)?.to_dtype(dtype)?;
                let layers = layers(&specs);
                let (y, grad) = run(|x| Ok(conv_relu_chain(x, &layers)?.expect("applies")), &x)?;
                let (y_ref, grad_ref) = run(|x| composed(x, &layers), &x)?;
                let what = format!("{dtype:?}");
                assert_same_output_and_gradient(&what, (&y, &grad), (&y_ref, &grad_ref));
                let zeros = y.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                assert!(
                    zeros.contains(&0.0),
                    "{dtype:?}: no clamped output to test the mask"
                );
            }
            Ok(())
        })
    }

    /// With the portable path chosen the op steps aside, and the layers composed from
    /// candle's operations (what a GPU runs) agree with the fused chain to 1e-10 in f64,
    /// output and input gradient.
    #[test]
    fn the_portable_path_composes_the_layers_and_agrees() -> Result<()> {
        let dtype = DType::F64;
        let specs = [
            conv(3, 8, 3, -0.3, 1, dtype)?,
            Spec::Pool(2, 2, 0),
            conv(8, 8, 3, -0.5, 3, dtype)?,
            Spec::Pool(3, 2, 1),
            conv(8, 4, 1, 0.0, 5, dtype)?,
        ];
        let x = seeded(&[2, 3, 12, 11], 13, &Device::Cpu)?;
        let layers = layers(&specs);
        let fused = |x: &Tensor| Ok(conv_relu_chain(x, &layers)?.expect("applies"));
        let (y, grad) = with_kernels(Kernels::Native, || run(fused, &x))?;
        let (y_ref, grad_ref) = with_kernels(Kernels::Portable, || {
            assert!(conv_relu_chain(&x, &layers)?.is_none());
            run(|x| composed(x, &layers), &x)
        })?;
        assert!(max_abs_diff(&y, &y_ref) < 1e-10);
        assert!(max_abs_diff(&grad, &grad_ref) < 1e-10);
        Ok(())
    }

    #[test]
    fn trainable_weights_are_left_to_the_caller() -> Result<()> {
        // The fused op runs on the native kernels alone.
        with_kernels(Kernels::Native, || {
            let specs = [conv(3, 4, 3, 0.0, 1, DType::F64)?];
            let Spec::Conv(weight, bias, _) = &specs[0] else {
                unreachable!()
            };
            let trainable = Var::from_tensor(weight)?;
            let layer = ChainLayer::ConvRelu {
                weight: trainable.as_tensor(),
                bias,
                winograd: None,
                stride: 1,
                padding: Padding::uniform(1),
            };
            let x = seeded(&[1, 3, 5, 5], 2, &Device::Cpu)?;
            assert!(conv_relu_chain(&x, &[layer])?.is_none());
            let y = conv_relu_chain(&x, &layers(&specs))?.expect("applies");
            assert!(!y.track_op());
            assert_eq!(max_abs_diff(&y, &composed(&x, &layers(&specs))?), 0.0);
            Ok(())
        })
    }
}
