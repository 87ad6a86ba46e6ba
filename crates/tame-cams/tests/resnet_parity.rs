//! Grad-CAM, Grad-CAM++ and Score-CAM maps equal pytorch-grad-cam's on ResNet-50 with synthetic
//! weights and inputs (`python xtask/fixtures/make_cam_fixtures.py`), and RISE's equal the
//! authors' code given the same masks (`python xtask/fixtures/make_rise_fixtures.py`); all
//! methods are deterministic.
//!
//! Tolerance: max |ours - reference| <= 1e-4 * max |reference| over each map (raw maps, before
//! normalisation). Both sides run in float64 (see the fixture scripts: in float32, Score-CAM's
//! softmax over channels turns the backbones' rounding noise into larger map differences).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tame_backbones::synthetic::{synthetic_uniform, ScaledSyntheticWeights, SyntheticWeights};
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind};
use tame_cams::{
    GradCam, GradCamConfig, GradCamPlusPlus, Rise, RiseConfig, ScoreCam, ScoreCamConfig,
};
use tame_metrics::Explainer;

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> HashMap<String, Tensor> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cams.npz");
    Tensor::read_npz(path).unwrap().into_iter().collect()
}

fn resnet() -> Box<dyn Backbone> {
    load_backbone(
        BackboneKind::ResNet50,
        &WeightsSpec::Synthetic,
        &Device::Cpu,
    )
    .unwrap()
}

/// The synthetic ResNet-50 in float64, as the fixtures were made.
fn resnet_f64() -> Box<dyn Backbone> {
    let vb = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F64, Device::Cpu);
    BackboneKind::ResNet50.build(vb).unwrap()
}

fn image(name: &str, batch: usize, size: usize) -> Tensor {
    let values: Vec<f32> = synthetic_uniform(name, batch * 3 * size * size)
        .into_iter()
        .map(|u| u as f32)
        .collect();
    Tensor::from_vec(values, (batch, 3, size, size), &Device::Cpu).unwrap()
}

fn image_f64(name: &str, batch: usize, size: usize) -> Tensor {
    image(name, batch, size).to_dtype(DType::F64).unwrap()
}

fn classes(fx: &HashMap<String, Tensor>, prefix: &str) -> Vec<u32> {
    fx[&format!("{prefix}/classes")]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|c| c as u32)
        .collect()
}

/// Checks `ours` against the reference maps of `prefix`; returns the worst relative error.
fn assert_maps(prefix: &str, ours: &Tensor, fx: &HashMap<String, Tensor>) -> f64 {
    let expected = &fx[&format!("{prefix}/maps")];
    assert_eq!(ours.dims(), expected.dims(), "{prefix}: shape");
    let mut worst = 0f64;
    for b in 0..expected.dim(0).unwrap() {
        let e = expected
            .get(b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let o = ours
            .get(b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = o
            .iter()
            .zip(&e)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= TOLERANCE * scale,
            "{prefix} map {b}: max abs difference {diff} exceeds {TOLERANCE} x {scale}"
        );
        worst = worst.max(diff / scale);
    }
    worst
}

fn grad_config(tap: &str) -> GradCamConfig {
    GradCamConfig {
        tap: Some(tap.into()),
    }
}

#[test]
fn grad_cam_and_grad_cam_plus_plus_match_pytorch_grad_cam() {
    let fx = fixtures();
    let backbone = resnet_f64();
    let images = image_f64("input.cams.grad", 2, 96);
    for tap in ["layer4", "layer3"] {
        let prefix = format!("gradcam.{tap}");
        let cam = GradCam::new(backbone.as_ref(), grad_config(tap)).unwrap();
        let maps = cam.explain(&images, &[], &classes(&fx, &prefix)).unwrap();
        let worst = assert_maps(&prefix, &maps, &fx);
        println!("{prefix}: worst relative difference {worst:.1e}");

        let prefix = format!("gradcam++.{tap}");
        let cam = GradCamPlusPlus::new(backbone.as_ref(), grad_config(tap)).unwrap();
        let maps = cam.explain(&images, &[], &classes(&fx, &prefix)).unwrap();
        let worst = assert_maps(&prefix, &maps, &fx);
        println!("{prefix}: worst relative difference {worst:.1e}");
    }
}

const SCORE: &str = "scorecam.layer1.0.conv1";

fn score_cam(backbone: &dyn Backbone, batch_size: usize) -> ScoreCam<'_> {
    let config = ScoreCamConfig {
        tap: Some("layer1.0.conv1".into()),
        batch_size,
    };
    ScoreCam::new(backbone, config).unwrap()
}

#[test]
fn score_cam_matches_pytorch_grad_cam_and_is_deterministic() {
    let fx = fixtures();
    let backbone = resnet_f64();
    let images = image_f64("input.cams.score", 2, 32);
    let classes = classes(&fx, SCORE);
    let maps = score_cam(backbone.as_ref(), 16)
        .explain(&images, &[], &classes)
        .unwrap();
    let worst = assert_maps(SCORE, &maps, &fx);
    println!("{SCORE}: worst relative difference {worst:.1e}");
    // Another batch size: the same forward passes, grouped differently.
    let again = score_cam(backbone.as_ref(), 40)
        .explain(&images, &[], &classes)
        .unwrap();
    let diff = (maps - again).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() <= 1e-9);
}

