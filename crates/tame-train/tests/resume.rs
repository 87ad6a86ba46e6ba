//! Exact resumption, interruption, corrupt checkpoints and non-finite losses.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use tame_am::{AttentionMechanism, Version};
use tame_backbones::{Backbone, BackboneKind};
use tame_train::{
    find_latest_checkpoint, read_checkpoint, BackboneMode, StepObserver, StepRecord, StopReason,
    TrainError, Trainer,
};

use common::*;

const KIND: BackboneKind = BackboneKind::ResNet50;

/// Raises the stop flag after a given global step.
struct StopAfter<'a>(u64, &'a AtomicBool);

impl StepObserver for StopAfter<'_> {
    fn step(&mut self, r: &StepRecord) {
        if r.step == self.0 {
            self.1.store(true, Ordering::SeqCst);
        }
    }
}

/// Shuffled and augmented, so that resuming must reproduce the data order and draws too.
fn run(
    backbone: &dyn Backbone,
    dir: &Path,
    resume: Option<&Path>,
    stop_after: Option<u64>,
) -> StopReason {
    let loader = loader(4, 2, true, true, 3);
    let steps = loader.num_batches() as u64;
    let config = config(KIND, 2, 2, 1e-2, BackboneMode::Reference);
    let mut trainer = match resume {
        Some(path) => {
            let ckpt = read_checkpoint(path, &am_config(KIND), DType::F32, &Device::Cpu).unwrap();
            Trainer::resume(backbone, ckpt, config, steps, path).unwrap()
        }
        None => Trainer::new(backbone, synthetic_am(&am_config(KIND)), config, steps).unwrap(),
    };
    let stop = AtomicBool::new(false);
    let mut observer = StopAfter(stop_after.unwrap_or(0), &stop);
    trainer
        .run(&loader, dir, &meta(KIND), &mut observer, &stop)
        .unwrap()
        .reason
}

fn tensors(path: &Path) -> HashMap<String, Vec<u8>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let bytes = t
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (n, bytes)
        })
        .collect()
}

