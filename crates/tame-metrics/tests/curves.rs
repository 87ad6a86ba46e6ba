//! ROAD, insertion/deletion and the imputation on cases whose answers are known: a toy
//! classifier that looks only at a sparse grid of "key" pixels, explained by the oracle map
//! (1 on the key pixels) and by its inverse.

use candle_core::{Device, Tensor};
use tame_metrics::{
    impute_linear, insertion_deletion, road_scores, ImputeConfig, InsDelConfig, MetricsError,
    RoadConfig,
};

const SIDE: usize = 16;
const PLANE: usize = SIDE * SIDE;

fn is_key(p: usize) -> bool {
    (p / SIDE) % 4 == 0 && (p % SIDE) % 4 == 0
}

/// Key pixels white in every channel, the rest at 0.2.
fn image() -> Vec<f32> {
    (0..3 * PLANE)
        .map(|i| if is_key(i % PLANE) { 1.0 } else { 0.2 })
        .collect()
}

/// Two classes: class 0 has probability q = the fraction of key pixels whose channel 0 is
/// above 0.5 (logits ln q, ln(1 - q)).
fn toy(images: &Tensor) -> Result<Tensor, MetricsError> {
    let (n, _, _, _) = images.dims4()?;
    let v = images.flatten_all()?.to_vec1::<f32>()?;
    let keys = (0..PLANE).filter(|&p| is_key(p)).count() as f64;
    let mut logits = Vec::with_capacity(2 * n);
    for i in 0..n {
        let alive = (0..PLANE)
            .filter(|&p| is_key(p) && v[i * 3 * PLANE + p] > 0.5)
            .count() as f64;
        let q = (alive / keys).clamp(1e-12, 1.0 - 1e-12);
        logits.extend([q.ln() as f32, (1.0 - q).ln() as f32]);
    }
    Ok(Tensor::from_vec(logits, (n, 2), &Device::Cpu)?)
}

fn oracle() -> Vec<f32> {
    (0..PLANE)
        .map(|p| if is_key(p) { 1.0 } else { 0.0 })
        .collect()
}

fn inverse() -> Vec<f32> {
    oracle().iter().map(|v| 1.0 - v).collect()
}

#[test]
fn deletion_and_insertion_of_oracle_and_inverse_maps() {
    let pixels: Vec<f32> = [image(), image()].concat();
    let maps: Vec<f32> = [oracle(), inverse()].concat();
    let config = InsDelConfig::default();
    let s = insertion_deletion(
        &toy,
        &pixels,
        [3, SIDE, SIDE],
        &maps,
        &[0, 0],
        &config,
        5,
        &Device::Cpu,
    )
    .unwrap();
    // 16 key pixels of 256 = one step of 16: the oracle deletes them all at the first step.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(close(s[0].deletion, 1.0 / 32.0), "{:?}", s[0]);
    assert!(close(s[0].insertion, 31.0 / 32.0), "{:?}", s[0]);
    assert!(close(s[1].deletion, 31.0 / 32.0), "{:?}", s[1]);
    assert!(close(s[1].insertion, 1.0 / 32.0), "{:?}", s[1]);
}

#[test]
fn road_of_oracle_and_inverse_maps() {
    let pixels: Vec<f32> = [image(), image()].concat();
    let maps: Vec<f32> = [oracle(), inverse()].concat();
    let config = RoadConfig {
        fractions: vec![0.1, 0.5, 0.9],
        ..RoadConfig::default()
    };
    let run = |chunk| {
        road_scores(
            &toy,
            &pixels,
            [3, SIDE, SIDE],
            &maps,
            &[0, 0],
            &[1.0, 1.0],
            0,
            &config,
            chunk,
            &Device::Cpu,
        )
        .unwrap()
    };
    let s = run(4);
    // Oracle: removing the key pixels first kills the prediction at once, removing them
    // last (at most 90 % of 256 < 240 others) never does; the inverse map the other way.
    for p in &s[0].morf {
        assert!(!p.survived && p.drop > 0.999, "{p:?}");
    }
    for p in &s[0].lerf {
        assert!(p.survived && p.drop.abs() < 1e-6, "{p:?}");
    }
    for p in &s[1].morf {
        assert!(p.survived && p.drop.abs() < 1e-6, "{p:?}");
    }
    for p in &s[1].lerf {
        assert!(!p.survived && p.drop > 0.999, "{p:?}");
    }
    // Seeded noise: the same run, chunked differently, gives the same outcomes.
    assert_eq!(run(7), s);
}