/// Each image's top class: the synthetic logits are thousands apart, so any other class has
/// a probability of 0 for RISE to weigh.
fn predicted(backbone: &dyn Backbone, images: &Tensor) -> Vec<u32> {
    let request = backbone.tap_request(&[], true).unwrap();
    let logits = backbone
        .forward(images, &request, tame_backbones::Mode::Eval)
        .unwrap()
        .logits
        .unwrap();
    logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

fn rise(backbone: &dyn Backbone, seed: u64, batch_size: usize) -> Rise<'_> {
    let config = RiseConfig {
        masks: 12,
        grid: 3,
        probability: 0.5,
        batch_size,
        seed,
    };
    Rise::new(backbone, config).unwrap()
}

#[test]
fn rise_is_seeded() {
    let backbone = resnet();
    let images = image("input.cams.rise", 2, 32);
    let classes = predicted(backbone.as_ref(), &images);
    let run = |seed, batch| -> Vec<f32> {
        let maps = rise(backbone.as_ref(), seed, batch)
            .explain(&images, &[], &classes)
            .unwrap();
        assert_eq!(maps.dims(), &[2, 32, 32]);
        maps.flatten_all().unwrap().to_vec1().unwrap()
    };
    let a = run(7, 5);
    assert_eq!(a, run(7, 5));
    let b = run(8, 5);
    assert!(a
        .iter()
        .zip(&b)
        .any(|(x, y)| (x - y).abs() > 1e-3 * x.abs().max(1e-12)));
    // The masks do not depend on the batch size; only the summation order does.
    let c = run(7, 12);
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    assert!(a.iter().zip(&c).all(|(x, y)| (x - y).abs() <= 1e-5 * scale));
}

/// The authors' RISE (`RISE.forward` of github.com/eclique/RISE) with the masks their
/// `generate_masks` drew: saliency = sum_i P(c | M_i ⊙ x) M_i / N / p1 on the normalised
/// image x, which `Rise::with_masks` computes by the same formula. The masks are checked
/// against the authors' upsampling and crop in `rise.rs`'s unit tests.
#[test]
fn rise_with_the_authors_masks_matches_their_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rise.npz");
    let fx: HashMap<String, Tensor> = Tensor::read_npz(path).unwrap().into_iter().collect();
    let scalar = |name: &str| fx[&format!("rise/{name}")].to_vec1::<f64>().unwrap()[0];
    let vb = VarBuilder::from_backend(
        // Scaled in float64, as the script does: unscaled, the softmax is saturated.
        Box::new(ScaledSyntheticWeights {
            prefix: "fc.",
            factor: scalar("fc_scale"),
        }),
        DType::F64,
        Device::Cpu,
    );
    let backbone = BackboneKind::ResNet50.build(vb).unwrap();
    let masks = &fx["rise/masks"];
    let (_, height, width) = masks.dims3().unwrap();
    let values: Vec<f64> = synthetic_uniform("input.cams.rise", 2 * 3 * height * width)
        .into_iter()
        .map(|u| u as f32 as f64)
        .collect();
    let images = Tensor::from_vec(values, (2, 3, height, width), &Device::Cpu).unwrap();
    let classes = classes(&fx, "rise");
    let probability = scalar("probability") as f32;
    let run = |batch_size| {
        Rise::with_masks(backbone.as_ref(), masks, probability, batch_size)
            .unwrap()
            .explain(&images, &[], &classes)
            .unwrap()
    };
    let maps = run(10);
    let worst = assert_maps("rise", &maps, &fx);
    println!("rise: worst relative difference {worst:.1e}");
    // Another batch size: the same masks, only the summation order differs.
    let diff = (maps - run(7)).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f64>().unwrap() <= 1e-12);
}

#[test]
fn rise_refuses_masks_of_another_size() {
    let backbone = resnet();
    let images = image("input.cams.rise", 1, 32);
    let masks = Tensor::ones((4, 32, 31), DType::F32, &Device::Cpu).unwrap();
    let rise = Rise::with_masks(backbone.as_ref(), &masks, 0.5, 2).unwrap();
    assert!(rise.explain(&images, &[], &[0]).is_err());
    let flat = Tensor::ones((4, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(Rise::with_masks(backbone.as_ref(), &flat, 0.5, 2).is_err());
}

#[test]
fn rise_with_every_cell_kept_is_the_class_probability() {
    // p = 1: every mask is all ones, so each pixel's saliency is P(class | image).
    let backbone = resnet();
    let images = image("input.cams.rise", 2, 32);
    let classes = predicted(backbone.as_ref(), &images);
    let config = RiseConfig {
        masks: 3,
        grid: 3,
        probability: 1.0,
        batch_size: 2,
        seed: 0,
    };
    let maps = Rise::new(backbone.as_ref(), config)
        .unwrap()
        .explain(&images, &[], &classes)
        .unwrap();
    let request = backbone.tap_request(&[], true).unwrap();
    let logits = backbone
        .forward(&images, &request, tame_backbones::Mode::Eval)
        .unwrap()
        .logits
        .unwrap();
    let probs = candle_nn::ops::softmax(&logits, 1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let maps = maps.to_vec3::<f32>().unwrap();
    for (b, &class) in classes.iter().enumerate() {
        let p = probs[b][class as usize];
        for v in maps[b].iter().flatten() {
            assert!((v - p).abs() <= 1e-5 * p.max(1e-30), "{v} != {p}");
        }
    }
}
