//! EfficientNet-Lite0 equals the `efficientnet-lite-pytorch` implementation: taps, logits,
//! input gradients and train-mode batch statistics on synthetic weights (always), and the logits
//! and top-1 classes of real photos with the ImageNet weights (when they and the photos are on
//! this machine). Expected values: `python xtask/fixtures/make_lite0_fixtures.py`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use tame_backbones::synthetic::{synthetic_uniform, SyntheticWeights};
use tame_backbones::weights::{cache_file, load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, EfficientNetLite0, Mode};

/// max |ours - torch| <= 1e-4 * max |torch| for synthetic weights (f32).
const TOLERANCE: f32 = 1e-4;
/// max |ours - torch| over the 1000 logits of a real photo.
const PHOTO_LOGIT_TOLERANCE: f32 = 1e-3;

fn fixtures(name: &str) -> HashMap<String, Tensor> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
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

fn max_abs_diff(ours: &[f32], expected: &Tensor) -> (f32, f32) {
    let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(ours.len(), expected.len(), "length");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    (worst, scale)
}

fn assert_close(what: &str, ours: &[f32], expected: &Tensor) {
    let (worst, scale) = max_abs_diff(ours, expected);
    assert!(
        worst <= TOLERANCE * scale,
        "{what}: max abs difference {worst} exceeds {TOLERANCE} x {scale}"
    );
}

fn synthetic_lite0() -> EfficientNetLite0 {
    EfficientNetLite0::new(VarBuilder::from_backend(
        Box::new(SyntheticWeights),
        DType::F32,
        Device::Cpu,
    ))
    .unwrap()
}

/// Compares every tap the fixtures hold under `prefix` (and the logits, if they are there).
fn check_forward(
    net: &dyn Backbone,
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
    let logits_key = format!("{prefix}/logits");
    let want_logits = fx.contains_key(&logits_key);
    assert!(!taps.is_empty() || want_logits, "no fixtures for {prefix}");
    let request = net.tap_request(&taps, want_logits).unwrap();
    let out = net.forward(input, &request, mode).unwrap();
    for (name, tap) in taps.iter().zip(&out.taps) {
        let shape: Vec<usize> = fx[&format!("{prefix}/{name}/shape")]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|d| d as usize)
            .collect();
        assert_eq!(tap.dims(), shape.as_slice(), "{prefix}/{name}: shape");
        assert_close(
            &format!("{prefix}/{name}"),
            &sample(tap),
            &fx[&format!("{prefix}/{name}")],
        );
    }
    if want_logits {
        let logits = out.logits.expect("logits were requested");
        assert_close(
            &logits_key,
            &logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            &fx[&logits_key],
        );
    }
}

#[test]
fn synthetic_weights_match_pytorch_in_eval_mode() {
    let fx = fixtures("lite0_synthetic.npz");
    let net = load_backbone(
        BackboneKind::EfficientNetLite0,
        &WeightsSpec::Synthetic,
        &Device::Cpu,
    )
    .unwrap();
    check_forward(
        net.as_ref(),
        &fx,
        "lite0.eval",
        &image("input.lite0", 1, 224),
        Mode::Eval,
    );
    // An odd size: "SAME" padding is then symmetric at stride 2 as well.
    check_forward(
        net.as_ref(),
        &fx,
        "lite0.odd97",
        &image("input.lite0.odd", 1, 97),
        Mode::Eval,
    );
}

#[test]
fn input_gradient_matches_pytorch() {
    let fx = fixtures("lite0_synthetic.npz");
    let net = synthetic_lite0();
    let var = Var::from_tensor(&image("input.lite0.grad", 1, 64)).unwrap();
    let request = net.tap_request(&[], true).unwrap();
    let logits = net
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
        "lite0.grad64/input_grad",
        &sample(grad),
        &fx["lite0.grad64/input_grad"],
    );
}

#[test]
fn train_mode_uses_batch_statistics_like_pytorch() {
    let fx = fixtures("lite0_synthetic.npz");
    let net = synthetic_lite0();
    check_forward(
        &net,
        &fx,
        "lite0.train",
        &image("input.lite0.train", 2, 224),
        Mode::Train,
    );
    for bn in ["_bn0", "_blocks.1._bn1", "_blocks.2._bn2"] {
        let (mean, var) = net.running_stats(bn).unwrap();
        assert_close(
            &format!("{bn}.running_mean"),
            &mean.to_vec1::<f32>().unwrap(),
            &fx[&format!("lite0.train/{bn}.running_mean")],
        );
        assert_close(
            &format!("{bn}.running_var"),
            &var.to_vec1::<f32>().unwrap(),
            &fx[&format!("lite0.train/{bn}.running_var")],
        );
    }
}

