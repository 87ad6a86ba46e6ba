//! Score-CAM (Wang et al., CVPR workshops 2020), as pytorch-grad-cam's `ScoreCAM`.

use candle_core::{IndexOp, Tensor};
use tame_backbones::{Backbone, Mode};
use tame_metrics::{Explainer, MetricsError, Result};

use crate::base::{
    check_batch, check_classes, logits, mask_in_normalised_space, resolve_tap, select_classes,
    weighted_sum_relu,
};

/// Settings of [`ScoreCam`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreCamConfig {
    /// The tap to explain; `None`: the backbone's [`cam_tap`](tame_backbones::Backbone::cam_tap).
    pub tap: Option<String>,
    /// Masked images per forward pass (pytorch-grad-cam's default: 16).
    pub batch_size: usize,
}

impl Default for ScoreCamConfig {
    fn default() -> Self {
        Self {
            tap: None,
            batch_size: 16,
        }
    }
}

/// Each channel k of the tap, upsampled to the input (bilinear, corners aligned, as
/// `torch.nn.UpsamplingBilinear2d`) and min-max normalised, masks the input; the class's raw
/// logit of each masked input, softmax-ed over the channels, weighs the channel:
/// map = ReLU(sum_k w_k A_k) at the tap's resolution. One forward pass per channel and image.
pub struct ScoreCam<'a> {
    backbone: &'a dyn Backbone,
    tap: String,
    batch_size: usize,
    mean: [f32; 3],
}

/// pytorch-grad-cam's guard against a constant channel (0 / 0).
const EPS: f64 = 1e-8;

impl<'a> ScoreCam<'a> {
    /// Fails if the tap is unknown, the batch size is 0, or the backbone's input
    /// normalisation is not known.
    pub fn new(backbone: &'a dyn Backbone, config: ScoreCamConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(MetricsError::BadInput(
                "the Score-CAM batch size must be at least 1".into(),
            ));
        }
        Ok(Self {
            tap: resolve_tap(backbone, config.tap.as_deref())?,
            batch_size: config.batch_size,
            mean: backbone.input_mean(),
            backbone,
        })
    }

    /// The tap explained.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// The class scores (K,) of one image (3, H, W) masked by each of its K activation maps
    /// (K, h, w).
    fn channel_scores(&self, image: &Tensor, activations: &Tensor, class: u32) -> Result<Tensor> {
        let (channels, h, w) = activations.dims3()?;
        let (_, height, width) = image.dims3()?;
        let mut scores = Vec::with_capacity(channels.div_ceil(self.batch_size));
        for start in (0..channels).step_by(self.batch_size) {
            let n = self.batch_size.min(channels - start);
            let chunk = activations.narrow(0, start, n)?.reshape((1, n, h, w))?;
            let up = chunk
                .upsample_bilinear2d(height, width, true)?
                .reshape((n, height * width))?;
            let min = up.min_keepdim(1)?;
            let range = up.max_keepdim(1)?.broadcast_sub(&min)?.affine(1.0, EPS)?;
            let masks = up
                .broadcast_sub(&min)?
                .broadcast_div(&range)?
                .reshape((n, 1, height, width))?;
            let masked = mask_in_normalised_space(image, &masks, self.mean)?;
            let logits = logits(self.backbone, &masked)?;
            scores.push(select_classes(&logits, &vec![class; n])?);
        }
        Ok(Tensor::cat(&scores, 0)?)
    }
}

impl Explainer for ScoreCam<'_> {
    fn taps(&self) -> &[String] {
        &[]
    }

    /// Maps at the tap's resolution.
    fn explain(&self, images: &Tensor, _taps: &[Tensor], classes: &[u32]) -> Result<Tensor> {
        let b = check_batch(images, classes)?;
        let request = self
            .backbone
            .tap_request(std::slice::from_ref(&self.tap), true)?;
        let out = self.backbone.forward(images, &request, Mode::Eval)?;
        if let Some(logits) = &out.logits {
            check_classes(logits, classes)?;
        }
        let activations = &out.taps[0];
        let weights = (0..b)
            .map(|i| {
                let scores = self.channel_scores(&images.i(i)?, &activations.i(i)?, classes[i])?;
                Ok(candle_nn::ops::softmax(&scores, 0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        weighted_sum_relu(activations, &Tensor::stack(&weights, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use tame_backbones::synthetic::{synthetic_uniform, SyntheticWeights};
    use tame_backbones::BackboneKind;

    use super::*;

    /// The raw class score of every masked input equals pytorch-grad-cam's (the maps are
    /// compared in tests/resnet_parity.rs).
    #[test]
    fn channel_scores_match_pytorch_grad_cam() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cams.npz");
        let fx: std::collections::HashMap<String, Tensor> =
            Tensor::read_npz(path).unwrap().into_iter().collect();
        let expected = fx["scorecam.layer1.0.conv1/scores"]
            .to_vec2::<f64>()
            .unwrap();
        let classes = fx["scorecam.layer1.0.conv1/classes"]
            .to_vec1::<i64>()
            .unwrap();
        // Float64, as the fixtures were made.
        let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F64, Device::Cpu);
        let backbone = BackboneKind::ResNet50.build(vb).unwrap();
        let values: Vec<f32> = synthetic_uniform("input.cams.score", 2 * 3 * 32 * 32)
            .into_iter()
            .map(|u| u as f32)
            .collect();
        let images = Tensor::from_vec(values, (2, 3, 32, 32), &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F64))
            .unwrap();
        let config = ScoreCamConfig {
            tap: Some("layer1.0.conv1".into()),
            batch_size: 16,
        };
        let cam = ScoreCam::new(backbone.as_ref(), config).unwrap();
        let request = backbone
            .tap_request(std::slice::from_ref(&cam.tap), false)
            .unwrap();
        let activations = backbone
            .forward(&images, &request, Mode::Eval)
            .unwrap()
            .taps[0]
            .clone();
        for (b, expected) in expected.iter().enumerate() {
            let scores = cam
                .channel_scores(
                    &images.i(b).unwrap(),
                    &activations.i(b).unwrap(),
                    classes[b] as u32,
                )
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs()));
            let diff = scores
                .iter()
                .zip(expected)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            println!("image {b}: max score difference {diff} (scale {scale})");
            assert!(
                diff <= 1e-4 * scale,
                "image {b}: {diff} exceeds 1e-4 x {scale}"
            );
        }
    }
}
