//! Parity with the reference loss (`xtask/fixtures/make_loss_fixtures.py`, PyTorch float64):
//! values within 1e-5 relative in float32 and 1e-12 in float64; gradients of the total with
//! respect to the backbone logits and the map logits within 1e-10 (float64).

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;
use tame_backbones::synthetic::synthetic_uniform;
use tame_loss::{tame_loss, LossWeights, MaskSet};

const B: usize = 3;
const K: usize = 7;
const S: usize = 5;

fn fixtures() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/loss_parity.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn labels(fx: &Value) -> Vec<u32> {
    fx["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// `scale * u + shift` for the synthetic uniforms of `name`, as a float64 tensor.
fn synthetic(name: &str, shape: &[usize], scale: f64, shift: f64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = synthetic_uniform(name, n)
        .into_iter()
        .map(|u| scale * u + shift)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn assert_rel(what: &str, ours: f64, want: f64, tol: f64) {
    let err = (ours - want).abs() / want.abs().max(1e-30);
    assert!(
        err <= tol,
        "{what}: {ours} vs {want} (relative error {err:e} > {tol:e})"
    );
}

fn check(set: MaskSet, key: &str, dtype: DType) {
    let fx = fixtures();
    let want = &fx[key];
    let labels = labels(&fx);
    let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
    let z = Var::from_tensor(
        &synthetic("logits", &[B, K], 6.0, -3.0)
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let c = Var::from_tensor(
        &synthetic("maps", &[B, K, S, S], 8.0, -4.0)
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let a = candle_nn::ops::sigmoid(c.as_tensor()).unwrap();
    let masks = set.select(&a, &labels).unwrap();
    let shape: Vec<usize> = want["mask_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(masks.dims(), shape.as_slice());

    let parts = tame_loss(z.as_tensor(), &labels, &masks, &LossWeights::default()).unwrap();
    for (name, t) in [
        ("total", &parts.total),
        ("ce", &parts.ce),
        ("area", &parts.area),
        ("smoothness", &parts.smoothness),
    ] {
        assert_rel(
            &format!("{key} {name} {dtype:?}"),
            scalar(t),
            want[name].as_f64().unwrap(),
            tol,
        );
    }
    if dtype != DType::F64 {
        return;
    }
    let grads = parts.total.backward().unwrap();
    for (name, var) in [("grad_logits", &z), ("grad_maps", &c)] {
        let ours = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let want: Vec<f64> = want[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ours.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(o, w)| (o - w).abs() / scale)
            .fold(0.0, f64::max);
        assert!(
            worst <= 1e-10,
            "{key} {name}: worst relative error {worst:e}"
        );
    }
}

#[test]
fn reference_batch_label_masks_match_pytorch() {
    check(MaskSet::BatchLabels, "batch_labels", DType::F32);
    check(MaskSet::BatchLabels, "batch_labels", DType::F64);
}

#[test]
fn per_sample_masks_match_pytorch() {
    check(MaskSet::PerSample, "per_sample", DType::F32);
    check(MaskSet::PerSample, "per_sample", DType::F64);
}

#[test]
fn mask_set_classes_describe_the_selection() {
    let labels = [4, 1];
    assert_eq!(
        MaskSet::BatchLabels.classes(&labels),
        vec![vec![4, 1], vec![4, 1]]
    );
    assert_eq!(MaskSet::PerSample.classes(&labels), vec![vec![4], vec![1]]);
    assert_eq!(MaskSet::default(), MaskSet::BatchLabels);
}
