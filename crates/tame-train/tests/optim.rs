//! SGD and OneCycle against PyTorch's own `torch.optim.SGD` + `OneCycleLR`
//! (fixture: `xtask/fixtures/make_train_fixtures.py`), in float64.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;
use tame_backbones::synthetic::synthetic_uniform;
use tame_train::{OneCycle, ParamGroup, Sgd};

fn fixture() -> Value {
    let text = include_str!("fixtures/optim.json");
    serde_json::from_str(text).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

#[test]
fn one_cycle_matches_pytorch() {
    let f = fixture();
    for (total, rows) in f["schedules"].as_object().unwrap() {
        let total: u64 = total.parse().unwrap();
        let schedule = OneCycle::new(vec![1e-3, 2e-3], total).unwrap();
        for (step, row) in rows.as_array().unwrap().iter().enumerate() {
            let want: Vec<f64> = serde_json::from_value(row.clone()).unwrap();
            let (lrs, momentum) = schedule.at(step as u64);
            for (got, want) in [lrs[0], lrs[1], momentum].iter().zip(&want) {
                assert!(
                    close(*got, *want, 1e-12),
                    "total {total}, step {step}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn one_cycle_shape() {
    let s = OneCycle::new(vec![1.0], 100).unwrap();
    assert!(close(s.at(0).0[0], 1.0 / 25.0, 1e-12));
    assert!(close(s.at(0).1, 0.95, 1e-12));
    assert!(close(s.at(99).0[0], 1.0 / 25.0 / 1e4, 1e-9));
    assert!(close(s.at(99).1, 0.95, 1e-12));
    // The peak is at step pct_start * total - 1 = 29.
    assert!(close(s.at(29).0[0], 1.0, 1e-12));
    assert!(close(s.at(29).1, 0.85, 1e-12));
    assert!(OneCycle::new(vec![1.0], 0).is_err());
}

#[test]
fn sgd_with_one_cycle_matches_pytorch() {
    let f = fixture();
    let dev = Device::Cpu;
    let mut params = BTreeMap::new();
    for (name, shape) in f["shapes"].as_object().unwrap() {
        let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
        let n = shape.iter().product();
        let v: Vec<f64> = synthetic_uniform(name, n)
            .into_iter()
            .map(|u| 2.0 * u - 1.0)
            .collect();
        let t = Tensor::from_vec(v, shape, &dev).unwrap();
        params.insert(name.clone(), Var::from_tensor(&t).unwrap());
    }
    // The fixture's parameter order within each group: insertion order of its dict.
    let order = ["w.a.weight", "w.b.weight", "b.a.bias", "b.b.bias"];
    let group = |filter: &str| -> Vec<(String, Var)> {
        order
            .iter()
            .filter(|n| n.contains(filter))
            .map(|n| (n.to_string(), params[*n].clone()))
            .collect()
    };
    let steps = f["steps"].as_array().unwrap();
    let schedule = OneCycle::new(vec![0.1, 0.2], steps.len() as u64).unwrap();
    let mut sgd = Sgd::new(
        vec![
            ParamGroup {
                name: "weights".into(),
                params: group("weight"),
                lr: 0.0,
                weight_decay: 5e-4,
                momentum: 0.0,
            },
            ParamGroup {
                name: "biases".into(),
                params: group("bias"),
                lr: 0.0,
                weight_decay: 0.0,
                momentum: 0.0,
            },
        ],
        true,
    );
    for (i, step) in steps.iter().enumerate() {
        let (lrs, momentum) = schedule.at(i as u64);
        let want_lrs: Vec<f64> = serde_json::from_value(step["lrs"].clone()).unwrap();
        assert!(close(lrs[0], want_lrs[0], 1e-12) && close(lrs[1], want_lrs[1], 1e-12));
        assert!(close(momentum, step["momentum"].as_f64().unwrap(), 1e-12));
        let mut loss = Tensor::new(0f64, &dev).unwrap();
        for v in params.values() {
            let p = v.as_tensor();
            let term = ((p * 3.0).unwrap().sin().unwrap() + (p.sqr().unwrap() * 0.5).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            loss = (loss + term).unwrap();
        }
        let grads = loss.backward().unwrap();
        sgd.set_hyper(&lrs, Some(momentum));
        sgd.step(&grads).unwrap();
        for (name, v) in &params {
            let got = v.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let want: Vec<f64> = serde_json::from_value(step["params"][name].clone()).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(close(*g, *w, 1e-10), "step {i}, {name}: {g} vs {w}");
            }
        }
    }
    assert_eq!(sgd.momentum_buffers().len(), 4);
    assert_eq!(params["w.a.weight"].dtype(), DType::F64);
}
