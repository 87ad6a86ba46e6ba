//! torchvision's `resnet50` (v1.5: the stride sits on the 3x3 convolution), with taps named as
//! its graph nodes: `conv1`, `bn1`, `relu`, `maxpool`, `layerK` and `layerK.J` (block outputs),
//! `layerK.J.conv1|bn1|relu|conv2|bn2|relu_1|conv3|bn3|downsample.0|downsample.1|add|relu_2`,
//! `avgpool`, `flatten`, `fc`.
//!
//! How it runs (every fusion below yields to a tap on a node it would hide):
//! - Each `relu(bn(x))` and each `relu(bn(x) + identity)` is one `tame_ops` batch-norm op with
//!   its epilogue, unless the batch norm's or the sum's own output is a tap.
//! - In eval mode each convolution followed by a batch norm ([`ConvBn`]: the stem, each
//!   block's three, the downsample) runs as one convolution with the batch norm folded into
//!   its weight and bias, the ReLU fused; the block's third also adds the identity in the
//!   same pass ([`tame_ops::conv2d_fused_residual`]). The folded copy is made on the first
//!   eval pass and dropped by every train pass, which moves the running statistics it comes
//!   from.
//! - In train mode each run of consecutive blocks whose inner nodes no tap asks for, ended by
//!   a block whose output (or stage output) a tap asks for, runs as one
//!   `exec::bottleneck_train` op, each batch norm's running statistics updated as its
//!   own op would. TAME's training passes: the unmasked pass taps the stage outputs `layer2`
//!   to `layer4` (three ops: layer1-layer2, layer3, layer4); the masked pass, which
//!   back-propagates to the image, taps none: its sixteen blocks are one graph node.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use tame_ops::Epilogue;

use crate::conv::{Conv, ConvBn};
use crate::exec::FrozenBlock;
use crate::linear::Dense;
use crate::norm::BatchNorm;

use crate::{normalize_imagenet, Backbone, ForwardOutput, Mode, Result, TapCollector, TapRequest};

/// Blocks per stage and the width of each stage's bottleneck.
const STAGES: [(usize, usize); 4] = [(3, 64), (4, 128), (6, 256), (3, 512)];
const EXPANSION: usize = 4;

fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv> {
    Ok(Conv::new(vb, (cin, cout, k), stride, k / 2, false)?)
}

fn batch_norm(vb: VarBuilder, channels: usize) -> Result<BatchNorm> {
    Ok(BatchNorm::new(vb, channels, 1e-5, 0.1)?)
}

/// `relu(bn(conv(x)))`: the folded convolution in eval mode unless a tap asks for the
/// convolution's or the batch norm's own output; else `relu(bn(x))` as one op unless the
/// batch norm's output is asked for.
fn conv_bn_relu(
    pair: &ConvBn,
    x: &Tensor,
    train: bool,
    taps: &mut TapCollector,
    [conv_name, bn_name, relu_name]: [&str; 3],
) -> Result<Tensor> {
    if !train && !taps.wants(conv_name) && !taps.wants(bn_name) {
        let y = pair.forward_eval(x, true)?;
        return taps.pass(relu_name, y);
    }
    let y = taps.pass(conv_name, pair.conv().forward(x)?)?;
    let y = if taps.wants(bn_name) {
        let y = pair.bn_forward_then(&y, train, Epilogue::default())?;
        taps.pass(bn_name, y)?.relu()?
    } else {
        pair.bn_forward_then(&y, train, Epilogue::relu())?
    };
    taps.pass(relu_name, y)
}

struct Bottleneck {
    name: String,
    first: ConvBn,
    second: ConvBn,
    third: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(vb: VarBuilder, name: String, cin: usize, width: usize, stride: usize) -> Result<Self> {
        let cout = width * EXPANSION;
        let downsample = if stride != 1 || cin != cout {
            let ds = vb.pp("downsample");
            Some(ConvBn::new(
                conv(ds.pp("0"), cin, cout, 1, stride)?,
                batch_norm(ds.pp("1"), cout)?,
            ))
        } else {
            None
        };
        Ok(Self {
            first: ConvBn::new(
                conv(vb.pp("conv1"), cin, width, 1, 1)?,
                batch_norm(vb.pp("bn1"), width)?,
            ),
            second: ConvBn::new(
                conv(vb.pp("conv2"), width, width, 3, stride)?,
                batch_norm(vb.pp("bn2"), width)?,
            ),
            third: ConvBn::new(
                conv(vb.pp("conv3"), width, cout, 1, 1)?,
                batch_norm(vb.pp("bn3"), cout)?,
            ),
            downsample,
            name,
        })
    }

