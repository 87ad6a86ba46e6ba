//! Mixed precision ([`Precision`]): a backbone loaded in bf16 (or f16) takes f32 images and
//! hands out f32 taps and logits close to the f32 network's on the same weights and images,
//! and gradients cross the casts both ways.
//!
//! Tolerances, as max |low - f32| / max |f32| over each tensor, measured on the CPU:
//! - taps (the TAME defaults) and logits of two 224x224 images on synthetic weights, VGG-16
//!   in eval and train mode (dropout, the same masks), ResNet-50 in eval mode: bf16 <= 3e-2,
//!   measured at most 1.25e-2 (VGG-16's `features.30`); f16 <= 6e-3, measured at most
//!   1.8e-3.
//! - ResNet-50 in train mode is not compared: the batch statistics of two images amplify
//!   rounding (f32 and f64 already differ by 1e-4 at `layer4`), and bf16's rounding, 2^15
//!   times coarser than f32's, saturates it (measured 0.71 at `layer4`; f16 0.15).
//! - the gradient of a logit with respect to the image: cosine with f32's >= 0.8, measured
//!   0.915 (VGG-16) and 0.929 (ResNet-50) in bf16.
//! - the gradient at ResNet-50's `layer4` asked for with `with_tap_gradients` (what Grad-CAM
//!   reads): bf16 <= 3e-2, measured 5.3e-3.
//! - EfficientNet-Lite0 with its ImageNet weights (when they are in the cache), the
//!   committed photos: logits bf16 <= 0.1, measured at most 3.2e-2, f16 <= 1e-2, measured
//!   3.2e-3; no class probability moves by more than 0.05 (bf16, measured 2.4e-2) or 5e-3
//!   (f16, 1.3e-3); the top-1 class is f32's, or one that f32 nearly ties with it
//!   (astronaut.jpg in bf16 on the portable path). Its taps are further off (bf16: up to
//!   0.16 on these photos, and 0.51 at `head` on synthetic weights): not compared.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use tame_backbones::synthetic::synthetic_uniform;
use tame_backbones::weights::{load_backbone_in, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode, Precision};

const CLASS: usize = 7;

fn image(batch: usize) -> Tensor {
    let v: Vec<f32> = synthetic_uniform("precision", batch * 3 * 224 * 224)
        .into_iter()
        .map(|u| u as f32)
        .collect();
    Tensor::from_vec(v, (batch, 3, 224, 224), &Device::Cpu).unwrap()
}

fn load(kind: BackboneKind, precision: Precision) -> Box<dyn Backbone> {
    load_backbone_in(kind, &WeightsSpec::Synthetic, &Device::Cpu, precision).unwrap()
}

