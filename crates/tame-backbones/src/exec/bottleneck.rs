//! ResNet bottleneck blocks with frozen weights in train mode (batch statistics) as one op:
//! each block `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + identity)`, the
//! identity `x` or `bnd(convd(x))`, a run of consecutive blocks forward and backward (to the
//! run's input alone).
//!
//! Composed from the separate ops, a block is six to eight graph nodes, and candle's
//! backward pass gives every node's input a zero-filled gradient and an addition (ResNet-50's
//! masked pass at batch 8: ~0.2 s of a 1.1 s backward). Here a run of blocks is one node
//! whose backward walks its layers with the same kernels, so the numbers are the composed
//! path's bit for bit; the ReLU mask of each block's output is made once for both branches.
//!
//! Which runs of blocks go through it is ResNet-50's choice (its train-mode passes fuse each
//! run of blocks whose inner nodes no tap asks for). With a parameter that tracks a gradient,
//! or off the CPU, it returns `None` and the caller composes the separate ops.

use std::any::Any;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use tame_kernels::conv::{self, Geometry};
use tame_kernels::norm::{moments, ChannelAffine};
use tame_kernels::{relu_masked, Float, Padding};
use tame_ops::storage::{run_with_captured, FloatKernel};
use tame_ops::{BatchStats, WinogradFilters};

use super::runs_here;
use crate::lock;

/// The name errors give.
const OP: &str = "bottleneck";

/// One convolution of a frozen block (no bias) and the batch norm after it.
#[derive(Clone, Copy)]
pub struct FrozenConvBn<'a> {
    /// (C_out, C_in, K, K).
    pub weight: &'a Tensor,
    /// The weight's prepared filters, for a 3x3 stride-1 convolution.
    pub winograd: Option<&'a WinogradFilters>,
    pub stride: usize,
    pub padding: Padding,
    /// The batch norm's weight and bias (C_out each).
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub eps: f64,
}

/// One frozen bottleneck block: conv1/bn1, conv2/bn2 and conv3/bn3, and the shortcut's
/// pair when it has one.
#[derive(Clone, Copy)]
pub struct FrozenBlock<'a> {
    pub layers: [FrozenConvBn<'a>; 3],
    pub downsample: Option<FrozenConvBn<'a>>,
}

