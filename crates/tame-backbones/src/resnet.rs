//! torchvision's `resnet50` (v1.5: the stride sits on the 3x3 convolution), with taps named as
//! its graph nodes: `conv1`, `bn1`, `relu`, `maxpool`, `layerK` and `layerK.J` (block outputs),
//! `layerK.J.conv1|bn1|relu|conv2|bn2|relu_1|conv3|bn3|downsample.0|downsample.1|add|relu_2`,
//! `avgpool`, `flatten`, `fc`.
//!
//! This file is the network's definition: its layer table, checkpoint names and tap names;
//! `crate::exec` decides how its nodes run.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::conv::Conv;
use crate::exec::{conv_bn_relu, run_stages, Bottleneck, ConvBn, Stage};
use crate::linear::Dense;
use crate::norm::BatchNorm;

use crate::{normalize_imagenet, Backbone, Description, ForwardOutput, Mode, Result, TapRequest};

pub(crate) const DESCRIPTION: Description = Description {
    name: "resnet50",
    hub_repo: "timm/resnet50.tv_in1k",
    // timm's names are torchvision's.
    hub_name: |name, t| Ok((name, t)),
    pypi: None,
    build: |vb| Ok(Box::new(ResNet50::new(vb)?)),
};

/// Blocks per stage and the width of each stage's bottleneck.
const STAGES: [(usize, usize); 4] = [(3, 64), (4, 128), (6, 256), (3, 512)];
const EXPANSION: usize = 4;

fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, stride: usize) -> Result<Conv> {
    Ok(Conv::new(vb, (cin, cout, k), stride, k / 2, false)?)
}

fn batch_norm(vb: VarBuilder, channels: usize) -> Result<BatchNorm> {
    Ok(BatchNorm::new(vb, channels, 1e-5, 0.1)?)
}

/// Block `name` (`layerK.J`): `cin` channels in, a bottleneck `width` wide, `width *
/// EXPANSION` out, the stride on the 3x3 convolution.
fn bottleneck(
    vb: VarBuilder,
    name: String,
    cin: usize,
    width: usize,
    stride: usize,
) -> Result<Bottleneck> {
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
    Ok(Bottleneck {
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

pub struct ResNet50 {
    stem: ConvBn,
    /// `layer1` to `layer4`.
    stages: Vec<Stage>,
    fc: Dense,
}

impl ResNet50 {
    /// Builds the network from torchvision parameter names (`conv1.weight`, `bn1.running_mean`,
    /// `layer1.0.conv1.weight`, `fc.weight` ...).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let mut stages = Vec::new();
        let mut channels = 64;
        for (stage, (blocks, width)) in STAGES.into_iter().enumerate() {
            let name = format!("layer{}", stage + 1);
            let mut stage_blocks = Vec::new();
            for block in 0..blocks {
                let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                let block_name = format!("{name}.{block}");
                let vb = vb.pp(&block_name);
                stage_blocks.push(bottleneck(vb, block_name, channels, width, stride)?);
                channels = width * EXPANSION;
            }
            stages.push(Stage {
                name,
                blocks: stage_blocks,
            });
        }
        Ok(Self {
            stem: ConvBn::new(
                conv(vb.pp("conv1"), 3, 64, 7, 2)?,
                batch_norm(vb.pp("bn1"), 64)?,
            ),
            stages,
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
                .stages
                .iter()
                .flat_map(|s| &s.blocks)
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
        DESCRIPTION.name
    }

    fn tap_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["conv1", "bn1", "relu", "maxpool"]
            .map(String::from)
            .to_vec();
        for stage in &self.stages {
            for block in &stage.blocks {
                names.extend(block.node_names());
            }
            names.push(stage.name.clone());
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
        let x = taps.pass("maxpool", tame_ops::max_pool2d(&x, 3, 2, 1)?)?;
        let x = run_stages(&self.stages, x, train, &mut taps)?;
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
        for (stage, blocks) in net.stages.iter().map(|s| &s.blocks).enumerate() {
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
