//! Time of one explanation per method: ResNet-50 (synthetic weights), one 224x224 image. Not a
//! check: run by hand with
//! `cargo test --release -p tame-cams --test timing -- --ignored --nocapture`.
//!
//! Score-CAM and RISE cost one forward pass per channel / mask: they are timed on fewer
//! (64 channels of `layer1.0.conv1`, 128 masks) and scaled to their defaults on ResNet-50
//! (2048 channels of `layer4`, 4000 masks).

use std::time::Instant;

use candle_core::{Device, Tensor};
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::BackboneKind;
use tame_cams::{
    GradCam, GradCamConfig, GradCamPlusPlus, Rise, RiseConfig, ScoreCam, ScoreCamConfig,
};
use tame_metrics::Explainer;

#[test]
#[ignore = "a minute on a CPU; prints timings"]
fn time_one_explanation_per_method() {
    let device = Device::cuda_if_available(0).unwrap();
    let backbone = load_backbone(BackboneKind::ResNet50, &WeightsSpec::Synthetic, &device).unwrap();
    let backbone = backbone.as_ref();
    let images = Tensor::rand(0f32, 1f32, (1, 3, 224, 224), &device).unwrap();
    let classes = [1u32];
    let score = ScoreCamConfig {
        tap: Some("layer1.0.conv1".into()),
        ..ScoreCamConfig::default()
    };
    let rise = RiseConfig {
        masks: 128,
        ..RiseConfig::default()
    };
    let methods: Vec<(&str, Box<dyn Explainer + '_>, f64)> = vec![
        (
            "gradcam",
            Box::new(GradCam::new(backbone, GradCamConfig::default()).unwrap()),
            1.0,
        ),
        (
            "gradcam++",
            Box::new(GradCamPlusPlus::new(backbone, GradCamConfig::default()).unwrap()),
            1.0,
        ),
        (
            "scorecam",
            Box::new(ScoreCam::new(backbone, score).unwrap()),
            2048.0 / 64.0,
        ),
        (
            "rise",
            Box::new(Rise::new(backbone, rise).unwrap()),
            4000.0 / 128.0,
        ),
    ];
    for (name, method, scale) in methods {
        let start = Instant::now();
        let result = method.explain(&images, &[], &classes);
        let seconds = start.elapsed().as_secs_f64();
        match result {
            Ok(_) => println!(
                "{name}: {seconds:.2} s measured, {:.1} s with the defaults",
                seconds * scale
            ),
            Err(e) => println!("{name}: error after {seconds:.2} s: {e}"),
        }
    }
}