/// The run of `blocks` in train mode on `x` (B, C, H, W), each block's output the next
/// one's input. Returns the last block's output and, per block, the batch statistics of
/// each of its batch norms (bn1, bn2, bn3, then the shortcut's) for the running-statistics
/// update.
///
/// `None` where the op does not apply — where the native kernels do not run
/// ([`tame_ops::Kernels`]: another device or dtype than f32/f64 on the CPU, or the portable
/// path chosen), a parameter that tracks a gradient, a batch norm over a single value, no blocks — and
/// the caller composes the blocks from the separate ops instead.
pub fn bottleneck_train(
    x: &Tensor,
    blocks: &[FrozenBlock],
) -> Result<Option<(Tensor, Vec<Vec<BatchStats>>)>> {
    let frozen = blocks
        .iter()
        .flat_map(pairs)
        .all(|p| [p.weight, p.gamma, p.beta].iter().all(|t| !t.track_op()));
    if !runs_here(x) || !frozen || blocks.is_empty() {
        return Ok(None);
    }
    let dtype = x.dtype();
    let mut built = Vec::with_capacity(blocks.len());
    let mut block_input = x.dims4()?;
    for block in blocks {
        let mut layers = Vec::with_capacity(4);
        let mut input = block_input;
        for (i, p) in pairs(block).enumerate() {
            // The shortcut reads the block's input; the main path each layer's output.
            if i == 3 {
                input = block_input;
            }
            let layer = Layer::new(&p, input, dtype)?;
            let (b, _, h, w) = layer.g.output_dims();
            if b * h * w < 2 {
                return Ok(None);
            }
            input = layer.g.output_dims();
            layers.push(layer);
        }
        block_input = layers[2].g.output_dims();
        built.push(layers);
    }
    let measured = Arc::new(Mutex::new(Vec::new()));
    let op = Bottlenecks {
        blocks: built,
        keep: x.track_op(),
        measured: measured.clone(),
        saved: Mutex::new(None),
    };
    let x = x.contiguous()?;
    let y = if op.keep {
        x.apply_op1(op)?
    } else {
        x.apply_op1_no_bwd(&op)?
    };
    let measured = std::mem::take(&mut *lock(&measured));
    let as_tensor = |v: Vec<f64>| {
        let n = v.len();
        Tensor::from_vec(v, n, x.device())?.to_dtype(dtype)
    };
    let stats = measured
        .into_iter()
        .map(|block| {
            block
                .into_iter()
                .map(|m| {
                    Ok(BatchStats {
                        mean: as_tensor(m.mean)?,
                        var: as_tensor(m.var)?,
                        count: m.count,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    Ok(Some((y, stats)))
}

/// A block's pairs in the op's order: the main path's three, then the shortcut's.
fn pairs<'a>(block: &FrozenBlock<'a>) -> impl Iterator<Item = FrozenConvBn<'a>> {
    block.layers.into_iter().chain(block.downsample)
}

/// One convolution and batch norm, checked and made contiguous.
struct Layer {
    g: Geometry,
    weight: Tensor,
    filters: Option<Tensor>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    eps: f64,
}

impl Layer {
    fn new(p: &FrozenConvBn, input: (usize, usize, usize, usize), dtype: DType) -> Result<Self> {
        let g = Geometry::new(input, p.weight.dims4()?, p.stride, p.padding)
            .map_err(candle_core::Error::msg)?;
        let channels = g.output_dims().1;
        let per_channel = |t: &Tensor| -> Result<Vec<f64>> {
            if t.dims() != [channels] {
                candle_core::bail!(
                    "{OP}: {:?} batch-norm parameters for {channels} channels",
                    t.dims()
                );
            }
            t.to_dtype(DType::F64)?.to_vec1::<f64>()
        };
        if p.weight.dtype() != dtype {
            candle_core::bail!(
                "{OP}: a {:?} weight for a {dtype:?} input",
                p.weight.dtype()
            );
        }
        Ok(Self {
            filters: p
                .winograd
                .map(|f| f.transformed(p.weight, dtype).cloned())
                .transpose()?,
            weight: p.weight.contiguous()?,
            gamma: per_channel(p.gamma)?,
            beta: per_channel(p.beta)?,
            eps: p.eps,
            g,
        })
    }

    /// bn(conv(input)) (+ residual, then ReLU when `relu`): the convolution's output, the
    /// batch norm's map, the layer's output and the batch's variance.
    fn forward<T: Float>(
        &self,
        input: &[T],
        weight: &[T],
        filters: Option<&[T]>,
        relu: bool,
        residual: Option<&[T]>,
    ) -> (Vec<T>, ChannelAffine, Vec<T>, Vec<f64>) {
        let (_, channels, h, w) = self.g.output_dims();
        let no_bias = vec![T::ZERO; channels];
        let c = conv::forward(&self.g, input, weight, filters, &no_bias, None, false);
        let plane = h * w;
        let moments = moments(&c, channels, plane);
        let (mean, var) = moments.split_at(channels);
        // The per-channel factors as `batch_norm_train` computes them: in T, rounded after
        // every operation (an f64 result rounded to f32 is the f32 operation's result).
        let r = |v: f64| T::from_f64(v).to_f64();
        let eps = r(self.eps);
        let mean: Vec<f64> = mean.iter().map(|v| v.to_f64()).collect();
        let var: Vec<f64> = var.iter().map(|v| v.to_f64()).collect();
        let inv_std: Vec<f64> = var.iter().map(|v| r(1.0 / r(r(v + eps).sqrt()))).collect();
        let scale: Vec<f64> = self
            .gamma
            .iter()
            .zip(&inv_std)
            .map(|(g, s)| r(g * s))
            .collect();
        let shift = self
            .beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| r(b - r(m * s)))
            .collect();
        let affine = ChannelAffine {
            scale,
            shift,
            plane,
            mean,
            inv_std,
            train: true,
            relu,
        };
        let y = affine.forward(&c, residual);
        (c, affine, y, var)
    }
}

/// What the forward pass measured for one batch norm.
struct Measured {
    mean: Vec<f64>,
    var: Vec<f64>,
    count: usize,
}

/// What the backward pass reads of one block, kept by the forward pass.
struct Saved<T> {
    /// Each layer's convolution output (the batch norms' inputs).
    conv_out: Vec<Vec<T>>,
    /// relu(bn1(..)) and relu(bn2(..)): the inputs of conv2 and conv3.
    relu_out: [Vec<T>; 2],
    affines: Vec<ChannelAffine>,
}

/// What the backward pass reads of the run.
struct SavedRun<T> {
    blocks: Vec<Saved<T>>,
    /// The output of every block but the last (whose output is the op's).
    outputs: Vec<Vec<T>>,
}

/// A block's weights and, for the layers that have them, prepared filters.
type BlockWeights<'a, T> = Vec<(&'a [T], Option<&'a [T]>)>;

struct Bottlenecks {
    /// Per block: conv1/bn1, conv2/bn2, conv3/bn3, then the shortcut's pair when there is
    /// one.
    blocks: Vec<Vec<Layer>>,
    /// The backward pass will run: keep what it reads.
    keep: bool,
    /// Per block, per batch norm.
    measured: Arc<Mutex<Vec<Vec<Measured>>>>,
    /// A `SavedRun<T>` for the pass's T.
    saved: Mutex<Option<Box<dyn Any + Send + Sync>>>,
}

impl Bottlenecks {
    /// Each block's weights, from operands laid out as [`captured`](Self::captured) lists
    /// them after the first `skip`.
    fn weights<'a, T>(&self, operands: &[&'a [T]], skip: usize) -> Vec<BlockWeights<'a, T>> {
        let mut operands = operands[skip..].iter().copied();
        self.blocks
            .iter()
            .map(|layers| {
                let weights: Vec<&[T]> = operands.by_ref().take(layers.len()).collect();
                layers
                    .iter()
                    .zip(weights)
                    .map(|(l, w)| (w, l.filters.as_ref().and_then(|_| operands.next())))
                    .collect()
            })
            .collect()
    }

    /// The tensors the kernels read besides their arguments: block by block, its weights,
    /// then its prepared filters.
    fn captured(&self) -> Vec<&Tensor> {
        self.blocks
            .iter()
            .flat_map(|layers| {
                let weights = layers.iter().map(|l| &l.weight);
                weights.chain(layers.iter().filter_map(|l| l.filters.as_ref()))
            })
            .collect()
    }

    /// Runs `kernel` on `args` followed by the captured tensors.
    fn run_with_captured(
        &self,
        kernel: &impl FloatKernel,
        args: &[(&CpuStorage, &Layout)],
    ) -> Result<CpuStorage> {
        run_with_captured(kernel, args, &self.captured(), OP)
    }

    fn output_dims(&self) -> (usize, usize, usize, usize) {
        let last = self.blocks.last().expect("a run has blocks");
        last[2].g.output_dims()
    }

    fn input_dims(&self) -> (usize, usize, usize, usize) {
        self.blocks[0][0].g.input_dims()
    }
}

