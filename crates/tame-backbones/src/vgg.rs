//! torchvision's `vgg16` (configuration D, no batch norm), with taps named as its graph nodes:
//! `features.0` ... `features.30`, `avgpool`, `flatten`, `classifier.0` ... `classifier.6`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::conv::Conv;
use crate::exec::ChainLayer;
use crate::linear::Dense;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::{normalize_imagenet, Backbone, ForwardOutput, Mode, Result, TapRequest};

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

enum Layer {
    Conv(Conv),
    Linear(Dense),
    Relu,
    MaxPool,
    Dropout,
}

pub struct Vgg16 {
    features: Vec<Layer>,
    classifier: Vec<Layer>,
    dropout_rng: Mutex<StdRng>,
    /// Keep masks that replace the draws while set ([`Vgg16::set_dropout_masks`]).
    dropout_masks: Mutex<Option<VecDeque<Tensor>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
                None => features.push(Layer::MaxPool),
            }
        }
        let vb = vb.pp("classifier");
        let classifier = vec![
            Layer::Linear(Dense::new(vb.pp("0"), 512 * 7 * 7, 4096)?),
            Layer::Relu,
            Layer::Dropout,
            Layer::Linear(Dense::new(vb.pp("3"), 4096, 4096)?),
            Layer::Relu,
            Layer::Dropout,
            Layer::Linear(Dense::new(vb.pp("6"), 4096, 1000)?),
        ];
        Ok(Self {
            features,
            classifier,
            dropout_rng: Mutex::new(StdRng::seed_from_u64(0)),
            dropout_masks: Mutex::new(None),
        })
    }

    /// Makes train-mode dropout apply the given keep masks instead of drawing its own, to
    /// compare a pass with another implementation's (PyTorch's) draws. Each mask has the
    /// shape of its dropout's input, 1 where a unit is kept (and doubled) and 0 where it is
    /// dropped; each dropout layer a pass runs (`classifier.2`, then `classifier.5`) takes
    /// the next one, across passes. While masks are set, a dropout with none left is an
    /// error; `None` goes back to the seeded draws.
    pub fn set_dropout_masks(&self, masks: Option<Vec<Tensor>>) {
        *lock(&self.dropout_masks) = masks.map(VecDeque::from);
    }

    fn apply(&self, layer: &Layer, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match layer {
            Layer::Conv(conv) => conv.forward(x)?,
            Layer::Linear(linear) => linear.forward(x)?,
            Layer::Relu => x.relu()?,
            Layer::MaxPool => tame_ops::max_pool2d(x, 2, 2, 0)?,
            Layer::Dropout => self.dropout(x, mode)?,
        })
    }

    /// The features as one op (`exec::conv_relu_chain`), when it applies: a pass that
    /// back-propagates to its input through no feature tap (TAME's masked training pass).
    fn features_chained(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let filters = self
            .features
            .iter()
            .map(|layer| match layer {
                Layer::Conv(conv) => conv.prepared(),
                _ => Ok(None),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let chain: Vec<ChainLayer> = self
            .features
            .iter()
            .zip(&filters)
            .filter_map(|(layer, f)| match layer {
                Layer::Conv(conv) => Some(conv.chain_layer(f.as_deref())),
                Layer::MaxPool => Some(ChainLayer::MaxPool {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                }),
                // Every convolution's ReLU is part of its chain layer.
                Layer::Relu => None,
                Layer::Linear(_) | Layer::Dropout => unreachable!("not among the features"),
            })
            .collect();
        Ok(crate::exec::conv_relu_chain(x, &chain)?)
    }

    /// Dropout with p = 0.5 as PyTorch applies it in train mode: kept units are doubled.
    fn dropout(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval {
            return Ok(x.clone());
        }
        if let Some(masks) = lock(&self.dropout_masks).as_mut() {
            let keep = masks.pop_front().ok_or_else(|| {
                candle_core::Error::Msg("no dropout mask left of those set".into())
            })?;
            if keep.dims() != x.dims() {
                return Err(candle_core::Error::Msg(format!(
                    "a dropout mask of shape {:?} for an input of shape {:?}",
                    keep.dims(),
                    x.dims()
                ))
                .into());
            }
            let keep = keep.to_device(x.device())?.to_dtype(x.dtype())?;
            return Ok((x * (keep * 2.0)?)?);
        }
        let mask: Vec<f32> = {
            let mut rng = lock(&self.dropout_rng);
            (0..x.elem_count())
                .map(|_| if rng.random::<bool>() { 2.0 } else { 0.0 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

impl Backbone for Vgg16 {
    fn name(&self) -> &'static str {
        "vgg16"
    }

    fn tap_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..self.features.len())
            .map(|i| format!("features.{i}"))
            .collect();
        names.extend(["avgpool", "flatten"].map(String::from));
        names.extend((0..self.classifier.len()).map(|i| format!("classifier.{i}")));
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
        *lock(&self.dropout_rng) = StdRng::seed_from_u64(seed);
    }

    fn forward(&self, images: &Tensor, request: &TapRequest, mode: Mode) -> Result<ForwardOutput> {
        let mut taps = request.collector();
        let mut x = normalize_imagenet(images)?;
        let feature_tapped = (0..self.features.len()).any(|i| taps.wants(&format!("features.{i}")));
        let chained = match x.track_op() && !feature_tapped {
            true => self.features_chained(&x)?,
            false => None,
        };
        match chained {
            Some(y) => x = y,
            None => {
                let mut layers = self.features.iter().enumerate().peekable();
                while let Some((i, layer)) = layers.next() {
                    let name = format!("features.{i}");
                    x = match (layer, layers.peek()) {
                        // A convolution and its ReLU run as one op unless the convolution's
                        // own output is a tap.
                        (Layer::Conv(conv), Some((_, Layer::Relu))) if !taps.wants(&name) => {
                            let (i, _) = layers.next().expect("peeked");
                            taps.pass(&format!("features.{i}"), conv.forward_relu(&x)?)?
                        }
                        _ => taps.pass(&name, self.apply(layer, &x, mode)?)?,
                    };
                    if taps.done() {
                        return taps.finish(None);
                    }
                }
            }
        }
        x = taps.pass("avgpool", tame_ops::adaptive_avg_pool2d(&x, 7, 7)?)?;
        x = taps.pass("flatten", x.flatten_from(1)?)?;
        let last = self.classifier.len() - 1;
        for (i, layer) in self.classifier.iter().enumerate() {
            if taps.done() {
                return taps.finish(None);
            }
            x = self.apply(layer, &x, mode)?;
            let name = format!("classifier.{i}");
            if i == last {
                // The logits: a leaf here would cut every other tap off their gradient.
                taps.offer(&name, &x);
            } else {
                x = taps.pass(&name, x)?;
            }
        }
        taps.finish(Some(x))
    }
}
