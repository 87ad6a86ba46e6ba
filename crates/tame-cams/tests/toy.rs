//! Grad-CAM and Grad-CAM++ on a network whose gradients are known in closed form.
//!
//! The toy network: tap A = 2 x - 0.5 (the image itself, rescaled), logits
//! y_c = sum_k V[c][k] mean(A_k) + U[c][k] mean(A_k^2) / 2, so that
//! dy_c / dA_kij = (V[c][k] + U[c][k] A_kij) / (h w).

use candle_core::{Device, Tensor};
use tame_backbones::{Backbone, ForwardOutput, Mode, TapRequest};
use tame_cams::{GradCam, GradCamConfig, GradCamPlusPlus};
use tame_metrics::{EvalConfig, Evaluator, Explainer};

const V: [[f32; 3]; 2] = [[1.0, -2.0, 0.5], [-0.5, 1.5, 1.0]];
const U: [[f32; 3]; 2] = [[0.5, 1.0, -1.0], [2.0, -0.25, 0.75]];
const H: usize = 3;
const W: usize = 4;

struct Toy;

impl Backbone for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn tap_names(&self) -> Vec<String> {
        vec!["features".into()]
    }

    fn default_taps(&self) -> Vec<String> {
        self.tap_names()
    }

    fn cam_tap(&self) -> &'static str {
        "features"
    }

    fn input_mean(&self) -> [f32; 3] {
        // A = 2x - 0.5 is zero at x = 0.25.
        [0.25; 3]
    }

    fn forward(
        &self,
        images: &Tensor,
        request: &TapRequest,
        _mode: Mode,
    ) -> tame_backbones::Result<ForwardOutput> {
        let mut taps = request.collector();
        let a = taps.pass("features", images.affine(2.0, -0.5)?)?;
        if taps.done() {
            return taps.finish(None);
        }
        let v = Tensor::new(&V, images.device())?;
        let u = Tensor::new(&U, images.device())?;
        let linear = a.mean((2, 3))?.matmul(&v.t()?)?;
        let quadratic = (a.sqr()?.mean((2, 3))? * 0.5)?.matmul(&u.t()?)?;
        taps.finish(Some((linear + quadratic)?))
    }

    fn reseed(&self, _seed: u64) {}
}

/// Two images (2, 3, H, W) with values in [0, 1], some of A negative.
fn images() -> Tensor {
    let values: Vec<f32> = (0..2 * 3 * H * W)
        .map(|i| ((i * 37 + 11) % 29) as f32 / 28.0)
        .collect();
    Tensor::from_vec(values, (2, 3, H, W), &Device::Cpu).unwrap()
}

/// A[b][k][p] (p = i * W + j) as the toy computes it.
fn activations() -> Vec<Vec<Vec<f32>>> {
    let flat = images().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    flat.chunks(3 * H * W)
        .map(|image| {
            image
                .chunks(H * W)
                .map(|channel| channel.iter().map(|v| 2.0 * v - 0.5).collect())
                .collect()
        })
        .collect()
}

/// dy_class / dA for one image.
fn gradient(a: &[Vec<f32>], class: usize) -> Vec<Vec<f32>> {
    let n = (H * W) as f32;
    a.iter()
        .enumerate()
        .map(|(k, ak)| {
            ak.iter()
                .map(|&v| (V[class][k] + U[class][k] * v) / n)
                .collect()
        })
        .collect()
}

fn weighted_relu(a: &[Vec<f32>], weights: &[f32]) -> Vec<f32> {
    (0..H * W)
        .map(|p| {
            a.iter()
                .zip(weights)
                .map(|(ak, w)| w * ak[p])
                .sum::<f32>()
                .max(0.0)
        })
        .collect()
}

fn assert_maps(ours: &Tensor, expected: &[Vec<f32>]) {
    assert_eq!(ours.dims(), &[2, H, W]);
    let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let expected: Vec<f32> = expected.concat();
    assert!(expected.iter().any(|&v| v > 0.0) && expected.contains(&0.0));
    for (a, b) in ours.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
            "{ours:?}\n!= {expected:?}"
        );
    }
}

const CLASSES: [u32; 2] = [0, 1];

fn config() -> GradCamConfig {
    GradCamConfig {
        tap: Some("features".into()),
    }
}

#[test]
fn grad_cam_equals_the_closed_form() {
    let expected: Vec<Vec<f32>> = activations()
        .iter()
        .zip(CLASSES)
        .map(|(a, class)| {
            let weights: Vec<f32> = gradient(a, class as usize)
                .iter()
                .map(|g| g.iter().sum::<f32>() / (H * W) as f32)
                .collect();
            weighted_relu(a, &weights)
        })
        .collect();
    let cam = GradCam::new(&Toy, config()).unwrap();
    assert!(cam.taps().is_empty());
    let maps = cam.explain(&images(), &[], &CLASSES).unwrap();
    assert_maps(&maps, &expected);
}

#[test]
fn grad_cam_plus_plus_equals_the_closed_form() {
    let expected: Vec<Vec<f32>> = activations()
        .iter()
        .zip(CLASSES)
        .map(|(a, class)| {
            let weights: Vec<f32> = gradient(a, class as usize)
                .iter()
                .zip(a)
                .map(|(g, ak)| {
                    let sum_a: f32 = ak.iter().sum();
                    g.iter()
                        .map(|&g| {
                            let alpha = if g == 0.0 {
                                0.0
                            } else {
                                g * g / (2.0 * g * g + sum_a * g * g * g + 1e-6)
                            };
                            g.max(0.0) * alpha
                        })
                        .sum()
                })
                .collect();
            weighted_relu(a, &weights)
        })
        .collect();
    let cam = GradCamPlusPlus::new(&Toy, config()).unwrap();
    let maps = cam.explain(&images(), &[], &CLASSES).unwrap();
    assert_maps(&maps, &expected);
}

#[test]
fn settings_are_checked() {
    let unknown = GradCamConfig {
        tap: Some("nope".into()),
    };
    let err = GradCam::new(&Toy, unknown).err().expect("unknown tap");
    assert!(err.to_string().contains("features"), "{err}");
    // No tap named: the backbone's own CAM tap.
    let by_default = GradCam::new(&Toy, GradCamConfig::default()).unwrap();
    let cam = GradCam::new(&Toy, config()).unwrap();
    assert_eq!(
        by_default
            .explain(&images(), &[], &CLASSES)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap(),
        cam.explain(&images(), &[], &CLASSES)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()
    );

    let err = cam.explain(&images(), &[], &[0]).unwrap_err();
    assert!(err.to_string().contains("2 images but 1 classes"), "{err}");
    let err = cam.explain(&images(), &[], &[0, 2]).unwrap_err();
    assert!(err.to_string().contains("class 2 is out of range"), "{err}");
}

/// Maps of NaN (from NaN weights, say) are an error, not scores: AD 0 would look perfect.
#[test]
fn non_finite_maps_are_an_error_not_scores() {
    struct Broken;
    impl Explainer for Broken {
        fn taps(&self) -> &[String] {
            &[]
        }
        fn explain(
            &self,
            images: &Tensor,
            _taps: &[Tensor],
            _classes: &[u32],
        ) -> tame_metrics::Result<Tensor> {
            let (b, _, h, w) = images.dims4()?;
            Ok(Tensor::full(f32::NAN, (b, h, w), images.device())?)
        }
    }
    let evaluator = Evaluator::new(&Toy, &Broken, EvalConfig::default()).unwrap();
    let err = evaluator.evaluate(&images(), 0).unwrap_err().to_string();
    assert!(err.contains("NaN or infinite"), "{err}");
}