#[test]
fn interrupted_and_resumed_runs_end_bit_identical() {
    let backbone = backbone(KIND);
    let full = tempfile::tempdir().unwrap();
    assert_eq!(
        run(backbone.as_ref(), full.path(), None, None),
        StopReason::Finished
    );
    let reference = tensors(&full.path().join("epoch_2.safetensors"));
    assert!(reference
        .keys()
        .any(|k| k.starts_with("optimizer.momentum_buffer.")));

    // Stopped in the middle of epoch 2, resumed from the newest checkpoint.
    let split = tempfile::tempdir().unwrap();
    let reason = run(backbone.as_ref(), split.path(), None, Some(3));
    assert_eq!(reason, StopReason::Interrupted);
    let latest = find_latest_checkpoint(split.path())
        .unwrap()
        .latest
        .unwrap();
    assert_eq!(latest, split.path().join("interrupted.safetensors"));
    run(backbone.as_ref(), split.path(), Some(&latest), None);
    assert_eq!(
        tensors(&split.path().join("epoch_2.safetensors")),
        reference
    );
    assert_eq!(
        read_log(&split.path().join("train_log.csv")),
        read_log(&full.path().join("train_log.csv"))
    );

    // Stopped after epoch 1, resumed from its checkpoint.
    let after = tempfile::tempdir().unwrap();
    std::fs::copy(
        full.path().join("epoch_1.safetensors"),
        after.path().join("epoch_1.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        full.path().join("epoch_1.json"),
        after.path().join("epoch_1.json"),
    )
    .unwrap();
    run(
        backbone.as_ref(),
        after.path(),
        Some(&after.path().join("epoch_1.safetensors")),
        None,
    );
    assert_eq!(
        tensors(&after.path().join("epoch_2.safetensors")),
        reference
    );

    // The mechanism alone loads from a training checkpoint (optimizer state skipped).
    let loaded = AttentionMechanism::load(
        full.path().join("epoch_2.safetensors"),
        &am_config(KIND),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(loaded.epoch, Some(2));
    assert_eq!(loaded.global_step, Some(4));
}

#[test]
fn non_finite_loss_stops_naming_the_step() {
    let backbone = backbone(KIND);
    let config = am_config(KIND);
    // Loading refuses NaN weights: the bias becomes NaN after the mechanism is built.
    let am = synthetic_am(&config);
    let (_, bias) = am
        .parameters()
        .into_iter()
        .find(|(n, _)| n.ends_with("fuser.bias"))
        .unwrap();
    bias.set(&Tensor::full(f32::NAN, bias.dims(), &Device::Cpu).unwrap())
        .unwrap();
    let loader = loader(2, 2, false, false, 0);
    let mut trainer = Trainer::new(
        backbone.as_ref(),
        am,
        common::config(KIND, 1, 2, 1e-3, BackboneMode::Eval),
        1,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = trainer
        .run(
            &loader,
            dir.path(),
            &meta(KIND),
            &mut (),
            &AtomicBool::new(false),
        )
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                step: 1,
                epoch: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("step 1"));
    assert!(!dir.path().join("epoch_1.safetensors").exists());
}

/// A small mechanism and a checkpoint of it, without a backbone.
fn small_checkpoint(dir: &Path) -> (tame_am::AmConfig, std::path::PathBuf) {
    let config = tame_am::AmConfig::new(
        Version::Tame,
        vec![
            tame_am::TapShape::new(4, 6, 6),
            tame_am::TapShape::new(8, 3, 3),
        ],
    )
    .unwrap();
    let am = synthetic_am(&config);
    let buffers: Vec<(String, Tensor)> = am
        .parameters()
        .into_iter()
        .map(|(n, v)| {
            let group = if n.contains("weight") {
                "weights"
            } else {
                "biases"
            };
            (format!("{group}.{n}"), v.as_tensor().ones_like().unwrap())
        })
        .collect();
    let mut meta = meta(KIND);
    meta.tap_shapes = config.taps().to_vec();
    let state = tame_train::TrainState {
        epoch: 1,
        batches_done: 0,
        global_step: 2,
        run: serde_json::json!({}),
    };
    let path = dir.join("epoch_1.safetensors");
    tame_train::write_checkpoint(&path, &am, &buffers, &meta, &state).unwrap();
    (config, path)
}

fn refused(path: &Path, config: &tame_am::AmConfig) -> String {
    match read_checkpoint(path, config, DType::F32, &Device::Cpu) {
        Err(e @ TrainError::Checkpoint { .. }) => e.to_string(),
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(_) => panic!("{} was accepted", path.display()),
    }
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = small_checkpoint(dir.path());
    let ok = read_checkpoint(&path, &config, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ok.state.global_step, 2);
    assert_eq!(ok.momentum_buffers.len(), ok.am.parameters().len());

    // Truncated tensors.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(refused(&path, &config).contains("safetensors"));
    std::fs::write(&path, &bytes).unwrap();

    // A sidecar from another position (a half-written pair).
    let json = path.with_extension("json");
    let text = std::fs::read_to_string(&json).unwrap();
    std::fs::write(
        &json,
        text.replace("\"global_step\": 2", "\"global_step\": 3"),
    )
    .unwrap();
    assert!(refused(&path, &config).contains("half-written"));

    // No sidecar.
    std::fs::remove_file(&json).unwrap();
    assert!(refused(&path, &config).contains("sidecar"));
    std::fs::write(&json, &text).unwrap();

    // Another mechanism.
    let other = tame_am::AmConfig::new(
        Version::Tame,
        vec![
            tame_am::TapShape::new(4, 6, 6),
            tame_am::TapShape::new(16, 3, 3),
        ],
    )
    .unwrap();
    assert!(refused(&path, &other).contains("attn."));
    let noskip =
        tame_am::AmConfig::new(Version::NoSkipNoBatchNorm, config.taps().to_vec()).unwrap();
    assert!(refused(&path, &noskip).contains("version"));
}

#[test]
fn incomplete_momentum_buffers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = small_checkpoint(dir.path());
    let ckpt = read_checkpoint(&path, &config, DType::F32, &Device::Cpu).unwrap();
    let groups = |am: &AttentionMechanism| {
        vec![
            tame_train::ParamGroup {
                name: "weights".into(),
                params: am.weight_parameters(),
                lr: 0.1,
                weight_decay: 0.0,
                momentum: 0.9,
            },
            tame_train::ParamGroup {
                name: "biases".into(),
                params: am.bias_parameters(),
                lr: 0.1,
                weight_decay: 0.0,
                momentum: 0.9,
            },
        ]
    };
    let mut sgd = tame_train::Sgd::new(groups(&ckpt.am), true);
    assert!(sgd.set_momentum_buffers(&ckpt.momentum_buffers).is_ok());
    let missing = &ckpt.momentum_buffers[1..];
    let err = sgd.set_momentum_buffers(missing).unwrap_err();
    assert!(err.contains("no momentum buffer"), "{err}");
}
