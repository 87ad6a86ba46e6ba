//! ResNet's residual stages: each block from its separate ops (fused where no tap asks for a
//! node in between), or in train mode each run of consecutive blocks that no tap looks into
//! as one [`bottleneck_train`] op.

use candle_core::Tensor;
use tame_ops::Epilogue;

use super::conv_bn::{conv_bn_relu, ConvBn};
use super::{bottleneck_train, FrozenBlock};
use crate::{Result, TapCollector};

/// Runs `stages` on `x`, offering every node to `taps`; returns early, with the last output,
/// once `taps` is done. In train mode the longest run of blocks that no tap looks into (a
/// tapped output ends it) runs as one op, each batch norm's running statistics updated as
/// its own op would: TAME's unmasked pass, tapping `layer2` to `layer4`, runs three ops; the
/// masked pass, tapping none, one.
pub(crate) fn run_stages(
    stages: &[Stage],
    x: Tensor,
    train: bool,
    taps: &mut TapCollector,
) -> Result<Tensor> {
    // Each block with the name of its stage's output when it is the stage's last.
    let blocks: Vec<(&Bottleneck, Option<&str>)> = stages
        .iter()
        .flat_map(|stage| {
            let last = stage.blocks.len() - 1;
            let name = stage.name.as_str();
            stage
                .blocks
                .iter()
                .enumerate()
                .map(move |(j, b)| (b, (j == last).then_some(name)))
        })
        .collect();
    let mut x = x;
    let mut i = 0;
    while i < blocks.len() {
        if taps.done() {
            return Ok(x);
        }
        // In train mode, the longest run of blocks from here that no tap looks into
        // runs as one op: a tapped output ends the run.
        let mut end = i;
        while train && end < blocks.len() && !blocks[end].0.inner_tapped(taps) {
            let (block, stage) = &blocks[end];
            end += 1;
            if block.output_tapped(taps) || stage.is_some_and(|s| taps.wants(s)) {
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
                x = blocks[end - 1].0.pass_output(y, taps)?;
                end
            }
            None => {
                x = blocks[i].0.forward(&x, train, taps)?;
                i + 1
            }
        };
        if let Some(stage) = blocks[end - 1].1 {
            x = taps.pass(stage, x)?;
        }
        i = end;
    }
    Ok(x)
}

/// torchvision's bottleneck block: `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) +
/// shortcut(x))`, the shortcut a downsampling convolution + batch norm or the identity. Its
/// nodes are named `<name>.conv1|bn1|relu|conv2|bn2|relu_1|conv3|bn3|downsample.0|
/// downsample.1|add|relu_2`, its output also `<name>`.
pub(crate) struct Bottleneck {
    pub(crate) name: String,
    pub(crate) first: ConvBn,
    pub(crate) second: ConvBn,
    pub(crate) third: ConvBn,
    pub(crate) downsample: Option<ConvBn>,
}

/// Consecutive blocks whose last output is also node `name` (torchvision's `layerK`).
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) blocks: Vec<Bottleneck>,
}

impl Bottleneck {
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

    /// The pairs in `bottleneck_train`'s order: the main path's, then the
    /// shortcut's.
    fn pairs(&self) -> Vec<&ConvBn> {
        [&self.first, &self.second, &self.third]
            .into_iter()
            .chain(&self.downsample)
            .collect()
    }

    pub(crate) fn node_names(&self) -> Vec<String> {
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

/// A run of train-mode blocks as one op (`bottleneck_train`), when it applies;
/// each batch norm's running statistics are updated as its own op would.
fn forward_train_fused(
    blocks: &[(&Bottleneck, Option<&str>)],
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
    let Some((y, stats)) = bottleneck_train(x, &frozen)? else {
        return Ok(None);
    };
    for (block, stats) in pairs.iter().zip(stats) {
        for (pair, stats) in block.iter().zip(stats) {
            pair.track(stats)?;
        }
    }
    Ok(Some(y))
}