/// One block's forward pass on `x`: its output, what its backward pass reads and what it
/// measured.
fn block_forward<T: Float>(
    layers: &[Layer],
    w: &BlockWeights<'_, T>,
    x: &[T],
) -> (Vec<T>, Saved<T>, Vec<Measured>) {
    let layer = |i: usize, input: &[T], relu: bool, residual: Option<&[T]>| {
        layers[i].forward(input, w[i].0, w[i].1, relu, residual)
    };
    let (c1, a1, y1, v1) = layer(0, x, true, None);
    let (c2, a2, y2, v2) = layer(1, &y1, true, None);
    let shortcut = (layers.len() == 4).then(|| layer(3, x, false, None));
    let identity = shortcut.as_ref().map_or(x, |s| &s.2);
    let (c3, a3, out, v3) = layer(2, &y2, true, Some(identity));

    let mut conv_out = vec![c1, c2, c3];
    let mut affines = vec![a1, a2, a3];
    let mut vars = vec![v1, v2, v3];
    if let Some((cd, ad, _, vd)) = shortcut {
        conv_out.push(cd);
        affines.push(ad);
        vars.push(vd);
    }
    let measured = affines
        .iter()
        .zip(vars)
        .zip(&conv_out)
        .map(|((a, var), c)| Measured {
            mean: a.mean.clone(),
            var,
            count: c.len() / a.scale.len(),
        })
        .collect();
    let saved = Saved {
        conv_out,
        relu_out: [y1, y2],
        affines,
    };
    (out, saved, measured)
}

