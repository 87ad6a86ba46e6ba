//! Taps requested `with_tap_gradients` receive d(logit)/d(tap), and requesting them changes no
//! value of the forward pass.
//!
//! The gradient is checked against an independent computation: when every path from the input
//! to the logits runs through the tap, the chain rule gives
//! d(logit)/d(input) = J^T d(logit)/d(tap), with J = d(tap)/d(input). Both sides are
//! back-propagated to the input (made a `Var`) on a pass without tap gradients.

use candle_core::{Device, IndexOp, Tensor, Var};
use tame_backbones::synthetic::{synthetic_uniform, synthetic_values};
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode};

const CLASS: usize = 7;

fn image(size: usize) -> Tensor {
    let v: Vec<f32> = synthetic_uniform("tap-gradients", 3 * size * size)
        .into_iter()
        .map(|u| u as f32)
        .collect();
    Tensor::from_vec(v, (1, 3, size, size), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The logit of `CLASS`, summed over the batch: the score Grad-CAM differentiates.
fn objective(logits: &Tensor) -> Tensor {
    logits.i((.., CLASS)).unwrap().sum_all().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the reference is all zero");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= rel * scale,
        "{what}: max |difference| {worst} exceeds {rel} x max |reference| {scale}"
    );
}

/// Returns d(objective)/d(tap) after checking it as described in the module documentation.
fn check_tap_gradient(net: &dyn Backbone, tap: &str, input: &Tensor) -> Tensor {
    let name = format!("{} {tap}", net.name());
    let request = net.tap_request(&[tap.to_string()], true).unwrap();

    let plain = net.forward(input, &request, Mode::Eval).unwrap();
    let out = net
        .forward(input, &request.clone().with_tap_gradients(), Mode::Eval)
        .unwrap();
    assert_eq!(values(&out.taps[0]), values(&plain.taps[0]), "{name}: tap");
    let logits = out.logits.unwrap();
    assert_eq!(values(&logits), values(&plain.logits.unwrap()), "{name}");

    let grads = objective(&logits).backward().unwrap();
    let tap_grad = grads
        .get(&out.taps[0])
        .unwrap_or_else(|| panic!("{name}: the tap receives no gradient"))
        .clone();
    assert_eq!(tap_grad.dims(), out.taps[0].dims(), "{name}");
    let g = values(&tap_grad);
    assert!(
        g.iter().all(|v| v.is_finite()),
        "{name}: non-finite gradient"
    );
    assert!(g.iter().any(|&v| v != 0.0), "{name}: the gradient is zero");

    let var = Var::from_tensor(input).unwrap();
    let out = net.forward(var.as_tensor(), &request, Mode::Eval).unwrap();
    let through_net = objective(&out.logits.unwrap()).backward().unwrap();
    let through_tap = (&out.taps[0] * &tap_grad)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close(
        &format!("{name}: J^T d(logit)/d(tap) against d(logit)/d(input)"),
        &values(through_tap.get(var.as_tensor()).unwrap()),
        &values(through_net.get(var.as_tensor()).unwrap()),
        1e-3,
    );
    tap_grad
}

fn load(kind: BackboneKind) -> Box<dyn Backbone> {
    load_backbone(kind, &WeightsSpec::Synthetic, &Device::Cpu).unwrap()
}

#[test]
fn vgg16_tap_gradients() {
    let net = load(BackboneKind::Vgg16);
    check_tap_gradient(net.as_ref(), "features.23", &image(64));
}

#[test]
fn resnet50_tap_gradients() {
    let net = load(BackboneKind::ResNet50);
    let input = image(64);
    check_tap_gradient(net.as_ref(), "layer3", &input);

    // layer4 is followed by global average pooling and fc only:
    // d(logit_c)/d(layer4[b, k, i, j]) = fc.weight[c, k] / (h w).
    let grad = check_tap_gradient(net.as_ref(), "layer4", &input);
    let (_, channels, h, w) = grad.dims4().unwrap();
    let fc = synthetic_values("fc.weight", &[1000, channels]);
    let want: Vec<f32> = fc[CLASS * channels..(CLASS + 1) * channels]
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v / (h * w) as f32, h * w))
        .collect();
    assert_close(
        "resnet50 layer4: fc.weight / hw",
        &values(&grad),
        &want,
        1e-5,
    );
}

#[test]
fn efficientnet_lite0_tap_gradients() {
    let net = load(BackboneKind::EfficientNetLite0);
    // A residual block: its input reaches the sum without passing the block's own taps.
    check_tap_gradient(net.as_ref(), "blocks.10", &image(64));
}
