//! Dense 2-D convolution as graph nodes, forward and backward, over the kernels of
//! [`tame_kernels::conv`] (im2col + GEMM, and Winograd's F(2x2, 3x3) for 3x3 stride-1
//! layers).
//!
//! candle 0.11's CPU convolution builds its im2col tiles one output pixel at a time with
//! strided writes, converts the whole input to NHWC on one thread, and back-propagates to the
//! input through a direct-loop `conv_transpose2d`; how the kernels do instead, with the
//! measurements, is in their module's documentation. [`conv2d_fused`] adds the bias and
//! applies the ReLU in the kernel's pass over each tile of the output, and
//! [`conv2d_fused_residual`] starts the output as residual + bias (a ResNet block's end with
//! its batch norm folded); one backward pass serves the convolution, the bias and the ReLU
//! (whose mask comes from the output itself), and skips the products of frozen operands.
//! [`WinogradFilters`] holds a frozen weight's transformed filters, computed once.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use tame_kernels::conv::{self, winograd, Geometry};
use tame_kernels::{Float, Padding};

use crate::mask::ReluMask;
use crate::policy::{is_half, widened, Kernels};
use crate::storage::{run_float_kernel, run_with_captured, FloatKernel};

/// The name errors give.
const OP: &str = "conv2d";

/// Convolution of `x` (B, C_in, H, W) with `weight` (C_out, C_in, K_h, K_w) after zero
/// `padding`, every `stride` pixels, without bias — PyTorch's `conv2d(x, weight,
/// stride=stride)` on the padded input (no dilation, no groups).
///
/// Where the native kernels run ([`Kernels`]: f32/f64 on the CPU) the GEMM path of
/// `tame-kernels` runs, forward and backward; anything else goes to candle's `conv2d` on the
/// explicitly padded input.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: Padding) -> Result<Tensor> {
    let (c_out, ..) = weight.dims4()?;
    let no_bias = Tensor::zeros(c_out, weight.dtype(), weight.device())?;
    conv2d_fused(x, weight, None, &no_bias, stride, padding, false)
}

/// The filters of a 3x3 convolution transformed once for the Winograd forward pass that
/// [`conv2d_fused`] runs on 3x3 stride-1 convolutions of 64 input channels or more: for
/// weights that serve many passes unchanged (a frozen backbone's). Without them each pass
/// transforms the filters again (16/9 of the weights' size: ~17 MB and several ms for each
/// of VGG-16's 512-channel layers).
#[derive(Clone, Debug)]
pub struct WinogradFilters(Tensor);

impl WinogradFilters {
    /// The transformed filters of `weight` (C_out, C_in, 3, 3); `None` where
    /// [`conv2d_fused`] never takes the Winograd path (other kernel sizes, and where the
    /// native kernels do not run: [`Kernels`]). They stand for the weight's values now: a weight
    /// that changes (a `Var` being trained) must not be given them.
    pub fn new(weight: &Tensor) -> Result<Option<Self>> {
        let (c_out, c_in, k_h, k_w) = weight.dims4()?;
        if (k_h, k_w) != (3, 3) || Kernels::for_tensor(weight) != Kernels::Native {
            return Ok(None);
        }
        let shape = (c_out, winograd::POSITIONS, c_in);
        let (values, device) = (weight.flatten_all()?, weight.device());
        let u = match weight.dtype() {
            DType::F32 => {
                let u = winograd::transform_filters(c_out, c_in, &values.to_vec1::<f32>()?);
                Tensor::from_vec(u, shape, device)?
            }
            DType::F64 => {
                let u = winograd::transform_filters(c_out, c_in, &values.to_vec1::<f64>()?);
                Tensor::from_vec(u, shape, device)?
            }
            _ => return Ok(None),
        };
        Ok(Some(Self(u)))
    }

    /// The transformed filters, (C_out, 16, C_in), checked against the `weight` (C_out,
    /// C_in, K_h, K_w) they stand for and the `dtype` of the input they will convolve.
    pub fn transformed(&self, weight: &Tensor, dtype: DType) -> Result<&Tensor> {
        let (c_out, c_in, ..) = weight.dims4()?;
        let f = &self.0;
        if f.dims() != [c_out, winograd::POSITIONS, c_in] || f.dtype() != dtype {
            candle_core::bail!(
                "{OP}: Winograd filters {:?} {:?} for a {:?} {dtype:?} weight",
                f.dims(),
                f.dtype(),
                weight.dims(),
            );
        }
        Ok(f)
    }
}

