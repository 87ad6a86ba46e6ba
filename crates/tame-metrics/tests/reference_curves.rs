//! ROAD equals pytorch-grad-cam's `ROADMostRelevantFirst` / `ROADLeastRelevantFirst`, and
//! insertion/deletion the RISE authors' `CausalMetric`, on the cases of
//! `python xtask/fixtures/make_curve_fixtures.py`: a linear classifier on the normalised image
//! (the same on both sides), two 16 x 16 images, one map without ties and one with many.
//!
//! Tolerances, absolute, on probabilities: each ROAD score (the change in the class's
//! probability) and each insertion/deletion AUC and curve point within 1e-4; the imputed pixels
//! within 1e-4 ([0, 1] space); both sides run in float32 images, the classifier in float64.
//!
//! What is injected: ROAD's imputation noise is random in the reference, so the scores are
//! compared without noise and the noise is checked on its own (seeded, and of the reference's
//! default standard deviation in normalised units). Insertion/deletion runs on the authors'
//! substrates (their blur of the normalised image, zero padded, and zeros in normalised
//! space), given through `insertion_deletion_with`: ours blur with renormalised borders and
//! delete to black by design; the blur's kernel is theirs, checked away from the borders.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use tame_backbones::synthetic::synthetic_uniform;
use tame_backbones::{IMAGENET_MEAN, IMAGENET_STD};
use tame_metrics::{
    gaussian_blur, insertion_deletion_with, road_scores, InsDelConfig, MetricsError, RoadConfig,
    Substrates,
};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> HashMap<String, Tensor> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/curves.npz");
    Tensor::read_npz(path).unwrap().into_iter().collect()
}

fn flat_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn flat_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Everything both sides share: images, maps, classes and the classifier.
struct Case {
    fx: HashMap<String, Tensor>,
    dims: [usize; 3],
    pixels: Vec<f32>,
    maps: Vec<f32>,
    classes: Vec<u32>,
    /// (outputs, 3 H W) and (outputs,), float64.
    weight: Tensor,
    bias: Tensor,
}

impl Case {
    fn new() -> Self {
        let fx = fixtures();
        let (n, h, w) = fx["maps"].dims3().unwrap();
        let dims = [3, h, w];
        let len = 3 * h * w;
        let outputs = fx["outputs"].to_vec1::<i64>().unwrap()[0] as usize;
        let scale = fx["weight_scale"].to_vec1::<f64>().unwrap()[0];
        let param = |name: &str, count: usize| -> Vec<f64> {
            synthetic_uniform(name, count)
                .into_iter()
                .map(|u| (2.0 * u - 1.0) * scale)
                .collect()
        };
        let weight = Tensor::from_vec(
            param("curves.linear.weight", outputs * len),
            (outputs, len),
            &Device::Cpu,
        )
        .unwrap();
        let bias =
            Tensor::from_vec(param("curves.linear.bias", outputs), outputs, &Device::Cpu).unwrap();
        let pixels = synthetic_uniform("input.metrics.curves", n * len)
            .into_iter()
            .map(|u| u as f32)
            .collect();
        let classes = fx["classes"]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|c| c as u32)
            .collect();
        Case {
            maps: flat_f32(&fx["maps"]),
            fx,
            dims,
            pixels,
            classes,
            weight,
            bias,
        }
    }

    /// The classifier: logits = W (x - mean) / std + b, in float64.
    fn logits(&self, images: &Tensor) -> Result<Tensor, MetricsError> {
        let n = images.dim(0)?;
        let stat = |v: [f32; 3]| {
            Tensor::new(&v, &Device::Cpu)?
                .to_dtype(DType::F64)?
                .reshape((1, 3, 1, 1))
        };
        let x = images
            .to_dtype(DType::F64)?
            .broadcast_sub(&stat(IMAGENET_MEAN)?)?
            .broadcast_div(&stat(IMAGENET_STD)?)?
            .reshape((n, ()))?;
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }

    /// Softmax probability of `class` for one image (C, H, W).
    fn probability(&self, image: &[f32], class: u32) -> f64 {
        let [c, h, w] = self.dims;
        let image = Tensor::from_slice(image, (1, c, h, w), &Device::Cpu).unwrap();
        let logits = self.logits(&image).unwrap().flatten_all().unwrap();
        let logits = logits.to_vec1::<f64>().unwrap();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|z| (z - max).exp()).sum();
        (logits[class as usize] - max).exp() / sum
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * self.len()..(i + 1) * self.len()]
    }
}