/// One block's input gradient from its output's gradient `g` and its output `out`.
fn block_backward<T: Float>(
    layers: &[Layer],
    w: &BlockWeights<'_, T>,
    saved: &Saved<T>,
    g: &[T],
    out: &[T],
) -> Vec<T> {
    let (c, a, y) = (&saved.conv_out, &saved.affines, &saved.relu_out);
    // A train-mode batch norm's input gradient (the ReLU's mask from its output y).
    let bn = |a: &ChannelAffine, g: &[T], c: &[T], y: &[T]| {
        let sums = a.param_grads(g, c, y);
        a.backward(g, c, y, Some(&sums))
    };
    let input_grad = |i: usize, g: &[T]| conv::input_grad(&layers[i].g, g, w[i].0);

    let g_c3 = bn(&a[2], g, &c[2], out);
    let g_y2 = input_grad(2, &g_c3);
    let g_c2 = bn(&a[1], &g_y2, &c[1], &y[1]);
    let g_y1 = input_grad(1, &g_c2);
    let g_c1 = bn(&a[0], &g_y1, &c[0], &y[0]);
    let mut g_x = input_grad(0, &g_c1);
    // The shortcut's gradient: the output's, through its ReLU.
    let g_identity = relu_masked(g, out);
    let g_shortcut = match c.get(3) {
        // No ReLU after the shortcut's batch norm: its y is never read.
        Some(cd) => input_grad(3, &bn(&a[3], &g_identity, cd, cd)),
        None => g_identity,
    };
    g_x.par_iter_mut()
        .zip(&g_shortcut)
        .for_each(|(gx, &gs)| *gx += gs);
    g_x
}

impl FloatKernel for Bottlenecks {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        let w = self.weights(operands, 1);
        let mut saved = SavedRun {
            blocks: Vec::with_capacity(self.blocks.len()),
            outputs: Vec::with_capacity(self.blocks.len()),
        };
        let mut measured = Vec::with_capacity(self.blocks.len());
        let mut current: Option<Vec<T>> = None;
        for (layers, w) in self.blocks.iter().zip(&w) {
            let x = current.as_deref().unwrap_or(operands[0]);
            let (out, block, m) = block_forward(layers, w, x);
            measured.push(m);
            let input = current.replace(out);
            if self.keep {
                saved.blocks.push(block);
                saved.outputs.extend(input);
            }
        }
        *lock(&self.measured) = measured;
        if self.keep {
            *lock(&self.saved) = Some(Box::new(saved));
        }
        current.expect("a run has blocks")
    }
}

impl CustomOp1 for Bottlenecks {
    fn name(&self) -> &'static str {
        "tame-bottleneck"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = self.run_with_captured(self, &[(storage, layout)])?;
        Ok((out, Shape::from(self.output_dims())))
    }

    fn bwd(&self, _x: &Tensor, out: &Tensor, grad_out: &Tensor) -> Result<Option<Tensor>> {
        let grad_x = grad_out
            .contiguous()?
            .apply_op2_no_bwd(out, &BottlenecksGrad(self))?;
        Ok(Some(grad_x))
    }
}

/// (grad_out, out) -> grad_x of a [`Bottlenecks`] pass: the blocks' backward passes, last
/// block first.
struct BottlenecksGrad<'a>(&'a Bottlenecks);