#[test]
fn taps_and_default_taps_have_the_documented_shapes() {
    let net = synthetic_lite0();
    let shapes: HashMap<String, Vec<usize>> = net
        .tap_shapes(224, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(shapes["stem"], [1, 32, 112, 112]);
    assert_eq!(shapes["blocks.0"], [1, 16, 112, 112]);
    assert_eq!(shapes["blocks.15"], [1, 320, 7, 7]);
    assert_eq!(shapes["fc"], [1, 1000]);
    assert!(!shapes.contains_key("blocks.0.expand"));
    let defaults: Vec<Vec<usize>> = net
        .default_taps()
        .iter()
        .map(|t| shapes[t].clone())
        .collect();
    assert_eq!(
        defaults,
        [
            vec![1, 40, 28, 28],
            vec![1, 112, 14, 14],
            vec![1, 1280, 7, 7]
        ]
    );
    // The (C, H, W) of chosen taps, in the order asked, at another input size.
    let chosen = ["blocks.15".to_string(), "stem".to_string()];
    assert_eq!(
        net.tap_dims(&chosen, 160, &Device::Cpu).unwrap(),
        [[320, 5, 5], [32, 80, 80]]
    );
    // Unknown taps are refused with the valid names.
    let err = net.tap_request(&["blocks.16".into()], false).unwrap_err();
    assert!(err.to_string().contains("blocks.15.project"), "{err}");
    let err = net
        .tap_dims(&["blocks.16".into()], 224, &Device::Cpu)
        .unwrap_err();
    assert!(err.to_string().contains("blocks.15.project"), "{err}");
}

/// The real ImageNet weights: `cargo xtask fetch-weights lite0` puts them in the cache.
fn real_weights() -> Option<PathBuf> {
    tame_testdata::external_file(
        cache_file(BackboneKind::EfficientNetLite0),
        "the EfficientNet-Lite0 ImageNet weights",
        "run `cargo xtask fetch-weights lite0`",
    )
}

/// The photos as the wheels ship them (the fixtures were made from these exact files).
fn photos_dir() -> Option<PathBuf> {
    tame_testdata::external_dir(
        "TAME_PHOTOS_DIR",
        "the original sample photos of the scikit-image 0.26.0 and matplotlib 3.11.2 wheels",
        "coffee.png, chelsea.png, astronaut.png, rocket.jpg from skimage/data/, \
         grace_hopper.jpg from matplotlib/mpl-data/sample_data/; .ci/run extracts them",
    )
}

fn to_input(rgb: &tame_data::RgbImage) -> Tensor {
    let (w, h) = rgb.dimensions();
    let mut chw = vec![0f32; 3 * (w * h) as usize];
    tame_data::to_chw_f32(rgb, &mut chw);
    Tensor::from_vec(chw, (1, 3, h as usize, w as usize), &Device::Cpu).unwrap()
}

fn argmax(logits: &[f32]) -> usize {
    (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap_or(0)
}

#[test]
fn real_photos_give_pytorchs_logits_and_classes() {
    let (Some(weights), Some(photos)) = (real_weights(), photos_dir()) else {
        return;
    };
    let fx = fixtures("lite0_photos.npz");
    let net = load_backbone(
        BackboneKind::EfficientNetLite0,
        &WeightsSpec::File(weights),
        &Device::Cpu,
    )
    .unwrap();
    let request = net.tap_request(&[], true).unwrap();
    let logits_of = |input: &Tensor| -> Vec<f32> {
        net.forward(input, &request, Mode::Eval)
            .unwrap()
            .logits
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut names: Vec<&str> = fx
        .keys()
        .filter_map(|k| k.strip_suffix("/crop224_logits"))
        .collect();
    names.sort_unstable();
    assert!(!names.is_empty());
    for name in names {
        let path = photos.join(name);
        let rgb = tame_data::load_rgb(&path).unwrap_or_else(|e| panic!("{e}"));
        // The central 224x224 crop, no resampling: PyTorch saw the same pixels (PNG decoding is
        // exact; JPEG decoders may differ by a level, hence the PNG-only logit comparison).
        let (w, h) = rgb.dimensions();
        let crop = tame_data::crop(
            &rgb,
            i64::from((w - 224) / 2),
            i64::from((h - 224) / 2),
            224,
            224,
        );
        let ours = logits_of(&to_input(&crop));
        let expected = &fx[&format!("{name}/crop224_logits")];
        let (worst, _) = max_abs_diff(&ours, expected);
        let expected_top1 = argmax(&expected.flatten_all().unwrap().to_vec1().unwrap());
        println!(
            "{name}: central crop top-1 {} (PyTorch {expected_top1}), max logit difference {worst:.2e}",
            argmax(&ours)
        );
        if name.ends_with(".png") {
            assert!(
                worst <= PHOTO_LOGIT_TOLERANCE,
                "{name}: logits differ from PyTorch's by {worst}"
            );
        }
        assert_eq!(argmax(&ours), expected_top1, "{name}: central-crop top-1");

        // The preprocessing (Resize(256) + CenterCrop(224): none of these photos is 224x224).
        let (input, _) = tame_data::Preprocessing::IMAGENET.apply(&rgb);
        let top1 = argmax(&logits_of(&to_input(&input)));
        let expected = fx[&format!("{name}/eval_top1")].to_vec1::<i64>().unwrap()[0];
        println!("{name}: eval-transform top-1 {top1} (PyTorch {expected})");
        assert_eq!(top1 as i64, expected, "{name}: eval-transform top-1");
    }
}