    /// Whether a tap asks for a node inside the block, not its output.
    fn inner_tapped(&self, taps: &TapCollector) -> bool {
        let inner = self.node_names();
        // The block's own output is the last two names (relu_2 and the block's).
        inner[..inner.len() - 2].iter().any(|n| taps.wants(n))
    }

    /// Whether a tap asks for the block's output (under either of its names).
    fn output_tapped(&self, taps: &TapCollector) -> bool {
        taps.wants(&self.name) || taps.wants(&format!("{}.relu_2", self.name))
    }

    /// Offers the block's output to the taps under both its names.
    fn pass_output(&self, y: Tensor, taps: &mut TapCollector) -> Result<Tensor> {
        let y = taps.pass(&format!("{}.relu_2", self.name), y)?;
        taps.pass(&self.name, y)
    }

    /// The block from its separate ops, each tapped node offered.
    fn forward(&self, x: &Tensor, train: bool, taps: &mut TapCollector) -> Result<Tensor> {
        let name = |suffix: &str| format!("{}.{suffix}", self.name);
        let names = |s: [&str; 3]| s.map(name);
        let [c1, b1, r1] = names(["conv1", "bn1", "relu"]);
        let y = conv_bn_relu(&self.first, x, train, taps, [&c1, &b1, &r1])?;
        let [c2, b2, r2] = names(["conv2", "bn2", "relu_1"]);
        let y = conv_bn_relu(&self.second, &y, train, taps, [&c2, &b2, &r2])?;
        let identity = match &self.downsample {
            Some(pair) => {
                let (conv_name, bn_name) = (name("downsample.0"), name("downsample.1"));
                if !train && !taps.wants(&conv_name) && !taps.wants(&bn_name) {
                    pair.forward_eval(x, false)?
                } else {
                    let d = taps.pass(&conv_name, pair.conv().forward(x)?)?;
                    let d = pair.bn_forward_then(&d, train, Epilogue::default())?;
                    taps.pass(&bn_name, d)?
                }
            }
            None => x.clone(),
        };
        let [c3, bn3, add] = names(["conv3", "bn3", "add"]);
        let y = if !train && ![&c3, &bn3, &add].iter().any(|n| taps.wants(n)) {
            // relu(bn3(conv3(y)) + identity) as one folded convolution.
            self.third.forward_eval_residual(&y, &identity)?
        } else {
            let y = taps.pass(&c3, self.third.conv().forward(&y)?)?;
            if taps.wants(&bn3) || taps.wants(&add) {
                let y = self.third.bn_forward_then(&y, train, Epilogue::default())?;
                let y = taps.pass(&bn3, y)?;
                taps.pass(&add, (y + identity)?)?.relu()?
            } else {
                self.third
                    .bn_forward_then(&y, train, Epilogue::add_relu(&identity))?
            }
        };
        self.pass_output(y, taps)
    }

    /// The pairs in `exec::bottleneck_train`'s order: the main path's, then the
    /// shortcut's.
    fn pairs(&self) -> Vec<&ConvBn> {
        [&self.first, &self.second, &self.third]
            .into_iter()
            .chain(&self.downsample)
            .collect()
    }

    fn node_names(&self) -> Vec<String> {
        let mut suffixes = vec![
            "conv1", "bn1", "relu", "conv2", "bn2", "relu_1", "conv3", "bn3",
        ];
        if self.downsample.is_some() {
            suffixes.extend(["downsample.0", "downsample.1"]);
        }
        suffixes.extend(["add", "relu_2"]);
        let mut names: Vec<String> = suffixes
            .iter()
            .map(|s| format!("{}.{s}", self.name))
            .collect();
        names.push(self.name.clone());
        names
    }
}