#[test]
fn road_rejects_fractions_outside_the_open_interval() {
    let config = RoadConfig {
        fractions: vec![0.5, 1.0],
        ..RoadConfig::default()
    };
    let err = road_scores(
        &toy,
        &image(),
        [3, SIDE, SIDE],
        &oracle(),
        &[0],
        &[1.0],
        0,
        &config,
        1,
        &Device::Cpu,
    );
    assert!(matches!(err, Err(MetricsError::BadInput(_))));
}

fn ramp(h: usize, w: usize) -> Vec<f32> {
    (0..3 * h * w)
        .map(|i| {
            let (c, p) = (i / (h * w), i % (h * w));
            let (r, col) = ((p / w) as f32, (p % w) as f32);
            0.1 + 0.02 * r + 0.03 * col + 0.1 * c as f32
        })
        .collect()
}

#[test]
fn imputation_reproduces_a_linear_image_inside() {
    let (h, w) = (12, 14);
    let removed: Vec<bool> = (0..h * w)
        .map(|p| (3..8).contains(&(p / w)) && (4..10).contains(&(p % w)))
        .collect();
    let expected = ramp(h, w);
    let mut image = expected.clone();
    for (i, v) in image.iter_mut().enumerate() {
        if removed[i % (h * w)] {
            *v = 0.0;
        }
    }
    impute_linear(&mut image, h, w, &removed, &ImputeConfig::default(), 0);
    let worst = image
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-5, "max error {worst}");
}

#[test]
fn imputed_pixels_are_the_weighted_mean_of_their_neighbours() {
    let (h, w) = (10, 9);
    // An irregular removal touching the border.
    let removed: Vec<bool> = (0..h * w).map(|p| (p * 7 + p / 3) % 5 < 2).collect();
    let original: Vec<f32> = (0..3 * h * w)
        .map(|i| ((i * 37) % 101) as f32 / 100.0)
        .collect();
    let mut image = original.clone();
    impute_linear(&mut image, h, w, &removed, &ImputeConfig::default(), 0);
    for c in 0..3 {
        let x = &image[c * h * w..(c + 1) * h * w];
        for p in 0..h * w {
            let at = c * h * w + p;
            if !removed[p] {
                assert_eq!(image[at], original[at], "kept pixel {p} changed");
                continue;
            }
            let (r, col) = ((p / w) as isize, (p % w) as isize);
            let (mut sum, mut weight) = (0.0f64, 0.0f64);
            for dr in -1..=1isize {
                for dc in -1..=1isize {
                    let (nr, nc) = (r + dr, col + dc);
                    if (dr, dc) == (0, 0)
                        || nr < 0
                        || nc < 0
                        || nr >= h as isize
                        || nc >= w as isize
                    {
                        continue;
                    }
                    let wgt = if dr == 0 || dc == 0 {
                        1.0 / 6.0
                    } else {
                        1.0 / 12.0
                    };
                    sum += wgt * x[nr as usize * w + nc as usize] as f64;
                    weight += wgt;
                }
            }
            assert!((x[p] as f64 - sum / weight).abs() < 1e-4, "pixel {p}");
        }
    }
}

#[test]
fn imputation_noise_repeats_with_its_seed() {
    let (h, w) = (8, 8);
    let removed: Vec<bool> = (0..h * w).map(|p| p % 3 == 0).collect();
    let config = ImputeConfig {
        noise_std: [0.01; 3],
        ..ImputeConfig::default()
    };
    let run = |seed| {
        let mut image = ramp(h, w);
        impute_linear(&mut image, h, w, &removed, &config, seed);
        image
    };
    assert_eq!(run(5), run(5));
    let (a, b) = (run(5), run(6));
    assert_ne!(a, b);
    let clean = {
        let mut image = ramp(h, w);
        impute_linear(&mut image, h, w, &removed, &ImputeConfig::default(), 5);
        image
    };
    let spread = a
        .iter()
        .zip(&clean)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(spread > 1e-4 && spread < 0.06, "noise magnitude {spread}");
}