/// Every image the metric classifies, in order, then the metric's output.
fn recording<T>(case: &Case, run: impl FnOnce(&tame_metrics::Classify) -> T) -> (Vec<Vec<f32>>, T) {
    let seen = RefCell::new(Vec::new());
    let classify = |images: &Tensor| {
        let n = images.dim(0)?;
        let values = images.flatten_all()?.to_vec1::<f32>()?;
        seen.borrow_mut()
            .extend(values.chunks(values.len() / n.max(1)).map(<[f32]>::to_vec));
        case.logits(images)
    };
    let out = run(&classify);
    (seen.into_inner(), out)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
}

fn road(case: &Case, config: &RoadConfig) -> (Vec<Vec<f32>>, Vec<tame_metrics::RoadScores>) {
    let y: Vec<f64> = (0..case.classes.len())
        .map(|i| case.probability(case.image(i), case.classes[i]))
        .collect();
    recording(case, |classify| {
        road_scores(
            classify,
            &case.pixels,
            case.dims,
            &case.maps,
            &case.classes,
            &y,
            0,
            config,
            7,
            &Device::Cpu,
        )
        .unwrap()
    })
}

#[test]
fn road_matches_pytorch_grad_cam_without_noise() {
    let case = Case::new();
    let fractions = flat_f64(&case.fx["road/fractions"]);
    let config = RoadConfig {
        fractions: fractions.clone(),
        noise: 0.0,
        seed: 0,
    };
    let (seen, scores) = road(&case, &config);
    let levels = fractions.len();
    let half = fractions.iter().position(|&f| f == 0.5).unwrap();
    let mut worst = (0f64, 0f64);
    for (o, name) in ["morf", "lerf"].into_iter().enumerate() {
        let expected = case.fx[&format!("road/{name}")]
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let imputed = flat_f32(&case.fx[&format!("road/{name}_imputed")]);
        for (i, s) in scores.iter().enumerate() {
            let points = if o == 0 { &s.morf } else { &s.lerf };
            for (l, p) in points.iter().enumerate() {
                // The reference's score is the probability after minus before; ours the drop.
                let diff = (p.drop + expected[i][l]).abs();
                assert!(
                    diff <= TOLERANCE,
                    "{name} image {i} fraction {}: drop {} vs reference {}",
                    fractions[l],
                    p.drop,
                    -expected[i][l]
                );
                worst.0 = worst.0.max(diff);
            }
            let ours = &seen[i * 2 * levels + o * levels + half];
            let reference = &imputed[i * case.len()..(i + 1) * case.len()];
            let diff = max_abs_diff(ours, reference);
            assert!(
                diff <= TOLERANCE,
                "{name} image {i}: imputed pixels off by {diff}"
            );
            worst.1 = worst.1.max(diff);
        }
    }
    println!(
        "ROAD: max score difference {:.1e}, max imputed pixel difference {:.1e}",
        worst.0, worst.1
    );
}

