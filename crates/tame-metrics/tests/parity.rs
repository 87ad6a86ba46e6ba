//! AD and IC equal a PyTorch reference evaluation loop (one image at a time, written from
//! TAME-SPEC section 6), and the 50 %/15 % selection equals the reference's on maps with many
//! ties. Expected values: `python xtask/fixtures/make_eval_fixtures.py`.
//!
//! Backbone: ResNet-50 with the synthetic weights, its `fc` scaled by the fixture's factor so
//! that the softmax is not saturated; mechanism: TAME with synthetic weights on layer2,
//! layer3, layer4; four sample images, read as the reference's transformed crops (lossless PNGs
//! the script writes) so that both sides see the same pixels. Tolerances: AD and IC within 0.01 points, each Y and O
//! within 1e-3.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use tame_am::{AmConfig, AttentionMechanism, TapShape, Version};
use tame_backbones::synthetic::{synthetic_uniform, synthetic_values, ScaledSyntheticWeights};
use tame_backbones::BackboneKind;
use tame_backbones::Mode;
use tame_data::{load_rgb, to_chw_f32, IMAGE_LEN};
use tame_metrics::{
    ad_ic_scores, keep_fraction, normalize_maps, AdIcTotals, EvalConfig, Evaluator, Explainer,
    TameExplainer,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixtures() -> Value {
    let path = format!("{FIXTURES}/eval_parity.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn synthetic_am(config: &AmConfig) -> AttentionMechanism {
    let dev = Device::Cpu;
    let tensors = config.state_layout().into_iter().map(|(name, shape)| {
        let t = if name.ends_with("num_batches_tracked") {
            Tensor::new(0i64, &dev).unwrap()
        } else {
            Tensor::from_vec(synthetic_values(&name, &shape), shape, &dev).unwrap()
        };
        (name, t)
    });
    AttentionMechanism::from_tensors(config, tensors, DType::F32, &dev).unwrap()
}

#[test]
fn ad_ic_equal_the_reference_loop() {
    let fx = fixtures();
    let eval = &fx["evaluation"];
    let scale = eval["fc_scale"].as_f64().unwrap() as f32;
    let backbone = BackboneKind::ResNet50
        .build(VarBuilder::from_backend(
            Box::new(ScaledSyntheticWeights {
                prefix: "fc.",
                factor: f64::from(scale),
            }),
            DType::F32,
            Device::Cpu,
        ))
        .unwrap();
    let taps: Vec<String> = eval["taps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let shapes = vec![
        TapShape::new(512, 28, 28),
        TapShape::new(1024, 14, 14),
        TapShape::new(2048, 7, 7),
    ];
    let am = synthetic_am(&AmConfig::new(Version::Tame, shapes).unwrap());
    let explainer = TameExplainer::new(&am, taps.clone()).unwrap();
    let evaluator = Evaluator::new(backbone.as_ref(), &explainer, EvalConfig::default()).unwrap();

    let rows = eval["images"].as_array().unwrap();
    let mut pixels = vec![0f32; rows.len() * IMAGE_LEN];
    for (row, out) in rows.iter().zip(pixels.chunks_mut(IMAGE_LEN)) {
        let path = format!("{FIXTURES}/{}", row["crop"].as_str().unwrap());
        to_chw_f32(&load_rgb(&path).unwrap(), out);
    }
    let images = Tensor::from_vec(pixels.clone(), (rows.len(), 3, 224, 224), &Device::Cpu).unwrap();
    let scores = evaluator.evaluate(&images, 0).unwrap();

    // The explained class, Y, the class's map c, and O at 100 % (the whole map) equal the
    // reference's: the backbone and the mechanism agree.
    let request = backbone.tap_request(&taps, false).unwrap();
    let features = backbone
        .forward(&images, &request, Mode::Eval)
        .unwrap()
        .taps;
    let classes: Vec<u32> = scores.iter().map(|s| s.class).collect();
    let maps = explainer.explain(&images, &features, &classes).unwrap();
    let mut reference_maps = Vec::new();
    for (i, (s, row)) in scores.iter().zip(rows).enumerate() {
        let name = row["image"].as_str().unwrap();
        assert_eq!(
            s.class as u64,
            row["class"].as_u64().unwrap(),
            "{name}: class"
        );
        let y = row["y"].as_f64().unwrap();
        assert!((s.y - y).abs() < 1e-3, "{name}: Y {} vs {y}", s.y);
        let o = row["o"][0].as_f64().unwrap();
        let got = s.ad_ic.expect("AD/IC is selected by default").o[0];
        assert!((got - o).abs() < 1e-3, "{name}: O[0] {got} vs {o}");
        let c: Vec<f32> = row["c"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let ours = maps
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let scale = c.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(&c)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-4 * scale,
            "{name}: map c off by {worst} (max {scale})"
        );
        reference_maps.push(Tensor::from_vec(c, (28, 28), &Device::Cpu).unwrap());
    }

    // The 50 % and 15 % levels keep a fraction of the map's pixels: the kept set flips where
    // pixels are within float32 rounding of the threshold, which is not a disagreement. So
    // they are checked on the reference's own map c: the same normalisation, selection and
    // masked forward give the same O, AD and IC.
    let reference_maps =
        normalize_maps(&Tensor::stack(&reference_maps, 0).unwrap(), 224, 224).unwrap();
    let logits = backbone.tap_request(&[], true).unwrap();
    let classify = |x: &Tensor| -> tame_metrics::Result<Tensor> {
        Ok(backbone.forward(x, &logits, Mode::Eval)?.logits.unwrap())
    };
    let y: Vec<f64> = scores.iter().map(|s| s.y).collect();
    let on_reference_maps = ad_ic_scores(
        &classify,
        &pixels,
        [3, 224, 224],
        &reference_maps
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        &classes,
        &y,
        rows.len(),
        &Device::Cpu,
    )
    .unwrap();
    let mut totals = AdIcTotals::default();
    for (s, row) in on_reference_maps.iter().zip(rows) {
        let name = row["image"].as_str().unwrap();
        for (level, o) in row["o"].as_array().unwrap().iter().enumerate() {
            let o = o.as_f64().unwrap();
            let got = s.o[level];
            assert!((got - o).abs() < 1e-3, "{name}: O[{level}] {got} vs {o}");
        }
        totals.add(s);
    }
    let report = totals.report();
    for level in 0..3 {
        let ad = eval["ad"][level].as_f64().unwrap();
        let ic = eval["ic"][level].as_f64().unwrap();
        assert!(
            (report.ad[level] - ad).abs() < 0.01,
            "AD[{level}] {} vs {ad}",
            report.ad[level]
        );
        assert!(
            (report.ic[level] - ic).abs() < 0.01,
            "IC[{level}] {} vs {ic}",
            report.ic[level]
        );
    }
}

#[test]
fn selection_with_many_ties_equals_the_reference() {
    let fx = fixtures();
    for case in fx["ties"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let levels = case["levels"].as_u64().unwrap() as f64;
        let keep = case["keep"].as_f64().unwrap();
        let mut map: Vec<f32> = synthetic_uniform(name, 224 * 224)
            .into_iter()
            .map(|u| ((u * levels).floor() / (levels - 1.0)) as f32)
            .collect();
        keep_fraction(&mut map, keep);
        let kept: Vec<bool> = map.iter().map(|&v| v != 0.0).collect();
        let bits: String = kept
            .chunks(8)
            .map(|byte| {
                let b = byte
                    .iter()
                    .enumerate()
                    .fold(0u8, |acc, (i, &k)| acc | ((k as u8) << (7 - i)));
                format!("{b:02x}")
            })
            .collect();
        let count = kept.iter().filter(|&&k| k).count();
        assert_eq!(
            count as u64,
            case["kept"].as_u64().unwrap(),
            "{name} at {keep}: count"
        );
        assert!(
            bits == case["bits"].as_str().unwrap(),
            "{name} at {keep}: kept set differs"
        );
    }
}
