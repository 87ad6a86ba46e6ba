//! Taps, logits and input gradients equal torchvision's on the same (synthetic) weights and
//! inputs. Expected values: `python xtask/fixtures/make_backbone_fixtures.py`.
//!
//! Tolerance: max |ours - torch| <= 1e-4 * max |torch| over each compared tensor (f32).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use tame_backbones::synthetic::synthetic_uniform;
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode};

const TOLERANCE: f32 = 1e-4;
/// In train mode the batch-statistics batch norms of a batch of 2 amplify float32 rounding:
/// `layer4` computed in f32 is ~1e-4 (relative to its max) away from the same network in f64,
/// whichever convolution runs it (candle's: 1.02e-4, tame-ops': 0.94e-4, measured), so two
/// f32 implementations may differ by twice that.
const TRAIN_TOLERANCE: f32 = 3e-4;

fn fixtures() -> HashMap<String, Tensor> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/backbones.npz");
    Tensor::read_npz(path).unwrap().into_iter().collect()
}

fn image(name: &str, batch: usize, size: usize) -> Tensor {
    let values: Vec<f32> = synthetic_uniform(name, batch * 3 * size * size)
        .into_iter()
        .map(|u| u as f32)
        .collect();
    Tensor::from_vec(values, (batch, 3, size, size), &Device::Cpu).unwrap()
}

/// Every `step`-th element, step = max(1, numel / 1000), as the fixture script samples.
fn sample(t: &Tensor) -> Vec<f32> {
    let flat = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let step = (flat.len() / 1000).max(1);
    flat.into_iter().step_by(step).collect()
}

fn assert_close(what: &str, ours: &[f32], expected: &Tensor) {
    assert_close_within(TOLERANCE, what, ours, expected);
}

fn assert_close_within(tolerance: f32, what: &str, ours: &[f32], expected: &Tensor) {
    let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= tolerance * scale,
        "{what}: max abs difference {worst} exceeds {tolerance} x {scale}"
    );
}

fn check_forward(
    backbone: &dyn Backbone,
    fx: &HashMap<String, Tensor>,
    prefix: &str,
    input: &Tensor,
    mode: Mode,
) {
    let taps: Vec<String> = fx
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{prefix}/")))
        .filter_map(|k| k.strip_suffix("/shape"))
        .map(String::from)
        .collect();
    assert!(!taps.is_empty(), "no fixtures for {prefix}");
    let logits_key = format!("{prefix}/logits");
    let want_logits = fx.contains_key(&logits_key);
    let request = backbone.tap_request(&taps, want_logits).unwrap();
    let out = backbone.forward(input, &request, mode).unwrap();
    for (name, tap) in taps.iter().zip(&out.taps) {
        let shape = fx[&format!("{prefix}/{name}/shape")]
            .to_vec1::<i64>()
            .unwrap();
        let shape: Vec<usize> = shape.into_iter().map(|d| d as usize).collect();
        assert_eq!(tap.dims(), shape.as_slice(), "{prefix}/{name}: shape");
        let tolerance = match mode {
            Mode::Train => TRAIN_TOLERANCE,
            Mode::Eval => TOLERANCE,
        };
        assert_close_within(
            tolerance,
            &format!("{prefix}/{name}"),
            &sample(tap),
            &fx[&format!("{prefix}/{name}")],
        );
    }
    if want_logits {
        let logits = out.logits.expect("logits were requested");
        let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&logits_key, &logits, &fx[&logits_key]);
    }
}

fn check_input_gradient(
    backbone: &dyn Backbone,
    fx: &HashMap<String, Tensor>,
    prefix: &str,
    input: &Tensor,
) {
    let var = Var::from_tensor(input).unwrap();
    let request = backbone.tap_request(&[], true).unwrap();
    let logits = backbone
        .forward(var.as_tensor(), &request, Mode::Eval)
        .unwrap()
        .logits
        .unwrap();
    let objective = (logits.narrow(1, 5, 1).unwrap()
        + (logits.narrow(1, 7, 1).unwrap() * 0.5).unwrap())
    .unwrap()
    .sum_all()
    .unwrap();
    let grads = objective.backward().unwrap();
    let grad = grads
        .get(var.as_tensor())
        .expect("the input receives a gradient");
    assert_close(
        &format!("{prefix}/input_grad"),
        &sample(grad),
        &fx[&format!("{prefix}/input_grad")],
    );
}

#[test]
fn vgg16_matches_torchvision() {
    let fx = fixtures();
    let vgg = load_backbone(BackboneKind::Vgg16, &WeightsSpec::Synthetic, &Device::Cpu).unwrap();
    let input = image("input.vgg16", 1, 224);
    check_forward(vgg.as_ref(), &fx, "vgg16.eval", &input, Mode::Eval);
    // Train mode changes only the classifier (dropout): the feature taps are unchanged.
    check_forward(vgg.as_ref(), &fx, "vgg16.train", &input, Mode::Train);
    check_input_gradient(
        vgg.as_ref(),
        &fx,
        "vgg16.grad32",
        &image("input.vgg16.grad", 1, 32),
    );
}

#[test]
fn resnet50_matches_torchvision_in_eval_mode_and_gradients() {
    let fx = fixtures();
    let resnet = load_backbone(
        BackboneKind::ResNet50,
        &WeightsSpec::Synthetic,
        &Device::Cpu,
    )
    .unwrap();
    check_forward(
        resnet.as_ref(),
        &fx,
        "resnet50.eval",
        &image("input.resnet50", 1, 224),
        Mode::Eval,
    );
    check_input_gradient(
        resnet.as_ref(),
        &fx,
        "resnet50.grad64",
        &image("input.resnet50.grad", 1, 64),
    );
}

#[test]
fn resnet50_matches_torchvision_in_train_mode() {
    let fx = fixtures();
    let resnet = tame_backbones::ResNet50::new(candle_nn::VarBuilder::from_backend(
        Box::new(tame_backbones::synthetic::SyntheticWeights),
        candle_core::DType::F32,
        Device::Cpu,
    ))
    .unwrap();
    check_forward(
        &resnet,
        &fx,
        "resnet50.train",
        &image("input.resnet50.train", 2, 224),
        Mode::Train,
    );
    // The running statistics were updated in memory as PyTorch updates them.
    for bn in ["bn1", "layer4.2.bn3"] {
        let (mean, var) = resnet.running_stats(bn).unwrap();
        assert_close(
            &format!("{bn}.running_mean"),
            &mean.to_vec1::<f32>().unwrap(),
            &fx[&format!("resnet50.train/{bn}.running_mean")],
        );
        assert_close(
            &format!("{bn}.running_var"),
            &var.to_vec1::<f32>().unwrap(),
            &fx[&format!("resnet50.train/{bn}.running_var")],
        );
    }
}