impl FloatKernel for BottlenecksGrad<'_> {
    fn run<T: Float>(&self, operands: &[&[T]]) -> Vec<T> {
        let run = self.0;
        let saved = lock(&run.saved);
        let saved = saved
            .as_ref()
            .and_then(|s| s.downcast_ref::<SavedRun<T>>())
            .expect("a bottleneck's backward pass runs after its forward pass, in one dtype");
        let w = run.weights(operands, 2);
        let mut grad: Option<Vec<T>> = None;
        for (i, layers) in run.blocks.iter().enumerate().rev() {
            let g = grad.as_deref().unwrap_or(operands[0]);
            let out = saved.outputs.get(i).map_or(operands[1], Vec::as_slice);
            grad = Some(block_backward(layers, &w[i], &saved.blocks[i], g, out));
        }
        grad.expect("a run has blocks")
    }
}

impl CustomOp2 for BottlenecksGrad<'_> {
    fn name(&self) -> &'static str {
        "tame-bottleneck-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.0.run_with_captured(self, &[(s1, l1), (s2, l2)])?;
        Ok((out, Shape::from(self.0.input_dims())))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::exec::testing::{assert_same_output_and_gradient, max_abs_diff, seeded};
    use tame_ops::{batch_norm_train, conv2d_fused, with_kernels, Epilogue, Kernels};

    /// The tensors of one conv/bn pair: weight, gamma, beta.
    struct Pair {
        weight: Tensor,
        winograd: Option<WinogradFilters>,
        stride: usize,
        gamma: Tensor,
        beta: Tensor,
    }

    impl Pair {
        fn new(c_in: usize, c_out: usize, k: usize, stride: usize, seed: u64) -> Result<Self> {
            let dev = Device::Cpu;
            let weight = (seeded(&[c_out, c_in, k, k], seed, &dev)? * 0.3)?;
            Ok(Self {
                winograd: (stride == 1)
                    .then(|| WinogradFilters::new(&weight))
                    .transpose()?
                    .flatten(),
                weight,
                stride,
                gamma: (seeded(&[c_out], seed + 1, &dev)? + 1.5)?,
                beta: seeded(&[c_out], seed + 2, &dev)?,
            })
        }

        fn frozen(&self) -> FrozenConvBn<'_> {
            let k = self.weight.dim(3).unwrap();
            FrozenConvBn {
                weight: &self.weight,
                winograd: self.winograd.as_ref(),
                stride: self.stride,
                padding: Padding::uniform(k / 2),
                gamma: &self.gamma,
                beta: &self.beta,
                eps: 1e-5,
            }
        }

        fn to_f32(&self) -> Result<Self> {
            let weight = self.weight.to_dtype(DType::F32)?;
            Ok(Self {
                winograd: self
                    .winograd
                    .as_ref()
                    .map(|_| WinogradFilters::new(&weight))
                    .transpose()?
                    .flatten(),
                weight,
                stride: self.stride,
                gamma: self.gamma.to_dtype(DType::F32)?,
                beta: self.beta.to_dtype(DType::F32)?,
            })
        }
    }

    /// (input channels, width, stride, shortcut convolution, input size, batch): a block
    /// with the identity shortcut, one that downsamples, and one on the Winograd path.
    const CASES: [(usize, usize, usize, bool, usize, usize); 3] = [
        (8, 2, 1, false, 6, 2),
        (6, 3, 2, true, 7, 3),
        (64, 64, 1, true, 14, 1),
    ];

    fn pairs(
        (c_in, width, stride, shortcut, ..): (usize, usize, usize, bool, usize, usize),
        seed: u64,
    ) -> Result<Vec<Pair>> {
        let c_out = if shortcut { width * 4 } else { c_in };
        let mut pairs = vec![
            Pair::new(c_in, width, 1, 1, seed)?,
            Pair::new(width, width, 3, stride, seed + 10)?,
            Pair::new(width, c_out, 1, 1, seed + 20)?,
        ];
        if shortcut {
            pairs.push(Pair::new(c_in, c_out, 1, stride, seed + 30)?);
        }
        Ok(pairs)
    }

    /// The block from the separate ops.
    fn composed(x: &Tensor, pairs: &[Pair]) -> Result<(Tensor, Vec<BatchStats>)> {
        let conv_bn = |p: &Pair, x: &Tensor, then: Epilogue| {
            let f = p.frozen();
            let no_bias = Tensor::zeros(p.weight.dim(0)?, x.dtype(), x.device())?;
            let c = conv2d_fused(
                x, f.weight, f.winograd, &no_bias, f.stride, f.padding, false,
            )?;
            batch_norm_train(&c, f.gamma, f.beta, f.eps, then)
        };
        let (y1, s1) = conv_bn(&pairs[0], x, Epilogue::relu())?;
        let (y2, s2) = conv_bn(&pairs[1], &y1, Epilogue::relu())?;
        let (identity, sd) = match pairs.get(3) {
            Some(p) => {
                let (d, s) = conv_bn(p, x, Epilogue::default())?;
                (d, Some(s))
            }
            None => (x.clone(), None),
        };
        let (y, s3) = conv_bn(&pairs[2], &y2, Epilogue::add_relu(&identity))?;
        Ok((y, [s1, s2, s3].into_iter().chain(sd).collect()))
    }

    fn block(pairs: &[Pair]) -> FrozenBlock<'_> {
        let f: Vec<_> = pairs.iter().map(Pair::frozen).collect();
        FrozenBlock {
            layers: [f[0], f[1], f[2]],
            downsample: f.get(3).copied(),
        }
    }

    fn fused(x: &Tensor, pairs: &[Pair]) -> Result<(Tensor, Vec<BatchStats>)> {
        let (y, mut stats) = bottleneck_train(x, &[block(pairs)])?.expect("the op applies");
        Ok((y, stats.remove(0)))
    }

    fn assert_same_stats(what: &str, stats: &[BatchStats], expected: &[BatchStats]) {
        assert_eq!(stats.len(), expected.len(), "{what}");
        for (s, r) in stats.iter().zip(expected) {
            assert_eq!(s.count, r.count, "{what}");
            assert_eq!(max_abs_diff(&s.mean, &r.mean), 0.0, "{what}: mean");
            assert_eq!(max_abs_diff(&s.var, &r.var), 0.0, "{what}: variance");
        }
    }

    /// The output, the batch statistics and the input gradient of `sum(block(x) * r)`.
    fn run<S>(
        block: impl Fn(&Tensor) -> Result<(Tensor, S)>,
        x: &Tensor,
    ) -> Result<(Tensor, S, Tensor)> {
        let var = Var::from_tensor(x)?;
        let (y, stats) = block(var.as_tensor())?;
        let r = seeded(y.dims(), 77, x.device())?.to_dtype(x.dtype())?;
        let grads = (&y * r)?.sum_all()?.backward()?;
        let grad = grads
            .get(var.as_tensor())
            .expect("a gradient for x")
            .clone();
        Ok((y, stats, grad))
    }

    #[test]
    fn fused_block_is_the_composed_block_bit_for_bit() -> Result<()> {
        // The fused op and the separate ops on the same native kernels.
        with_kernels(Kernels::Native, || {
            for (i, &case) in CASES.iter().enumerate() {
                let (c_in, .., size, batch) = case;
                let x = seeded(&[batch, c_in, size, size], i as u64, &Device::Cpu)?;
                let pairs64 = pairs(case, 100 * i as u64)?;
                let pairs32: Vec<Pair> = pairs64.iter().map(Pair::to_f32).collect::<Result<_>>()?;
                for (x, pairs) in [(x.clone(), &pairs64), (x.to_dtype(DType::F32)?, &pairs32)] {
                    let (y, stats, grad) = run(|x| fused(x, pairs), &x)?;
                    let (y_ref, stats_ref, grad_ref) = run(|x| composed(x, pairs), &x)?;
                    let what = format!("case {i} {:?}", x.dtype());
                    assert_same_output_and_gradient(&what, (&y, &grad), (&y_ref, &grad_ref));
                    assert_same_stats(&what, &stats, &stats_ref);
                }
            }
            Ok(())
        })
    }

    /// A run of blocks (one that downsamples, then two with the identity shortcut) as one
    /// op is the blocks composed one after the other, bit for bit, in output, statistics
    /// and input gradient.
    #[test]
    fn a_run_of_blocks_is_the_blocks_one_after_the_other() -> Result<()> {
        // The fused op and the separate ops on the same native kernels.
        with_kernels(Kernels::Native, || {
            let runs = [
                pairs((6, 3, 2, true, 7, 3), 400)?,
                pairs((12, 3, 1, false, 4, 3), 500)?,
                pairs((12, 3, 1, false, 4, 3), 600)?,
            ];
            let x = seeded(&[3, 6, 7, 7], 9, &Device::Cpu)?;
            let one_op = |x: &Tensor| {
                let blocks: Vec<FrozenBlock> = runs.iter().map(|p| block(p)).collect();
                Ok(bottleneck_train(x, &blocks)?.expect("the op applies"))
            };
            let one_by_one = |x: &Tensor| {
                let (mut y, mut stats) = (x.clone(), Vec::new());
                for pairs in &runs {
                    let (next, s) = composed(&y, pairs)?;
                    stats.push(s);
                    y = next;
                }
                Ok((y, stats))
            };
            let (y, stats, grad) = run(one_op, &x)?;
            let (y_ref, expected, grad_ref) = run(one_by_one, &x)?;
            assert_same_output_and_gradient("run of 3", (&y, &grad), (&y_ref, &grad_ref));
            assert_eq!(stats.len(), 3);
            for (i, (s, e)) in stats.iter().zip(&expected).enumerate() {
                assert_same_stats(&format!("block {i}"), s, e);
            }
            Ok(())
        })
    }

    /// With the portable path chosen the op steps aside, and the block composed from
    /// candle's operations (what a GPU runs) agrees with the fused run to 1e-10 in f64:
    /// output, batch statistics and input gradient.
    #[test]
    fn the_portable_path_composes_the_block_and_agrees() -> Result<()> {
        let case = CASES[1];
        let (c_in, .., size, batch) = case;
        let x = seeded(&[batch, c_in, size, size], 5, &Device::Cpu)?;
        let pairs = pairs(case, 300)?;
        let (y, stats, grad) = with_kernels(Kernels::Native, || run(|x| fused(x, &pairs), &x))?;
        let (y_ref, stats_ref, grad_ref) = with_kernels(Kernels::Portable, || {
            assert!(bottleneck_train(&x, &[block(&pairs)])?.is_none());
            run(|x| composed(x, &pairs), &x)
        })?;
        assert!(max_abs_diff(&y, &y_ref) < 1e-10);
        assert!(max_abs_diff(&grad, &grad_ref) < 1e-10);
        for (s, r) in stats.iter().zip(&stats_ref) {
            assert!(max_abs_diff(&s.mean, &r.mean) < 1e-10);
            assert!(max_abs_diff(&s.var, &r.var) < 1e-10);
        }
        Ok(())
    }

    #[test]
    fn a_pass_without_gradient_keeps_nothing_and_trainable_parameters_are_left_to_the_caller(
    ) -> Result<()> {
        // The fused op runs on the native kernels alone.
        with_kernels(Kernels::Native, || {
            let case = CASES[0];
            let x = seeded(&[case.5, case.0, case.4, case.4], 3, &Device::Cpu)?;
            let pairs = pairs(case, 7)?;
            let (y, _) = fused(&x, &pairs)?;
            assert!(!y.track_op());
            assert_eq!(max_abs_diff(&y, &composed(&x, &pairs)?.0), 0.0);

            let trainable = Var::from_tensor(&pairs[1].gamma)?;
            let mut b = block(&pairs);
            b.layers[1].gamma = trainable.as_tensor();
            assert!(bottleneck_train(&x, &[b])?.is_none());
            assert!(bottleneck_train(&x, &[])?.is_none());
            Ok(())
        })
    }
}