/// [`conv2d`] plus a per-channel `bias` (C_out), then ReLU when `relu`: PyTorch's
/// `relu(conv2d(x, weight, bias, stride))`, with the bias and the ReLU applied to each tile
/// of the output while it is still in cache, and one backward pass for all three (the ReLU's
/// gradient mask comes from the output itself). `winograd`: the weight's filters prepared
/// by [`WinogradFilters::new`], if any.
pub fn conv2d_fused(
    x: &Tensor,
    weight: &Tensor,
    winograd: Option<&WinogradFilters>,
    bias: &Tensor,
    stride: usize,
    padding: Padding,
    relu: bool,
) -> Result<Tensor> {
    let g = geometry(x, weight, bias, stride, padding)?;
    if Kernels::for_tensor(x) == Kernels::Portable {
        if widens(x) {
            let (x32, w32, b32) = (widened(x)?, widened(weight)?, widened(bias)?);
            let y = conv2d_fused(&x32, &w32, None, &b32, stride, padding, relu)?;
            return y.to_dtype(x.dtype());
        }
        let y = candle_conv(x, weight, bias, stride, padding)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let op = FusedConv {
        g,
        relu,
        filters: prepared(winograd, weight, x.dtype())?,
        constant_bias: None,
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// `relu(conv2d(x, weight) + bias + residual)`, `residual` of the output's shape: the end of
/// a ResNet bottleneck with its batch norm folded into the convolution, in one pass (the
/// output starts as residual + bias, the GEMM adds to it) instead of a convolution and a
/// pass over its output. The gradient reaches `x`, `weight` and `residual`; `bias` is a
/// constant (a folded batch norm's) and one that tracks a gradient is refused.
pub fn conv2d_fused_residual(
    x: &Tensor,
    weight: &Tensor,
    winograd: Option<&WinogradFilters>,
    bias: &Tensor,
    residual: &Tensor,
    stride: usize,
    padding: Padding,
) -> Result<Tensor> {
    let g = geometry(x, weight, bias, stride, padding)?;
    let (b, c, h, w) = g.output_dims();
    let out_shape = [b, c, h, w];
    if residual.dims() != out_shape {
        candle_core::bail!(
            "{OP}: residual {:?} for an output of {out_shape:?}",
            residual.dims()
        );
    }
    if bias.track_op() {
        candle_core::bail!("{OP}: the bias of a residual convolution gets no gradient");
    }
    if Kernels::for_tensor(x) == Kernels::Portable {
        if widens(x) {
            let (x32, w32, b32) = (widened(x)?, widened(weight)?, widened(bias)?);
            let r32 = widened(residual)?;
            let y = conv2d_fused_residual(&x32, &w32, None, &b32, &r32, stride, padding)?;
            return y.to_dtype(x.dtype());
        }
        return (candle_conv(x, weight, bias, stride, padding)? + residual)?.relu();
    }
    let op = FusedConv {
        g,
        relu: true,
        filters: prepared(winograd, weight, x.dtype())?,
        constant_bias: Some(bias.contiguous()?),
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &residual.contiguous()?, op)
}

/// Whether a convolution of `x` runs in f32, its output rounded back: half-precision
/// tensors on the CPU, where candle's convolution has no bf16 kernel and accumulates f16 in
/// f16 ([`is_half`]). The f32 convolution takes whichever path [`Kernels`] chooses for f32.
pub(crate) fn widens(x: &Tensor) -> bool {
    x.device().is_cpu() && is_half(x.dtype())
}

/// The convolution's sizes, after checking the operands against each other.
fn geometry(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: Padding,
) -> Result<Geometry> {
    let g = Geometry::new(x.dims4()?, weight.dims4()?, stride, padding)
        .map_err(candle_core::Error::msg)?;
    let (_, c_out, ..) = g.output_dims();
    if bias.dims() != [c_out] {
        candle_core::bail!("{OP}: bias {:?} for {c_out} output channels", bias.dims());
    }
    Ok(g)
}

/// candle's convolution of the explicitly padded input, plus the bias.
fn candle_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: Padding,
) -> Result<Tensor> {
    grouped_conv2d(x, weight, stride, padding, 1)?.broadcast_add(&bias.reshape((
        1,
        bias.dim(0)?,
        1,
        1,
    ))?)
}

/// candle's convolution of `x` zero-padded by `padding`, in `groups` groups, on any device
/// and dtype: the portable path of [`conv2d`] and
/// [`depthwise_conv2d`](crate::depthwise_conv2d), and the only one for other groupings.
pub fn grouped_conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: Padding,
    groups: usize,
) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    let padded = x
        .pad_with_zeros(2, padding.top, padding.bottom)?
        .pad_with_zeros(3, padding.left, padding.right)?;
    // Only the rows and columns the windows read: candle's backward pass takes its output
    // padding from the height alone and then fails on the shapes where a stride leaves
    // padded pixels unread (ResNet's 7x7 stride-2 stem at 224, TF-SAME's padding); the
    // narrow's own backward gives the unread pixels their zero gradient.
    let read = |dim: usize, k: usize| -> Result<usize> {
        let n = padded.dim(dim)?;
        if n < k {
            candle_core::bail!("{OP}: a {kh}x{kw} filter over {:?} padded", x.dims());
        }
        Ok(n - (n - k) % stride)
    };
    let (rows, cols) = (read(2, kh)?, read(3, kw)?);
    padded
        .narrow(2, 0, rows)?
        .narrow(3, 0, cols)?
        .conv2d(weight, 0, stride, 1, groups)
}

