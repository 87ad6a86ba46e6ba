//! torchvision's `resnet50` (v1.5: the stride sits on the 3x3 convolution), with taps named as
//! its graph nodes: `conv1`, `bn1`, `relu`, `maxpool`, `layerK` and `layerK.J` (block outputs),
//! `layerK.J.conv1|bn1|relu|conv2|bn2|relu_1|conv3|bn3|downsample.0|downsample.1|add|relu_2`,
//! `avgpool`, `flatten`, `fc`.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::conv::Conv;
use crate::conv_bn::{ConvBn, Nodes};
use crate::norm::BatchNorm;

use crate::{normalize_imagenet, Backbone, ForwardOutput, Mode, Result, TapCollector, TapRequest};

/// Blocks per stage and the width of each stage's bottleneck.
const STAGES: [(usize, usize); 4] = [(3, 64), (4, 128), (6, 256), (3, 512)];
const EXPANSION: usize = 4;

/// A `k x k` convolution without bias (`<conv>.weight`) and its batch norm (`<bn>.*`).
fn conv_bn(
    (conv, bn): (VarBuilder, VarBuilder),
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
) -> Result<ConvBn> {
    Ok(ConvBn::new(
        Conv::new(conv, (cin, cout, k), stride, k / 2, false)?,
        BatchNorm::new(bn, cout, 1e-5, 0.1)?,
    ))
}

struct Bottleneck {
    name: String,
    /// conv1 + bn1, conv2 + bn2, conv3 + bn3.
    pairs: [ConvBn; 3],
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(vb: VarBuilder, name: String, cin: usize, width: usize, stride: usize) -> Result<Self> {
        let cout = width * EXPANSION;
        let pair = |c: &str, b: &str| (vb.pp(c), vb.pp(b));
        let downsample = if stride != 1 || cin != cout {
            let ds = pair("downsample.0", "downsample.1");
            Some(conv_bn(ds, cin, cout, 1, stride)?)
        } else {
            None
        };
        Ok(Self {
            pairs: [
                conv_bn(pair("conv1", "bn1"), cin, width, 1, 1)?,
                conv_bn(pair("conv2", "bn2"), width, width, 3, stride)?,
                conv_bn(pair("conv3", "bn3"), width, cout, 1, 1)?,
            ],
            downsample,
            name,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, taps: &mut TapCollector) -> Result<Tensor> {
        let node = |suffix: &str| format!("{}.{suffix}", self.name);
        let names = [
            ["conv1", "bn1", "relu"],
            ["conv2", "bn2", "relu_1"],
            ["conv3", "bn3", ""],
        ]
        .map(|n| n.map(node));
        let mut y = x.clone();
        for (pair, [conv, bn, relu]) in self.pairs.iter().zip(&names) {
            let relu = (!relu.ends_with('.')).then_some(relu.as_str());
            y = pair.forward(&y, train, Nodes { conv, bn, relu }, taps)?;
        }
        let identity = match &self.downsample {
            Some(pair) => {
                let (conv, bn) = (&node("downsample.0"), &node("downsample.1"));
                pair.forward(
                    x,
                    train,
                    Nodes {
                        conv,
                        bn,
                        relu: None,
                    },
                    taps,
                )?
            }
            None => x.clone(),
        };
        let y = taps.pass(&node("add"), (y + identity)?)?;
        let y = taps.pass(&node("relu_2"), y.relu()?)?;
        taps.pass(&self.name, y)
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

pub struct ResNet50 {
    /// conv1 + bn1.
    stem: ConvBn,
    /// The blocks of each of the four stages.
    layers: Vec<Vec<Bottleneck>>,
    fc: Linear,
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
            stem: conv_bn((vb.pp("conv1"), vb.pp("bn1")), 3, 64, 7, 2)?,
            layers,
            fc: candle_nn::linear(512 * EXPANSION, 1000, vb.pp("fc"))?,
        })
    }
}

impl ResNet50 {
    /// The running mean and variance of batch norm `name` (`bn1`, `layer4.2.bn3`,
    /// `layer1.0.downsample.1` ...), as updated by train-mode passes.
    pub fn running_stats(&self, name: &str) -> Option<(Tensor, Tensor)> {
        let pair = if name == "bn1" {
            &self.stem
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
                "bn1" => &block.pairs[0],
                "bn2" => &block.pairs[1],
                "bn3" => &block.pairs[2],
                "downsample.1" => block.downsample.as_ref()?,
                _ => return None,
            }
        };
        let bn = pair.bn();
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

    fn reseed(&self, _seed: u64) {
        // ResNet-50 has no dropout: train mode is deterministic.
    }

    fn forward(&self, images: &Tensor, request: &TapRequest, mode: Mode) -> Result<ForwardOutput> {
        let train = mode == Mode::Train;
        let mut taps = request.collector();
        let x = normalize_imagenet(images)?;
        let stem = Nodes {
            conv: "conv1",
            bn: "bn1",
            relu: Some("relu"),
        };
        let x = self.stem.forward(&x, train, stem, &mut taps)?;
        let mut x = taps.pass("maxpool", tame_ops::max_pool2d(&x, 3, 2, 1)?)?;
        for (stage, blocks) in self.layers.iter().enumerate() {
            for block in blocks {
                if taps.done() {
                    return taps.finish(None);
                }
                x = block.forward(&x, train, &mut taps)?;
            }
            x = taps.pass(&format!("layer{}", stage + 1), x)?;
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

    /// logits and `layer4` of an eval pass; `unfolded` also requests every convolution's own
    /// output, which keeps each batch norm apart from its convolution.
    fn eval_pass(net: &ResNet50, image: &Tensor, unfolded: bool) -> Vec<Tensor> {
        let mut taps = vec!["layer4".to_string()];
        if unfolded {
            let convs = ["conv1", "conv2", "conv3", "downsample.0"];
            taps.extend(
                net.tap_names()
                    .into_iter()
                    .filter(|n| convs.iter().any(|c| n.ends_with(c))),
            );
        }
        let out = net
            .forward(image, &net.tap_request(&taps, true).unwrap(), Mode::Eval)
            .unwrap();
        vec![out.logits.unwrap(), out.taps[0].clone()]
    }

    fn max_relative_diff(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f64>().unwrap() / scale
    }

    #[test]
    fn folded_batch_norms_equal_the_separate_ones_and_follow_train_mode_updates() {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_backend(
            Box::new(crate::synthetic::SyntheticWeights),
            DType::F64,
            dev.clone(),
        );
        let net = ResNet50::new(vb).unwrap();
        let image = Tensor::rand(0f64, 1f64, (1, 3, 64, 64), &dev).unwrap();

        let folded = eval_pass(&net, &image, false);
        let separate = eval_pass(&net, &image, true);
        for (a, b) in folded.iter().zip(&separate) {
            assert!(max_relative_diff(a, b) < 1e-10);
        }

        // A train-mode pass moves every running statistic: the folded weights must follow.
        let batch = Tensor::rand(0f64, 1f64, (2, 3, 64, 64), &dev).unwrap();
        let request = net.tap_request(&[], true).unwrap();
        net.forward(&batch, &request, Mode::Train).unwrap();
        let refolded = eval_pass(&net, &image, false);
        let separate = eval_pass(&net, &image, true);
        for (a, b) in refolded.iter().zip(&separate) {
            assert!(max_relative_diff(a, b) < 1e-10);
        }
        assert!(max_relative_diff(&refolded[0], &folded[0]) > 1e-6);
    }
}