/// A run of train-mode blocks as one op (`exec::bottleneck_train`), when it applies;
/// each batch norm's running statistics are updated as its own op would.
fn forward_train_fused(
    blocks: &[(&Bottleneck, Option<String>)],
    x: &Tensor,
) -> Result<Option<Tensor>> {
    let pairs: Vec<Vec<&ConvBn>> = blocks.iter().map(|(b, _)| b.pairs()).collect();
    let filters = pairs
        .iter()
        .map(|block| block.iter().map(|p| p.prepared_filters()).collect())
        .collect::<candle_core::Result<Vec<Vec<_>>>>()?;
    let frozen: Vec<FrozenBlock> = pairs
        .iter()
        .zip(&filters)
        .map(|(block, filters)| {
            let f: Vec<_> = block
                .iter()
                .zip(filters)
                .map(|(p, f)| p.frozen(f.as_deref()))
                .collect();
            FrozenBlock {
                layers: [f[0], f[1], f[2]],
                downsample: f.get(3).copied(),
            }
        })
        .collect();
    let Some((y, stats)) = crate::exec::bottleneck_train(x, &frozen)? else {
        return Ok(None);
    };
    for (block, stats) in pairs.iter().zip(stats) {
        for (pair, stats) in block.iter().zip(stats) {
            pair.track(stats)?;
        }
    }
    Ok(Some(y))
}

pub struct ResNet50 {
    stem: ConvBn,
    /// The blocks of each of the four stages.
    layers: Vec<Vec<Bottleneck>>,
    fc: Dense,
}

impl ResNet50 {
    /// Builds the network from torchvision parameter names (`conv1.weight`, `bn1.running_mean`,
    /// `layer1.0.conv1.weight`, `fc.weight` ...).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut channels = 64;
        for (stage, (blocks, width)) in STAGES.into_iter().enumerate() {
            let mut stage_blocks = Vec::new();
            for block in 0..blocks {
                let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                let name = format!("layer{}.{block}", stage + 1);
                stage_blocks.push(Bottleneck::new(
                    vb.pp(&name),
                    name,
                    channels,
                    width,
                    stride,
                )?);
                channels = width * EXPANSION;
            }
            layers.push(stage_blocks);
        }
        Ok(Self {
            stem: ConvBn::new(
                conv(vb.pp("conv1"), 3, 64, 7, 2)?,
                batch_norm(vb.pp("bn1"), 64)?,
            ),
            layers,
            fc: Dense::new(vb.pp("fc"), 512 * EXPANSION, 1000)?,
        })
    }
}

impl ResNet50 {
    /// The running mean and variance of batch norm `name` (`bn1`, `layer4.2.bn3`,
    /// `layer1.0.downsample.1` ...), as updated by train-mode passes.
    pub fn running_stats(&self, name: &str) -> Option<(Tensor, Tensor)> {
        let bn = if name == "bn1" {
            self.stem.bn()
        } else {
            let (block_name, leaf) = name.rsplit_once('.').and_then(|(head, leaf)| {
                if leaf == "1" {
                    let (block, ds) = head.rsplit_once('.')?;
                    (ds == "downsample").then_some((block, "downsample.1"))
                } else {
                    Some((head, leaf))
                }
            })?;
            let block = self
                .layers
                .iter()
                .flatten()
                .find(|b| b.name == block_name)?;
            match leaf {
                "bn1" => block.first.bn(),
                "bn2" => block.second.bn(),
                "bn3" => block.third.bn(),
                "downsample.1" => block.downsample.as_ref()?.bn(),
                _ => return None,
            }
        };
        Some((bn.running_mean().clone(), bn.running_var().clone()))
    }
}