fn scalar(t: Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

/// max |got - want| / max |want|.
fn relative(got: &Tensor, want: &Tensor) -> f32 {
    let diff = scalar((got - want).unwrap().abs().unwrap().max_all().unwrap());
    let scale = scalar(want.abs().unwrap().max_all().unwrap());
    assert!(scale > 0.0, "the f32 reference is all zero");
    diff / scale
}

fn cosine(a: &Tensor, b: &Tensor) -> f32 {
    let dot = scalar((a * b).unwrap().sum_all().unwrap());
    let norm = |t: &Tensor| scalar(t.sqr().unwrap().sum_all().unwrap()).sqrt();
    dot / (norm(a) * norm(b))
}

/// The gradient of the logit of `CLASS` (summed over the batch) with respect to `wrt`.
fn logit_gradient(logits: &Tensor, wrt: &Tensor) -> Tensor {
    let grads = logits
        .i((.., CLASS))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = grads.get(wrt).expect("a gradient reaches it").clone();
    assert_eq!(g.dtype(), DType::F32, "the gradient's dtype");
    g
}

#[test]
fn taps_and_logits_come_out_in_f32_close_to_the_f32_networks() {
    let x = image(2);
    for kind in [BackboneKind::Vgg16, BackboneKind::ResNet50] {
        // ResNet-50's train mode is left out (see the module documentation).
        let modes: &[Mode] = match kind {
            BackboneKind::Vgg16 => &[Mode::Eval, Mode::Train],
            _ => &[Mode::Eval],
        };
        let full = load(kind, Precision::F32);
        let request = full.tap_request(&full.default_taps(), true).unwrap();
        for (precision, tolerance) in [(Precision::Bf16, 3e-2), (Precision::F16, 6e-3)] {
            let low = load(kind, precision);
            for &mode in modes {
                full.reseed(3);
                low.reseed(3);
                let want = full.forward(&x, &request, mode).unwrap();
                let got = low.forward(&x, &request, mode).unwrap();
                let (got_logits, want_logits) = (got.logits.unwrap(), want.logits.unwrap());
                let names = request.names().iter().map(String::as_str).chain(["logits"]);
                let pairs = got.taps.iter().zip(&want.taps);
                for (name, (g, w)) in names.zip(pairs.chain([(&got_logits, &want_logits)])) {
                    let what = format!("{} {mode:?} {precision} {name}", kind.name());
                    assert_eq!(g.dtype(), DType::F32, "{what}: dtype");
                    let error = relative(g, w);
                    println!("{what}: {error:.2e}");
                    assert!(error <= tolerance, "{what}: {error:e} > {tolerance:e}");
                }
            }
        }
    }
}

#[test]
fn a_logits_gradient_reaches_the_f32_image_through_bf16() {
    for kind in [BackboneKind::Vgg16, BackboneKind::ResNet50] {
        let gradients: Vec<Tensor> = [Precision::F32, Precision::Bf16]
            .into_iter()
            .map(|precision| {
                let net = load(kind, precision);
                let x = Var::from_tensor(&image(1)).unwrap();
                let request = net.tap_request(&[], true).unwrap();
                let out = net.forward(x.as_tensor(), &request, Mode::Eval).unwrap();
                logit_gradient(&out.logits.unwrap(), x.as_tensor())
            })
            .collect();
        let agreement = cosine(&gradients[1], &gradients[0]);
        println!("{}: cosine {agreement}", kind.name());
        assert!(agreement >= 0.8, "{}: cosine {agreement}", kind.name());
    }
}

#[test]
fn a_tap_asked_with_its_gradient_gets_it_in_f32() {
    let kind = BackboneKind::ResNet50;
    let gradients: Vec<Tensor> = [Precision::F32, Precision::Bf16]
        .into_iter()
        .map(|precision| {
            let net = load(kind, precision);
            let taps = [net.cam_tap().to_string()];
            let request = net.tap_request(&taps, true).unwrap().with_tap_gradients();
            let out = net.forward(&image(1), &request, Mode::Eval).unwrap();
            assert_eq!(out.taps[0].dtype(), DType::F32);
            logit_gradient(&out.logits.unwrap(), &out.taps[0])
        })
        .collect();
    let error = relative(&gradients[1], &gradients[0]);
    println!("layer4 gradient: {error:.2e}");
    assert!(error <= 3e-2, "{error:e}");
}

/// The real ImageNet weights: `cargo xtask fetch-weights lite0` puts them in the cache.
fn real_lite0() -> Option<std::path::PathBuf> {
    tame_testdata::external_file(
        tame_backbones::weights::cache_file(BackboneKind::EfficientNetLite0),
        "the EfficientNet-Lite0 ImageNet weights",
        "run `cargo xtask fetch-weights lite0`",
    )
}

#[test]
fn real_lite0_weights_in_bf16_and_f16_classify_the_photos_as_in_f32() {
    let Some(weights) = real_lite0() else {
        return;
    };
    let spec = WeightsSpec::File(weights);
    let kind = BackboneKind::EfficientNetLite0;
    let nets: Vec<Box<dyn Backbone>> = [Precision::F32, Precision::Bf16, Precision::F16]
        .into_iter()
        .map(|p| load_backbone_in(kind, &spec, &Device::Cpu, p).unwrap())
        .collect();
    let request = nets[0].tap_request(&[], true).unwrap();
    for name in [
        "astronaut.jpg",
        "chelsea_small.jpg",
        "coffee.jpg",
        "rocket.jpg",
    ] {
        let rgb = tame_data::load_rgb(tame_testdata::photo(name)).unwrap();
        let (crop, _) = tame_data::Preprocessing::IMAGENET.apply(&rgb);
        let mut chw = vec![0f32; 3 * 224 * 224];
        tame_data::to_chw_f32(&crop, &mut chw);
        let x = Tensor::from_vec(chw, (1, 3, 224, 224), &Device::Cpu).unwrap();
        let logits: Vec<Tensor> = nets
            .iter()
            .map(|n| n.forward(&x, &request, Mode::Eval).unwrap().logits.unwrap())
            .collect();
        let top1 = |l: &Tensor| l.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        let probabilities = |l: &Tensor| candle_nn::ops::softmax(l, 1).unwrap();
        for (i, (limit, plimit)) in [(0.1, 0.05), (1e-2, 5e-3)].into_iter().enumerate() {
            let (got, want) = (&logits[i + 1], &logits[0]);
            let what = format!("{name} {}", [Precision::Bf16, Precision::F16][i]);
            let error = relative(got, want);
            let moved = (probabilities(got) - probabilities(want)).unwrap();
            let moved = scalar(moved.abs().unwrap().max_all().unwrap());
            println!("{what}: logits {error:.2e}, probabilities moved {moved:.2e}");
            assert!(
                error <= limit && moved <= plimit,
                "{what}: {error:e}, {moved:e}"
            );
            // The top class may only change between two classes that f32 itself nearly
            // ties (the portable path's f32 differs from the native one's in the last bits).
            let (ours, theirs) = (top1(got), top1(want));
            if ours != theirs {
                let p = probabilities(want)
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let gap = p[theirs as usize] - p[ours as usize];
                assert!(
                    gap <= 2.0 * moved,
                    "{what}: top-1 {ours}, f32's {theirs}, gap {gap:e}"
                );
            }
        }
    }
}