/// The prepared filters' tensor, if any, checked against the weight.
fn prepared(
    winograd: Option<&WinogradFilters>,
    weight: &Tensor,
    dtype: DType,
) -> Result<Option<Tensor>> {
    winograd
        .map(|f| f.transformed(weight, dtype).cloned())
        .transpose()
}

/// The forward op: (x, weight, bias) -> y, ReLU included when `relu`; with a
/// `constant_bias`, (x, weight, residual) -> relu(conv + constant_bias + residual).
struct FusedConv {
    g: Geometry,
    relu: bool,
    /// [`WinogradFilters`] of the weight (contiguous, checked against it).
    filters: Option<Tensor>,
    /// The bias when the third operand is a residual (contiguous, checked).
    constant_bias: Option<Tensor>,
}

impl FloatKernel for FusedConv {
    /// Operands: x, weight, bias or residual, the constant bias when given, then the
    /// Winograd filters when given.
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        let [x, weight, third] = [0, 1, 2].map(|i| operands[i]);
        let mut extra = operands[3..].iter().copied();
        let (bias, residual) = match self.constant_bias {
            Some(_) => (extra.next().unwrap_or_default(), Some(third)),
            None => (third, None),
        };
        conv::forward(&self.g, x, weight, extra.next(), bias, residual, self.relu)
    }
}

impl CustomOp3 for FusedConv {
    fn name(&self) -> &'static str {
        "tame-conv2d"
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
        let captured: Vec<&Tensor> = [&self.constant_bias, &self.filters]
            .into_iter()
            .flatten()
            .collect();
        let out = run_with_captured(self, &[(s1, l1), (s2, l2), (s3, l3)], &captured, OP)?;
        Ok((out, Shape::from(self.g.output_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        third: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The gradient before the ReLU: zero wherever the output is.
        let grad = if self.relu {
            grad_out.contiguous()?.apply_op2_no_bwd(out, &ReluMask)?
        } else {
            grad_out.contiguous()?
        };
        // Frozen backbones track no weight or bias: skip those products entirely.
        let grad_x = if x.track_op() {
            Some(grad.apply_op2_no_bwd(weight, &GradOp::new(self.g, Grad::Input))?)
        } else {
            None
        };
        let grad_w = if weight.track_op() {
            Some(grad.apply_op2_no_bwd(x, &GradOp::new(self.g, Grad::Weight))?)
        } else {
            None
        };
        // The residual's gradient is the masked gradient itself, the bias's its channel sums.
        let grad_third = match (third.track_op(), &self.constant_bias) {
            (false, _) => None,
            (true, Some(_)) => Some(grad),
            (true, None) => Some(crate::norm::channel_sums(&grad)?),
        };
        Ok((grad_x, grad_w, grad_third))
    }
}

/// Which gradient a [`GradOp`] computes; each is an op of its own so that it runs on
/// storages directly (no copies).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Grad {
    /// (grad_y, weight) -> grad_x.
    Input,
    /// (grad_y, x) -> grad_weight.
    Weight,
}

struct GradOp {
    g: Geometry,
    of: Grad,
}

impl GradOp {
    fn new(g: Geometry, of: Grad) -> Self {
        Self { g, of }
    }
}

impl FloatKernel for GradOp {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        let (a, b) = (operands[0], operands[1]);
        match self.of {
            Grad::Input => conv::input_grad(&self.g, a, b),
            Grad::Weight => conv::weight_grad(&self.g, a, b),
        }
    }
}