#[test]
fn road_noise_is_seeded_and_of_the_reference_size() {
    let case = Case::new();
    let noise = case.fx["road/noise"].to_vec1::<f64>().unwrap()[0];
    let fractions = flat_f64(&case.fx["road/fractions"]);
    let config = |noise, seed| RoadConfig {
        fractions: fractions.clone(),
        noise,
        seed,
    };
    let (clean, _) = road(&case, &config(0.0, 0));
    let (noisy, scores) = road(&case, &config(noise, 3));
    assert_eq!(road(&case, &config(noise, 3)), (noisy.clone(), scores));
    assert_ne!(road(&case, &config(noise, 4)).0, noisy);
    // The noise in normalised units: (noisy - clean) / std, per channel, on removed pixels
    // (kept ones are equal).
    let plane = case.dims[1] * case.dims[2];
    for (c, std) in IMAGENET_STD.iter().enumerate() {
        let samples: Vec<f64> = noisy
            .iter()
            .zip(&clean)
            .flat_map(|(a, b)| {
                let range = c * plane..(c + 1) * plane;
                a[range.clone()].iter().zip(&b[range]).map(|(x, y)| {
                    // The difference of two f32 values near 0.5, in normalised units.
                    (*x as f64 - *y as f64) / *std as f64
                })
            })
            .filter(|d| *d != 0.0)
            .collect();
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let sd = (samples.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
        println!("channel {c}: {n} noisy pixels, mean {mean:.1e}, std {sd:.2e}");
        assert!(n > 1000.0);
        assert!(
            mean.abs() < 4.0 * noise / n.sqrt(),
            "channel {c}: mean {mean}"
        );
        assert!(
            (sd / noise - 1.0).abs() < 0.1,
            "channel {c}: std {sd} vs {noise}"
        );
    }
}

#[test]
fn insertion_deletion_match_the_rise_authors_causal_metric() {
    let case = Case::new();
    let insertion = flat_f32(&case.fx["insdel/insertion_start"]);
    let deletion = flat_f32(&case.fx["insdel/deletion_end"]);
    let substrates = Substrates {
        insertion: &insertion,
        deletion: &deletion,
    };
    let steps = case.fx["insdel/steps"].to_vec1::<i64>().unwrap()[0] as usize;
    let (seen, scores) = recording(&case, |classify| {
        insertion_deletion_with(
            classify,
            &case.pixels,
            case.dims,
            &case.maps,
            &case.classes,
            &substrates,
            steps,
            5,
            &Device::Cpu,
        )
        .unwrap()
    });
    let points = steps + 1;
    let mut worst = (0f64, 0f64);
    for (o, name) in ["insertion", "deletion"].into_iter().enumerate() {
        let curves = case.fx[&format!("insdel/{name}")].to_vec2::<f64>().unwrap();
        let aucs = case.fx[&format!("insdel/{name}_auc")]
            .to_vec1::<f64>()
            .unwrap();
        for (i, s) in scores.iter().enumerate() {
            for (step, expected) in curves[i].iter().enumerate() {
                let image = &seen[i * 2 * points + o * points + step];
                let diff = (case.probability(image, case.classes[i]) - expected).abs();
                assert!(diff <= TOLERANCE, "{name} image {i} step {step}: {diff}");
                worst.0 = worst.0.max(diff);
            }
            let ours = if o == 0 { s.insertion } else { s.deletion };
            let diff = (ours - aucs[i]).abs();
            assert!(
                diff <= TOLERANCE,
                "{name} image {i}: AUC {ours} vs {}",
                aucs[i]
            );
            worst.1 = worst.1.max(diff);
        }
    }
    println!(
        "insertion/deletion: max curve difference {:.1e}, max AUC difference {:.1e}",
        worst.0, worst.1
    );
}

#[test]
fn blur_equals_the_rise_authors_away_from_the_borders() {
    let case = Case::new();
    let config = InsDelConfig::default();
    let reference = flat_f32(&case.fx["insdel/insertion_start"]);
    let [channels, h, w] = case.dims;
    let r = config.blur_size / 2;
    let mut worst = 0f64;
    for i in 0..case.classes.len() {
        let ours = gaussian_blur(case.image(i), case.dims, &config);
        let theirs = &reference[i * case.len()..(i + 1) * case.len()];
        for c in 0..channels {
            for y in r..h - r {
                for x in r..w - r {
                    let at = (c * h + y) * w + x;
                    let diff = (ours[at] as f64 - theirs[at] as f64).abs();
                    assert!(diff <= 1e-5, "image {i} ({c}, {y}, {x}): {diff}");
                    worst = worst.max(diff);
                }
            }
        }
    }
    println!("blur: max interior difference {worst:.1e}");
}
