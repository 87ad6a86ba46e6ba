use serde::{Deserialize, Serialize};

use crate::{AmError, Version};

/// Number of output classes (ImageNet-1k), fixed by the reference.
pub const NUM_CLASSES: usize = 1000;

/// The largest side of the explanation maps.
const MAX_SIDE: usize = 56;

/// Shape (C, H, W) of one tapped feature map, without the batch axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TapShape {
    /// Channels C.
    pub channels: usize,
    /// Height H.
    pub height: usize,
    /// Width W.
    pub width: usize,
}

impl TapShape {
    /// A tap of `channels` x `height` x `width`.
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    fn dims(self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
}

/// What an attention mechanism is built for: its version and the shapes of its taps, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmConfig {
    version: Version,
    taps: Vec<TapShape>,
}

impl AmConfig {
    /// Checks that there is at least one tap and that no shape is empty.
    pub fn new(version: Version, taps: Vec<TapShape>) -> Result<Self, AmError> {
        if taps.is_empty() {
            return Err(AmError::NoTaps);
        }
        if let Some((index, tap)) = taps.iter().enumerate().find(|(_, t)| t.dims().contains(&0)) {
            return Err(AmError::EmptyTap {
                index,
                shape: tap.dims(),
            });
        }
        Ok(Self { version, taps })
    }

    /// The version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The tap shapes, in order.
    pub fn taps(&self) -> &[TapShape] {
        &self.taps
    }

    /// Side S of the (square) explanation maps: the first tap's height, at most 56.
    pub fn side(&self) -> usize {
        self.taps[0].height.min(MAX_SIDE)
    }

    /// Output channels of branch `i` (its 1x1 convolution).
    pub(crate) fn branch_channels(&self, i: usize) -> usize {
        match self.version {
            Version::NoSkipConnection => NUM_CLASSES,
            _ => self.taps[i].channels,
        }
    }

    /// Channels of the fused features, the fuser's input.
    pub fn fused_channels(&self) -> usize {
        (0..self.taps.len()).map(|i| self.branch_channels(i)).sum()
    }

    /// Number of batch-norm layers. `Noskipconnection` always has at least three: the
    /// reference builds `[1000] * 3` of them whatever the number of taps, and its state dict
    /// holds them all, unused ones included.
    pub(crate) fn batch_norms(&self) -> usize {
        match self.version {
            Version::NoSkipNoBatchNorm => 0,
            Version::NoSkipConnection => self.taps.len().max(3),
            _ => self.taps.len(),
        }
    }

    /// Channels of batch norm `i`.
    pub(crate) fn batch_norm_channels(&self, i: usize) -> usize {
        match self.version {
            Version::NoSkipConnection => NUM_CLASSES,
            _ => self.taps[i].channels,
        }
    }

    /// Every tensor of the state dict with its shape, in the reference's order.
    pub fn state_layout(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (i, tap) in self.taps.iter().enumerate() {
            let c = self.branch_channels(i);
            out.push((
                format!("attn.convs.{i}.weight"),
                vec![c, tap.channels, 1, 1],
            ));
            out.push((format!("attn.convs.{i}.bias"), vec![c]));
        }
        for i in 0..self.batch_norms() {
            let c = self.batch_norm_channels(i);
            for leaf in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("attn.bns.{i}.{leaf}"), vec![c]));
            }
            out.push((format!("attn.bns.{i}.num_batches_tracked"), vec![]));
        }
        out.push((
            "attn.fuser.weight".to_string(),
            vec![NUM_CLASSES, self.fused_channels(), 1, 1],
        ));
        out.push(("attn.fuser.bias".to_string(), vec![NUM_CLASSES]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vgg() -> Vec<TapShape> {
        vec![
            TapShape::new(256, 28, 28),
            TapShape::new(512, 14, 14),
            TapShape::new(512, 7, 7),
        ]
    }

    #[test]
    fn side_is_first_height_capped_at_56() {
        let c = AmConfig::new(Version::Tame, vgg()).unwrap();
        assert_eq!(c.side(), 28);
        let big = AmConfig::new(Version::Tame, vec![TapShape::new(64, 112, 112)]).unwrap();
        assert_eq!(big.side(), 56);
    }

    #[test]
    fn rejects_no_taps_and_empty_shapes() {
        assert!(matches!(
            AmConfig::new(Version::Tame, vec![]),
            Err(AmError::NoTaps)
        ));
        let e = AmConfig::new(Version::Tame, vec![TapShape::new(3, 0, 4)]).unwrap_err();
        assert!(matches!(e, AmError::EmptyTap { index: 0, .. }));
    }

    #[test]
    fn layouts_follow_the_reference() {
        let tame = AmConfig::new(Version::Tame, vgg()).unwrap().state_layout();
        assert_eq!(tame.len(), 3 * 2 + 3 * 5 + 2);
        assert_eq!(
            tame[0],
            ("attn.convs.0.weight".into(), vec![256, 256, 1, 1])
        );
        assert_eq!(tame[6], ("attn.bns.0.weight".into(), vec![256]));
        assert_eq!(tame[10], ("attn.bns.0.num_batches_tracked".into(), vec![]));
        assert_eq!(
            tame[21],
            ("attn.fuser.weight".into(), vec![1000, 1280, 1, 1])
        );

        let noskip = AmConfig::new(Version::NoSkipConnection, vgg()[..2].to_vec()).unwrap();
        let l = noskip.state_layout();
        assert_eq!(l[0].1, vec![1000, 256, 1, 1]);
        // Three batch norms even for two taps, as the reference builds them.
        assert!(l.iter().any(|(n, _)| n == "attn.bns.2.running_var"));
        assert_eq!(l.last().unwrap().0, "attn.fuser.bias");
        assert_eq!(l[l.len() - 2].1, vec![1000, 2000, 1, 1]);

        let nobn = AmConfig::new(Version::NoSkipNoBatchNorm, vgg())
            .unwrap()
            .state_layout();
        assert!(nobn.iter().all(|(n, _)| !n.contains("bns")));
        assert_eq!(nobn.len(), 8);
    }
}
