//! Parity with a PyTorch mechanism that follows the reference code
//! (`xtask/fixtures/make_am_fixtures.py`). Tolerance: every sampled value within
//! 1e-4 x (the max-abs of the PyTorch tensor).

mod common;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tame_am::{AmConfig, AttentionMechanism, Version};

const TOL: f64 = 1e-4;

fn fixtures() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/am_parity.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn case_config(case: &Value) -> AmConfig {
    let version: Version = case["version"].as_str().unwrap_or("TAME").parse().unwrap();
    let taps: Vec<(usize, usize, usize)> = case["taps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let d: Vec<usize> = t
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            (d[0], d[1], d[2])
        })
        .collect();
    common::config(version, &taps)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Compares sampled values of `ours` with PyTorch's, relative to PyTorch's max-abs.
fn assert_sampled(what: &str, ours: &Tensor, idx: &[usize], expected: &Value, max_abs: f64) {
    let ours = ours
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let want = floats(expected);
    assert_eq!(idx.len(), want.len());
    let scale = max_abs.max(1e-12);
    let worst = idx
        .iter()
        .zip(&want)
        .map(|(&i, w)| (ours[i] - w).abs() / scale)
        .fold(0.0f64, f64::max);
    assert!(
        worst <= TOL,
        "{what}: worst relative error {worst:e} > {TOL:e}"
    );
}

fn check_case(name: &str, case: &Value) {
    let config = case_config(case);
    let batch = case["batch"].as_u64().unwrap() as usize;
    let am = common::synthetic_am(&config, DType::F32);
    let taps = common::synthetic_taps(&config, batch, DType::F32);
    let idx = indices(&case["c_indices"]);
    let s = config.side();

    let c_eval = am.forward(&taps, false).unwrap();
    assert_eq!(c_eval.dims(), [batch, 1000, s, s]);
    let e = &case["c_eval"];
    assert_sampled(
        &format!("{name} eval c"),
        &c_eval,
        &idx,
        &e["values"],
        e["max_abs"].as_f64().unwrap(),
    );

    let c_train = am.forward(&taps, true).unwrap();
    let t = &case["c_train"];
    assert_sampled(
        &format!("{name} train c"),
        &c_train,
        &idx,
        &t["values"],
        t["max_abs"].as_f64().unwrap(),
    );

    let state: std::collections::HashMap<_, _> = am.state_dict().unwrap().into_iter().collect();
    let running = case["running"].as_object().unwrap();
    assert_eq!(
        running.len(),
        state
            .keys()
            .filter(|k| k.contains(".bns.") && !k.ends_with("weight") && !k.ends_with("bias"))
            .count()
    );
    for (buf, want) in running {
        let ours = &state[buf];
        let values = floats(&want["values"]);
        let scale = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert_sampled(
            &format!("{name} {buf}"),
            ours,
            &indices(&want["indices"]),
            &want["values"],
            scale,
        );
    }
}

#[test]
fn vgg16_taps_match_pytorch_in_eval_and_train_mode() {
    check_case("vgg16_TAME", &fixtures()["vgg16_TAME"]);
}

#[test]
fn resnet50_taps_match_pytorch_in_eval_and_train_mode() {
    check_case("resnet50_TAME", &fixtures()["resnet50_TAME"]);
}

#[test]
fn all_four_versions_match_pytorch_on_small_taps() {
    let fx = fixtures();
    for v in Version::ALL {
        let name = format!("small_{}", v.name());
        let case = &fx[&name];
        assert_eq!(case_config(case).version(), v);
        check_case(&name, case);
    }
}

#[test]
fn reference_pytorch_checkpoint_loads_and_matches() {
    let fx = fixtures();
    let case = &fx["reference_checkpoint"];
    let config = case_config(case);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reference_epoch_1.pt"
    );
    let loaded = AttentionMechanism::load(path, &config, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.epoch, Some(1));
    assert_eq!(loaded.global_step, Some(7));
    assert!(loaded.meta.is_none());
    let state: std::collections::HashMap<_, _> =
        loaded.am.state_dict().unwrap().into_iter().collect();
    let tracked = state["attn.bns.0.num_batches_tracked"]
        .to_scalar::<i64>()
        .unwrap();
    assert_eq!(tracked, 1);

    let taps = common::synthetic_taps(&config, 2, DType::F32);
    let c = loaded.am.forward(&taps, false).unwrap();
    let e = &case["c_eval"];
    let idx = indices(&case["c_indices"]);
    assert_sampled(
        "reference checkpoint",
        &c,
        &idx,
        &e["values"],
        e["max_abs"].as_f64().unwrap(),
    );
}