impl CustomOp2 for GradOp {
    fn name(&self) -> &'static str {
        match self.of {
            Grad::Input => "tame-conv2d-input-grad",
            Grad::Weight => "tame-conv2d-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run_float_kernel(self, &[(s1, l1), (s2, l2)], OP)?;
        let shape = match self.of {
            Grad::Input => Shape::from(self.g.input_dims()),
            Grad::Weight => Shape::from(self.g.weight_dims()),
        };
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::gradcheck::{
        assert_all_close, assert_gradients_match, max_abs_diff, native_and_portable,
        output_and_gradients, seeded,
    };
    use crate::{with_kernels, Kernels};

    /// candle's convolution on the explicitly padded input (the portable path, bias zero).
    fn reference(x: &Tensor, w: &Tensor, stride: usize, p: Padding) -> Tensor {
        let no_bias = Tensor::zeros(w.dim(0).unwrap(), w.dtype(), w.device()).unwrap();
        candle_conv(x, w, &no_bias, stride, p).unwrap()
    }

    /// (batch, c_in, h, w, c_out, k_h, k_w, stride, padding): VGG's and ResNet's shapes in
    /// miniature, TF-SAME's asymmetric padding, a stride that skips the last pixels, and the
    /// 1x1 stride-1 shortcut.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        Padding,
    );
    const CASES: [Case; 7] = [
        (2, 3, 9, 8, 4, 3, 3, 1, Padding::uniform(1)),
        (1, 3, 10, 10, 2, 3, 3, 2, Padding::uniform(1)),
        (1, 2, 11, 11, 3, 7, 7, 2, Padding::uniform(3)),
        (
            2,
            3,
            8,
            9,
            2,
            3,
            3,
            2,
            Padding {
                top: 0,
                bottom: 1,
                left: 1,
                right: 0,
            },
        ),
        (2, 5, 6, 7, 3, 1, 1, 1, Padding::uniform(0)),
        (1, 4, 7, 7, 3, 1, 1, 2, Padding::uniform(0)),
        (1, 2, 5, 6, 2, 2, 3, 3, Padding::uniform(2)),
    ];