impl Backbone for ResNet50 {
    fn name(&self) -> &'static str {
        "resnet50"
    }

    fn tap_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["conv1", "bn1", "relu", "maxpool"]
            .map(String::from)
            .to_vec();
        for (stage, blocks) in self.layers.iter().enumerate() {
            for block in blocks {
                names.extend(block.node_names());
            }
            names.push(format!("layer{}", stage + 1));
        }
        names.extend(["avgpool", "flatten", "fc"].map(String::from));
        names
    }

    fn default_taps(&self) -> Vec<String> {
        ["layer2", "layer3", "layer4"].map(String::from).to_vec()
    }

    fn cam_tap(&self) -> &'static str {
        "layer4"
    }

    fn input_mean(&self) -> [f32; 3] {
        crate::IMAGENET_MEAN
    }

    fn reseed(&self, _seed: u64) {
        // ResNet-50 has no dropout: train mode is deterministic.
    }

    fn forward(&self, images: &Tensor, request: &TapRequest, mode: Mode) -> Result<ForwardOutput> {
        let train = mode == Mode::Train;
        let mut taps = request.collector();
        let x = normalize_imagenet(images)?;
        let x = conv_bn_relu(&self.stem, &x, train, &mut taps, ["conv1", "bn1", "relu"])?;
        let mut x = taps.pass("maxpool", tame_ops::max_pool2d(&x, 3, 2, 1)?)?;
        // Each block with the name of its stage's output when it is the stage's last.
        let blocks: Vec<(&Bottleneck, Option<String>)> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(stage, blocks)| {
                let last = blocks.len() - 1;
                let stage_name = move |j: usize| (j == last).then(|| format!("layer{}", stage + 1));
                blocks
                    .iter()
                    .enumerate()
                    .map(move |(j, b)| (b, stage_name(j)))
            })
            .collect();
        let mut i = 0;
        while i < blocks.len() {
            if taps.done() {
                return taps.finish(None);
            }
            // In train mode, the longest run of blocks from here that no tap looks into
            // runs as one op: a tapped output ends the run.
            let mut end = i;
            while train && end < blocks.len() && !blocks[end].0.inner_tapped(&taps) {
                let (block, stage) = &blocks[end];
                end += 1;
                if block.output_tapped(&taps) || stage.as_ref().is_some_and(|s| taps.wants(s)) {
                    break;
                }
            }
            let fused = if end > i {
                forward_train_fused(&blocks[i..end], &x)?
            } else {
                None
            };
            let end = match fused {
                Some(y) => {
                    x = blocks[end - 1].0.pass_output(y, &mut taps)?;
                    end
                }
                None => {
                    x = blocks[i].0.forward(&x, train, &mut taps)?;
                    i + 1
                }
            };
            if let Some(stage) = &blocks[end - 1].1 {
                x = taps.pass(stage, x)?;
            }
            i = end;
        }
        if taps.done() {
            return taps.finish(None);
        }
        let x = tame_ops::adaptive_avg_pool2d(&x, 1, 1)?;
        let x = taps.pass("avgpool", x)?;
        let x = x.flatten_from(1)?;
        let x = taps.pass("flatten", x)?;
        let logits = self.fc.forward(&x)?;
        taps.offer("fc", &logits);
        taps.finish(Some(logits))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::synthetic::SyntheticWeights;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Asking for a batch norm's or an addition's own output keeps it apart from the ReLU
    /// after it; the results are those of the fused ops either way, to the bit.
    #[test]
    fn fused_and_separate_batch_norm_paths_agree() -> Result<()> {
        let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, Device::Cpu);
        let net = ResNet50::new(vb)?;
        let images = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu)?;
        let outputs = ["relu", "layer1.0.relu", "layer1.0", "layer1.1"].map(String::from);
        let parts = ["bn1", "layer1.0.bn1", "layer1.0.add", "layer1.1.bn3"].map(String::from);
        for mode in [Mode::Eval, Mode::Train] {
            let fused = net.forward(&images, &net.tap_request(&outputs, false)?, mode)?;
            let all: Vec<String> = outputs.iter().chain(&parts).cloned().collect();
            let split = net.forward(&images, &net.tap_request(&all, false)?, mode)?;
            // In eval mode the first takes the folded convolutions (rounding apart).
            let tolerance = if mode == Mode::Eval { 1e-4 } else { 0.0 };
            for (a, b) in fused.taps.iter().zip(&split.taps) {
                assert!(max_abs_diff(a, b) <= tolerance);
            }
            let [bn1, bn1_block, add, _] = &split.taps[4..] else {
                unreachable!()
            };
            assert!(max_abs_diff(&split.taps[0], &bn1.relu()?) == 0.0);
            assert!(max_abs_diff(&split.taps[1], &bn1_block.relu()?) == 0.0);
            assert!(max_abs_diff(&split.taps[2], &add.relu()?) == 0.0);
        }
        Ok(())
    }

    /// In train mode the blocks between tapped outputs run as one op; the logits, the
    /// input gradient and the running statistics are those of the blocks composed from
    /// their separate ops (a tap inside every block), to the bit.
    #[test]
    fn runs_of_train_mode_blocks_equal_the_blocks_one_by_one() -> Result<()> {
        let dev = Device::Cpu;
        let images = Tensor::rand(0f32, 1f32, (2, 3, 64, 64), &dev)?;
        let r = Tensor::rand(0f32, 1f32, (2, 1000), &dev)?;
        let pass = |taps: &[String]| -> Result<(Tensor, Tensor, Vec<Tensor>)> {
            let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F32, dev.clone());
            let net = ResNet50::new(vb)?;
            let x = candle_core::Var::from_tensor(&images)?;
            let out = net.forward(x.as_tensor(), &net.tap_request(taps, true)?, Mode::Train)?;
            let logits = out.logits.unwrap();
            let grads = (&logits * &r)?.sum_all()?.backward()?;
            let grad = grads.get(x.as_tensor()).unwrap().clone();
            let stats = ["layer1.0.bn1", "layer2.0.downsample.1", "layer4.2.bn3"]
                .iter()
                .map(|n| net.running_stats(n).unwrap().1.copy())
                .collect::<candle_core::Result<_>>()?;
            Ok((logits, grad, stats))
        };
        // Taps that split the blocks into three runs, and taps inside every block.
        let runs = pass(&["layer1.1", "layer3"].map(String::from))?;
        let inside: Vec<String> = STAGES
            .iter()
            .enumerate()
            .flat_map(|(s, &(n, _))| (0..n).map(move |j| format!("layer{}.{j}.conv1", s + 1)))
            .collect();
        let one_by_one = pass(&inside)?;
        assert_eq!(max_abs_diff(&runs.0, &one_by_one.0), 0.0, "logits");
        assert_eq!(max_abs_diff(&runs.1, &one_by_one.1), 0.0, "input gradient");
        assert!(runs.1.abs()?.max_all()?.to_scalar::<f32>()? > 0.0);
        for (a, b) in runs.2.iter().zip(&one_by_one.2) {
            assert_eq!(max_abs_diff(a, b), 0.0, "running variance");
        }
        Ok(())
    }

    /// Eval mode folds each batch norm that follows a convolution into it, unless a tap
    /// asks for the convolution's or the batch norm's own output; both give the same
    /// numbers, also after a train pass has moved the running statistics.
    #[test]
    fn folded_batch_norms_match_the_separate_ones_and_follow_train_passes() -> Result<()> {
        let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F64, Device::Cpu);
        let net = ResNet50::new(vb)?;
        let images = Tensor::rand(0f64, 1f64, (2, 3, 64, 64), &Device::Cpu)?;
        let outputs = ["layer1", "layer3", "layer4"].map(String::from).to_vec();
        // Every convolution's own output: nothing can be folded.
        let mut unfolded = outputs.clone();
        unfolded.push("conv1".into());
        for (stage, blocks) in net.layers.iter().enumerate() {
            for block in 0..blocks.len() {
                for conv in ["conv1", "conv2", "conv3", "downsample.0"] {
                    if conv != "downsample.0" || block == 0 {
                        unfolded.push(format!("layer{}.{block}.{conv}", stage + 1));
                    }
                }
            }
        }
        let agree = || -> Result<()> {
            let folded = net.forward(&images, &net.tap_request(&outputs, true)?, Mode::Eval)?;
            let separate = net.forward(&images, &net.tap_request(&unfolded, true)?, Mode::Eval)?;
            let logits = |o: &ForwardOutput| o.logits.clone().unwrap();
            let diff = (logits(&folded) - logits(&separate))?.abs()?.max_all()?;
            let scale = logits(&separate).abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff.to_scalar::<f64>()? <= 1e-9 * scale.max(1.0), "{diff}");
            for (a, b) in folded.taps.iter().zip(&separate.taps) {
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
                let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(diff <= 1e-9 * scale.max(1.0), "{diff} of {scale}");
            }
            Ok(())
        };
        agree()?;
        // A train pass moves every running statistic: the folded copies must follow.
        // A copy: the statistics are updated in place.
        let before = net.running_stats("layer2.0.bn1").unwrap().0.copy()?;
        net.forward(&images, &net.tap_request(&outputs, true)?, Mode::Train)?;
        let after = net.running_stats("layer2.0.bn1").unwrap().0;
        assert!((after - before)?.abs()?.max_all()?.to_scalar::<f64>()? > 1e-6);
        agree()
    }
}
