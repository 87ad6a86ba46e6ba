//! Time of one explanation per method: ResNet-50 (synthetic weights), one 224x224 image, on
//! the CPU or a CUDA device:
//! `cargo run --release -p tame-cams --example time_methods -- [cpu|cuda[:N]]`
//! (a `cuda` device needs `--features tame-backbones/cuda`).
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "cpu".into());
    let device = match spec.as_str() {
        "cpu" => Device::Cpu,
        cuda => {
            let ordinal = match cuda.strip_prefix("cuda") {
                Some("") => 0,
                Some(n) => n
                    .trim_start_matches(':')
                    .parse()
                    .map_err(|_| format!("`{spec}`: the device number is not a number"))?,
                None => return Err(format!("unknown device `{spec}` (cpu, cuda or cuda:N)").into()),
            };
            // One line: candle's error may carry a backtrace.
            Device::new_cuda(ordinal).map_err(|e| {
                let text = e.to_string();
                format!(
                    "cannot open CUDA device {ordinal}: {}",
                    text.lines().next().unwrap_or("")
                )
            })?
        }
    };
    let backbone = load_backbone(BackboneKind::ResNet50, &WeightsSpec::Synthetic, &device)?;
    let backbone = backbone.as_ref();
    let images = Tensor::rand(0f32, 1f32, (1, 3, 224, 224), &device)?;
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
            Box::new(GradCam::new(backbone, GradCamConfig::default())?),
            1.0,
        ),
        (
            "gradcam++",
            Box::new(GradCamPlusPlus::new(backbone, GradCamConfig::default())?),
            1.0,
        ),
        (
            "scorecam",
            Box::new(ScoreCam::new(backbone, score)?),
            2048.0 / 64.0,
        ),
        ("rise", Box::new(Rise::new(backbone, rise)?), 4000.0 / 128.0),
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
    Ok(())
}