    #[test]
    fn forward_matches_candle_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for (i, &(b, c, h, w, o, kh, kw, s, p)) in CASES.iter().enumerate() {
            let x = seeded(&[b, c, h, w], i as u64, &dev)?;
            let k = seeded(&[o, c, kh, kw], 50 + i as u64, &dev)?;
            let ours = conv2d(&x, &k, s, p)?;
            let theirs = reference(&x, &k, s, p);
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_abs_diff(&ours, &theirs) < 1e-12, "case {i}");
            // f32 too, and a non-contiguous input.
            let xt = x.to_dtype(DType::F32)?.transpose(2, 3)?.transpose(2, 3)?;
            let ours = conv2d(&xt, &k.to_dtype(DType::F32)?, s, p)?;
            assert!(
                max_abs_diff(&ours, &theirs.to_dtype(DType::F32)?) < 1e-5,
                "case {i}"
            );
        }
        Ok(())
    }

    /// The tiles (and blocks of products) are parallel tasks: any thread count gives the
    /// same result.
    #[test]
    fn any_thread_count_gives_the_convolution() -> Result<()> {
        let dev = Device::Cpu;
        let x = seeded(&[1, 255, 20, 64], 3, &dev)?.to_dtype(DType::F32)?;
        let k = seeded(&[2, 255, 3, 3], 4, &dev)?.to_dtype(DType::F32)?;
        let p = Padding::uniform(1);
        let expected = reference(&x, &k, 1, p);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let ours = pool.install(|| conv2d(&x, &k, 1, p))?;
            assert!(max_abs_diff(&ours, &expected) < 1e-3, "{threads} threads");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences_and_candle() -> Result<()> {
        // The native kernels: candle's backward fails where the stride leaves pixels unread.
        with_kernels(Kernels::Native, || {
            let dev = Device::Cpu;
            for (i, &(b, c, h, w, o, kh, kw, s, p)) in CASES.iter().enumerate() {
                let x = seeded(&[b, c, h, w], i as u64, &dev)?;
                let k = seeded(&[o, c, kh, kw], 50 + i as u64, &dev)?;
                assert_gradients_match(&x, |x| conv2d(x, &k, s, p))?;
                assert_gradients_match(&k, |k| conv2d(&x, k, s, p))?;

                // Both gradients at once, against candle's backward, which fails (a shape
                // mismatch) when the stride leaves input pixels unread at the far edge.
                let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
                if (ph - kh) % s != 0 || (pw - kw) % s != 0 {
                    continue;
                }
                let r = seeded(reference(&x, &k, s, p).dims(), 9, &dev)?;
                let (xv, kv) = (Var::from_tensor(&x)?, Var::from_tensor(&k)?);
                let ours = (conv2d(xv.as_tensor(), kv.as_tensor(), s, p)? * &r)?
                    .sum_all()?
                    .backward()?;
                let theirs = (reference(xv.as_tensor(), kv.as_tensor(), s, p) * &r)?
                    .sum_all()?
                    .backward()?;
                for v in [&xv, &kv] {
                    let (a, b) = (ours.get(v).unwrap(), theirs.get(v).unwrap());
                    assert!(max_abs_diff(a, b) < 1e-12, "case {i}");
                }
            }
            Ok(())
        })
    }

    #[test]
    fn fused_bias_and_relu_match_the_separate_ops_forward_and_backward() -> Result<()> {
        // The native kernels: candle's backward fails where the stride leaves pixels unread.
        with_kernels(Kernels::Native, || {
            let dev = Device::Cpu;
            for (i, &(b, c, h, w, o, kh, kw, s, p)) in CASES.iter().enumerate() {
                let x = seeded(&[b, c, h, w], i as u64, &dev)?;
                let k = seeded(&[o, c, kh, kw], 50 + i as u64, &dev)?;
                let bias = seeded(&[o], 70 + i as u64, &dev)?;
                let separate = |x: &Tensor, k: &Tensor, bias: &Tensor| {
                    reference(x, k, s, p)
                        .broadcast_add(&bias.reshape((1, o, 1, 1))?)?
                        .relu()
                };
                let ours = conv2d_fused(&x, &k, None, &bias, s, p, true)?;
                assert!(max_abs_diff(&ours, &separate(&x, &k, &bias)?) < 1e-12);
                // Some outputs on each side of zero, or the ReLU is not exercised.
                let positive = ours.gt(0.0)?.to_dtype(DType::F64)?.mean_all()?;
                let positive = positive.to_scalar::<f64>()?;
                assert!(positive > 0.1 && positive < 0.9, "case {i}: {positive}");
                let no_relu = conv2d_fused(&x, &k, None, &bias, s, p, false)?;
                let expected =
                    reference(&x, &k, s, p).broadcast_add(&bias.reshape((1, o, 1, 1))?)?;
                assert!(max_abs_diff(&no_relu, &expected) < 1e-12);

                assert_gradients_match(&x, |x| conv2d_fused(x, &k, None, &bias, s, p, true))?;
                assert_gradients_match(&k, |k| conv2d_fused(&x, k, None, &bias, s, p, true))?;
                assert_gradients_match(&bias, |bias| conv2d_fused(&x, &k, None, bias, s, p, true))?;

                // All three at once, against candle's backward of the separate ops.
                let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
                if (ph - kh) % s != 0 || (pw - kw) % s != 0 {
                    continue;
                }
                let r = seeded(ours.dims(), 9, &dev)?;
                let vars = [x, k, bias].map(|t| Var::from_tensor(&t).unwrap());
                let [xv, kv, bv] = vars.each_ref().map(|v| v.as_tensor());
                let ours = (conv2d_fused(xv, kv, None, bv, s, p, true)? * &r)?
                    .sum_all()?
                    .backward()?;
                let theirs = (separate(xv, kv, bv)? * &r)?.sum_all()?.backward()?;
                for v in [xv, kv, bv] {
                    let (a, b) = (ours.get(v).unwrap(), theirs.get(v).unwrap());
                    assert!(max_abs_diff(a, b) < 1e-12, "case {i}");
                }
            }
            Ok(())
        })
    }

    #[test]
    fn winograd_path_matches_candle_forward_and_backward() -> Result<()> {
        // Winograd's path is the native kernels'.
        with_kernels(Kernels::Native, || {
            // 256 channels in and out over 28x28 outputs: the forward and the input gradient
            // both take the Winograd path (tame-kernels tests that they do); with and without
            // prepared filters.
            let dev = Device::Cpu;
            let p = Padding::uniform(1);
            let x = seeded(&[1, 256, 28, 28], 1, &dev)?;
            let k = (seeded(&[256, 256, 3, 3], 2, &dev)? * 0.05)?;
            let bias = seeded(&[256], 3, &dev)?;
            let prepared = WinogradFilters::new(&k)?.expect("3x3 f64 filters");
            let separate = |x: &Tensor, k: &Tensor, bias: &Tensor| {
                reference(x, k, 1, p)
                    .broadcast_add(&bias.reshape((1, 256, 1, 1))?)?
                    .relu()
            };
            let expected = separate(&x, &k, &bias)?;
            for filters in [None, Some(&prepared)] {
                let ours = conv2d_fused(&x, &k, filters, &bias, 1, p, true)?;
                assert!(max_abs_diff(&ours, &expected) < 1e-12);
                let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let f32_filters = WinogradFilters::new(&f32s(&k))?;
                let ours = conv2d_fused(
                    &f32s(&x),
                    &f32s(&k),
                    filters.and(f32_filters.as_ref()),
                    &f32s(&bias),
                    1,
                    p,
                    true,
                )?;
                assert!(max_abs_diff(&ours, &f32s(&expected)) < 1e-4);
            }
            let r = seeded(expected.dims(), 9, &dev)?;
            let xv = Var::from_tensor(&x)?;
            let ours = (conv2d_fused(xv.as_tensor(), &k, Some(&prepared), &bias, 1, p, true)?
                * &r)?
                .sum_all()?
                .backward()?;
            let theirs = (separate(xv.as_tensor(), &k, &bias)? * &r)?
                .sum_all()?
                .backward()?;
            let (a, b) = (ours.get(&xv).unwrap(), theirs.get(&xv).unwrap());
            assert!(max_abs_diff(a, b) < 1e-12);
            // Filters of another weight's shape are refused.
            let other = WinogradFilters::new(&seeded(&[8, 256, 3, 3], 4, &dev)?)?;
            assert!(conv2d_fused(&x, &k, other.as_ref(), &bias, 1, p, true).is_err());
            Ok(())
        })
    }

    #[test]
    fn residual_convolution_matches_the_separate_ops_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let separate = |x: &Tensor, k: &Tensor, bias: &Tensor, r: &Tensor, s, p| {
            (reference(x, k, s, p).broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)? + r)?
                .relu()
        };
        // The CASES (im2col), a 1x1 and a 3x3 convolution that takes the Winograd path.
        let mut cases = CASES.to_vec();
        cases.push((2, 16, 6, 6, 8, 1, 1, 1, Padding::uniform(0)));
        cases.push((1, 64, 28, 28, 8, 3, 3, 1, Padding::uniform(1)));
        for (i, &(b, c, h, w, o, kh, kw, s, p)) in cases.iter().enumerate() {
            let x = seeded(&[b, c, h, w], i as u64, &dev)?;
            let k = (seeded(&[o, c, kh, kw], 50 + i as u64, &dev)? * 0.3)?;
            let bias = seeded(&[o], 70 + i as u64, &dev)?;
            let out = conv2d_fused(&x, &k, None, &bias, s, p, false)?;
            let residual = seeded(out.dims(), 90 + i as u64, &dev)?;
            let prepared = WinogradFilters::new(&k)?;
            let expected = separate(&x, &k, &bias, &residual, s, p)?;
            let positive = expected.gt(0.0)?.to_dtype(DType::F64)?.mean_all()?;
            let positive = positive.to_scalar::<f64>()?;
            assert!(positive > 0.05 && positive < 0.95, "case {i}: {positive}");
            for filters in [None, prepared.as_ref()] {
                let ours = conv2d_fused_residual(&x, &k, filters, &bias, &residual, s, p)?;
                assert!(max_abs_diff(&ours, &expected) < 1e-12, "case {i}");
            }
            // A trainable bias would get no gradient; a residual of another shape is wrong.
            let bv = Var::from_tensor(&bias)?;
            let refused = conv2d_fused_residual(&x, &k, None, bv.as_tensor(), &residual, s, p);
            assert!(refused.is_err());
            let wrong = residual.narrow(1, 0, o - 1)?;
            assert!(conv2d_fused_residual(&x, &k, None, &bias, &wrong, s, p).is_err());
            let g = seeded(expected.dims(), 9, &dev)?;
            let vars = [&x, &k, &residual].map(|t| Var::from_tensor(t).unwrap());
            let [xv, kv, rv] = vars.each_ref().map(|v| v.as_tensor());
            let ours = (conv2d_fused_residual(xv, kv, None, &bias, rv, s, p)? * &g)?
                .sum_all()?
                .backward()?;
            let theirs = (separate(xv, kv, &bias, rv, s, p)? * &g)?
                .sum_all()?
                .backward()?;
            for v in [xv, kv, rv] {
                let (a, b) = (ours.get(v).unwrap(), theirs.get(v).unwrap());
                assert!(max_abs_diff(a, b) < 1e-12, "case {i}");
            }
        }
        Ok(())
    }

    /// The native kernels and the portable path (candle's convolution, what a GPU runs)
    /// agree to 1e-12 in f64, output and every gradient, with the bias, the ReLU and the
    /// residual, on the im2col and the Winograd paths.
    #[test]
    fn native_and_portable_agree() -> Result<()> {
        let dev = Device::Cpu;
        let mut cases = CASES.to_vec();
        cases.push((1, 64, 28, 28, 8, 3, 3, 1, Padding::uniform(1)));
        for (i, &(b, c, h, w, o, kh, kw, s, p)) in cases.iter().enumerate() {
            let vars = [
                seeded(&[b, c, h, w], i as u64, &dev)?,
                (seeded(&[o, c, kh, kw], 50 + i as u64, &dev)? * 0.3)?,
                seeded(&[o], 70 + i as u64, &dev)?,
            ]
            .map(|t| Var::from_tensor(&t).unwrap());
            let [x, k, bias] = vars.each_ref().map(|v| v.as_tensor());
            let constant = bias.detach();
            let (native, portable) = native_and_portable(|| {
                let y = conv2d_fused(x, k, None, bias, s, p, true)?;
                let z = conv2d_fused_residual(x, k, None, &constant, &y, s, p)?;
                output_and_gradients(&(y + z)?, &[x, k, bias])
            })?;
            assert_all_close(&format!("case {i}"), &native, &portable, 1e-12);
        }
        Ok(())
    }

    #[test]
    fn frozen_weights_get_no_gradient() -> Result<()> {
        // Skipping frozen operands' products is the native kernels' (candle's backward makes
        // the weight's gradient too).
        with_kernels(Kernels::Native, || {
            let dev = Device::Cpu;
            let x = Var::from_tensor(&seeded(&[1, 2, 5, 5], 1, &dev)?)?;
            let k = seeded(&[3, 2, 3, 3], 2, &dev)?;
            let grads = conv2d(x.as_tensor(), &k, 1, Padding::uniform(1))?
                .sum_all()?
                .backward()?;
            assert!(grads.get(x.as_tensor()).is_some());
            assert!(grads.get(&k).is_none());
            Ok(())
        })
    }
}
