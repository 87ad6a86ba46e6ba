//! torchvision's `vgg16` (configuration D, no batch norm), with taps named as its graph nodes:
//! `features.0` ... `features.30`, `avgpool`, `flatten`, `classifier.0` ... `classifier.6`.

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::conv::Conv;
use crate::dropout::Dropout;
use crate::exec::{Layer, Sequential};
use crate::linear::Dense;
use crate::{normalize_imagenet, Backbone, Description, ForwardOutput, Mode, Result, TapRequest};

pub(crate) const DESCRIPTION: Description = Description {
    name: "vgg16",
    hub_repo: "timm/vgg16.tv_in1k",
    hub_name: from_timm_name,
    pypi: None,
    build: |vb| Ok(Box::new(Vgg16::new(vb)?)),
};

/// Output channels of each convolution, `None` for a 2x2 max-pool.
const LAYOUT: [Option<usize>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];

pub struct Vgg16 {
    features: Sequential,
    classifier: Sequential,
    /// The generator of both dropout layers.
    dropout: Arc<Dropout>,
}

impl Vgg16 {
    /// Builds the network from torchvision parameter names (`features.0.weight`,
    /// `classifier.0.weight` ...).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let mut features = Vec::new();
        let mut channels = 3;
        for entry in LAYOUT {
            match entry {
                Some(out) => {
                    let name = format!("features.{}", features.len());
                    let conv = Conv::new(vb.pp(name), (channels, out, 3), 1, 1, true)?;
                    features.push(Layer::Conv(conv));
                    features.push(Layer::Relu);
                    channels = out;
                }
                None => features.push(Layer::MaxPool {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                }),
            }
        }
        let dropout = Arc::new(Dropout::new());
        let vb = vb.pp("classifier");
        let classifier = vec![
            Layer::Linear(Dense::new(vb.pp("0"), 512 * 7 * 7, 4096)?),
            Layer::Relu,
            Layer::Dropout(dropout.clone()),
            Layer::Linear(Dense::new(vb.pp("3"), 4096, 4096)?),
            Layer::Relu,
            Layer::Dropout(dropout.clone()),
            Layer::Linear(Dense::new(vb.pp("6"), 4096, 1000)?),
        ];
        Ok(Self {
            features: Sequential::new("features", features),
            classifier: Sequential::new("classifier", classifier),
            dropout,
        })
    }

    /// Makes train-mode dropout apply the given keep masks instead of drawing its own, to
    /// compare a pass with another implementation's (PyTorch's) draws. Each mask has the
    /// shape of its dropout's input, 1 where a unit is kept (and doubled) and 0 where it is
    /// dropped; each dropout layer a pass runs (`classifier.2`, then `classifier.5`) takes
    /// the next one, across passes. While masks are set, a dropout with none left is an
    /// error; `None` goes back to the seeded draws.
    pub fn set_dropout_masks(&self, masks: Option<Vec<Tensor>>) {
        self.dropout.set_masks(masks);
    }
}

/// timm's VGG keeps `features.*` but holds the classifier as convolutions:
/// `pre_logits.fc1` (4096x512x7x7, the same memory order as torchvision's 4096x25088 linear),
/// `pre_logits.fc2` (4096x4096x1x1) and `head.fc`.
fn from_timm_name(name: String, t: Tensor) -> Result<(String, Tensor)> {
    let renamed = match name.as_str() {
        "pre_logits.fc1.weight" => Some(("classifier.0.weight", Some(25088))),
        "pre_logits.fc1.bias" => Some(("classifier.0.bias", None)),
        "pre_logits.fc2.weight" => Some(("classifier.3.weight", Some(4096))),
        "pre_logits.fc2.bias" => Some(("classifier.3.bias", None)),
        "head.fc.weight" => Some(("classifier.6.weight", None)),
        "head.fc.bias" => Some(("classifier.6.bias", None)),
        _ => None,
    };
    Ok(match renamed {
        // Only a 4-d convolution kernel is flattened; anything else is checked as it is.
        Some((new, Some(cols))) if t.rank() == 4 && t.elem_count() == 4096 * cols => {
            (new.to_string(), t.reshape((4096, cols))?)
        }
        Some((new, _)) => (new.to_string(), t),
        None => (name, t),
    })
}

impl Backbone for Vgg16 {
    fn name(&self) -> &'static str {
        DESCRIPTION.name
    }

    fn tap_names(&self) -> Vec<String> {
        let mut names = self.features.node_names();
        names.extend(["avgpool", "flatten"].map(String::from));
        names.extend(self.classifier.node_names());
        names
    }

    fn default_taps(&self) -> Vec<String> {
        ["features.16", "features.23", "features.30"]
            .map(String::from)
            .to_vec()
    }

    fn cam_tap(&self) -> &'static str {
        // The last convolution's ReLU, before the last pool, as pytorch-grad-cam's examples.
        "features.29"
    }

    fn input_mean(&self) -> [f32; 3] {
        crate::IMAGENET_MEAN
    }

    fn reseed(&self, seed: u64) {
        self.dropout.reseed(seed);
    }

    fn forward(&self, images: &Tensor, request: &TapRequest, mode: Mode) -> Result<ForwardOutput> {
        let mut taps = request.collector();
        let x = normalize_imagenet(images)?;
        let x = self.features.forward(x, mode, &mut taps)?;
        if taps.done() {
            return taps.finish(None);
        }
        let x = taps.pass("avgpool", tame_ops::adaptive_avg_pool2d(&x, 7, 7)?)?;
        let x = taps.pass("flatten", x.flatten_from(1)?)?;
        // The logits when they are asked for (the pass stops early only when they are not).
        let logits = self.classifier.forward_logits(x, mode, &mut taps)?;
        taps.finish(Some(logits))
    }
}
