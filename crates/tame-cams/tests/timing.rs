//! Time of one explanation per method: ResNet-50 (synthetic weights), one 224x224 image, the
//! methods' defaults. Not a check: run by hand with
//! `cargo test --release -p tame-cams --test timing -- --ignored --nocapture`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::BackboneKind;
use tame_cams::{
    GradCam, GradCamConfig, GradCamPlusPlus, Rise, RiseConfig, ScoreCam, ScoreCamConfig,
};
use tame_metrics::Explainer;

#[test]
#[ignore = "minutes on a CPU; prints timings"]
fn time_one_explanation_per_method() {
    let device = Device::cuda_if_available(0).unwrap();
    let backbone = load_backbone(BackboneKind::ResNet50, &WeightsSpec::Synthetic, &device).unwrap();
    let backbone = backbone.as_ref();
    let images = Tensor::rand(0f32, 1f32, (1, 3, 224, 224), &device).unwrap();
    let classes = [1u32];
    let methods: Vec<(&str, Box<dyn Explainer + '_>)> = vec![
        (
            "gradcam",
            Box::new(GradCam::new(backbone, GradCamConfig::default()).unwrap()),
        ),
        (
            "gradcam++",
            Box::new(GradCamPlusPlus::new(backbone, GradCamConfig::default()).unwrap()),
        ),
        (
            "scorecam",
            Box::new(ScoreCam::new(backbone, ScoreCamConfig::default()).unwrap()),
        ),
        (
            "rise",
            Box::new(Rise::new(backbone, RiseConfig::default()).unwrap()),
        ),
    ];
    for (name, method) in methods {
        let start = Instant::now();
        match method.explain(&images, &[], &classes) {
            Ok(maps) => println!(
                "{name}: {:.2} s, maps {:?}",
                start.elapsed().as_secs_f64(),
                maps.dims()
            ),
            Err(e) => println!(
                "{name}: error after {:.2} s: {e}",
                start.elapsed().as_secs_f64()
            ),
        }
    }
}
