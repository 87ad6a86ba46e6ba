//! Mixed precision: a backbone in bf16 (or f16) under an attention mechanism, a loss and an
//! optimizer that stay in f32, against the same run in f32 (synthetic backbones and
//! mechanism, two committed 224x224 photos).
//!
//! Tolerances, measured on the CPU in bf16:
//! - explanation maps (eval mode): the logit maps c of all 1000 classes, max |bf16 - f32| /
//!   max |f32| <= 3e-2, measured 6.1e-3 (VGG-16) and 9.3e-3 (ResNet-50); each map min-max
//!   normalised, as explanations are shown and scored, max |bf16 - f32| <= 0.2 (of the
//!   [0, 1] range), measured 0.031 and 0.074.
//! - one training step: the loss and each of its terms, |bf16 - f32| / |f32| <= 5e-2,
//!   measured at most 1.5e-3 (VGG-16 in the reference's train mode), 1.1e-2 (ResNet-50 in
//!   train mode) and 1.4e-2 (ResNet-50 in eval mode: the area term).
//!
//! The step's parameter update is not compared: its gradient crosses the masked pass through
//! every ReLU and pool of the backbone, where rounding moves it a lot (f32 against f64: the
//! updates differ by 0.24 % of their norm for VGG-16 and by 15 % for ResNet-50 in train
//! mode, whose batch statistics of two images amplify rounding).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{am_config, config, meta, parity_loader, synthetic_am};
use tame_backbones::weights::{load_backbone_in, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode, Precision};
use tame_train::{read_checkpoint, BackboneMode, StepRecord, TrainConfig, Trainer};

fn load(kind: BackboneKind, precision: Precision) -> Box<dyn Backbone> {
    load_backbone_in(kind, &WeightsSpec::Synthetic, &Device::Cpu, precision).unwrap()
}

/// The first two photos of the loop-parity fixtures, with their labels.
fn photos() -> (Tensor, Vec<u32>) {
    let batch = parity_loader(2).epoch(1).unwrap().next().unwrap().unwrap();
    let shape = tame_data::batch_shape(batch.len());
    let images = Tensor::from_vec(batch.images, shape, &Device::Cpu).unwrap();
    (images, batch.labels)
}

fn scalar(t: Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

/// max |got - want| / max |want|.
fn relative(got: &Tensor, want: &Tensor) -> f32 {
    let diff = scalar((got - want).unwrap().abs().unwrap().max_all().unwrap());
    diff / scalar(want.abs().unwrap().max_all().unwrap())
}

/// Each (S, S) map of `c` (B, K, S, S) min-max normalised to [0, 1].
fn normalised(c: &Tensor) -> Tensor {
    let (b, k, s, t) = c.dims4().unwrap();
    let flat = c.reshape((b, k, s * t)).unwrap();
    let low = flat.min_keepdim(2).unwrap();
    let range = (flat.max_keepdim(2).unwrap() - &low).unwrap();
    flat.broadcast_sub(&low)
        .unwrap()
        .broadcast_div(&range)
        .unwrap()
}

#[test]
fn bf16_explanation_maps_match_f32s() {
    let (images, _) = photos();
    for kind in [BackboneKind::Vgg16, BackboneKind::ResNet50] {
        let am = synthetic_am(&am_config(kind));
        let maps: Vec<Tensor> = [Precision::F32, Precision::Bf16]
            .into_iter()
            .map(|precision| {
                let net = load(kind, precision);
                let request = net.tap_request(&common::taps(kind).0, false).unwrap();
                let taps = net.forward(&images, &request, Mode::Eval).unwrap().taps;
                am.forward(&taps, false).unwrap()
            })
            .collect();
        let (want, got) = (&maps[0], &maps[1]);
        assert_eq!(got.dtype(), DType::F32);
        let error = relative(got, want);
        let shown = (normalised(got) - normalised(want)).unwrap();
        let shown = scalar(shown.abs().unwrap().max_all().unwrap());
        println!("{}: maps {error:.2e}, normalised {shown:.3}", kind.name());
        assert!(error <= 3e-2, "{}: maps {error:e}", kind.name());
        assert!(shown <= 0.2, "{}: normalised maps {shown}", kind.name());
    }
}

/// A trainer of the synthetic mechanism on `net` after one step on the photos.
fn one_step<'a>(
    net: &'a dyn Backbone,
    kind: BackboneKind,
    mode: BackboneMode,
    precision: Precision,
) -> (Trainer<'a>, StepRecord) {
    let (images, labels) = photos();
    let mut settings = config(kind, 1, 2, 1e-3, mode);
    settings.precision = precision;
    let am = synthetic_am(&am_config(kind));
    let mut trainer = Trainer::new(net, am, settings, 4).unwrap();
    let record = trainer.step(&images, &labels).unwrap();
    (trainer, record)
}

/// Every tensor of the mechanism's state and of the optimizer's is f32 (the batch norms'
/// step counters are integers).
fn assert_all_f32(trainer: &Trainer, what: &str) {
    for (name, t) in trainer.am().state_dict().unwrap() {
        if !name.ends_with("num_batches_tracked") {
            assert_eq!(t.dtype(), DType::F32, "{what}: {name}");
        }
    }
    let buffers = trainer.optimizer().momentum_buffers();
    assert!(!buffers.is_empty(), "{what}: no momentum buffers");
    for (name, t) in buffers {
        assert_eq!(t.dtype(), DType::F32, "{what}: momentum buffer {name}");
    }
}

#[test]
fn one_bf16_training_step_matches_f32s() {
    for (kind, mode) in [
        (BackboneKind::Vgg16, BackboneMode::Reference),
        (BackboneKind::ResNet50, BackboneMode::Reference),
        (BackboneKind::ResNet50, BackboneMode::Eval),
    ] {
        let records: Vec<StepRecord> = [Precision::F32, Precision::Bf16]
            .into_iter()
            .map(|precision| {
                let net = load(kind, precision);
                let (trainer, record) = one_step(net.as_ref(), kind, mode, precision);
                assert_all_f32(&trainer, &format!("{} {precision}", kind.name()));
                record
            })
            .collect();
        let (want, got) = (&records[0], &records[1]);
        let terms = [
            ("loss", got.loss, want.loss),
            ("ce", got.ce, want.ce),
            ("area", got.area, want.area),
            ("smoothness", got.smoothness, want.smoothness),
        ];
        for (term, got, want) in terms {
            let error = (got - want).abs() / want.abs();
            println!(
                "{} {mode:?} {term}: {got} vs {want} ({error:.2e})",
                kind.name()
            );
            assert!(error <= 5e-2, "{} {mode:?} {term}: {error:e}", kind.name());
        }
    }
}

#[test]
fn lower_precisions_leave_the_mechanism_and_optimizer_in_f32_and_are_recorded() {
    let kind = BackboneKind::ResNet50;
    let dir = tempfile::tempdir().unwrap();
    for precision in [Precision::Bf16, Precision::F16] {
        let net = load(kind, precision);
        let (trainer, record) = one_step(net.as_ref(), kind, BackboneMode::Eval, precision);
        assert!(record.loss.is_finite(), "{precision}: {}", record.loss);
        assert_all_f32(&trainer, precision.name());

        let path = dir.path().join(format!("{precision}.safetensors"));
        trainer.save(&path, &meta(kind)).unwrap();
        let sidecar = std::fs::read_to_string(path.with_extension("json")).unwrap();
        let sidecar: serde_json::Value = serde_json::from_str(&sidecar).unwrap();
        assert_eq!(sidecar["config"]["run"]["precision"], precision.name());
        let saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        for (name, t) in &saved {
            if name.starts_with("attn.") && !name.ends_with("num_batches_tracked")
                || name.starts_with("optimizer.momentum_buffer.")
            {
                assert_eq!(t.dtype(), DType::F32, "{precision}: saved {name}");
            }
        }

        // A resumed run must run in the precision it started in.
        let other = config(kind, 1, 2, 1e-3, BackboneMode::Eval);
        let checkpoint = read_checkpoint(&path, &am_config(kind), DType::F32, &Device::Cpu);
        let refused = Trainer::resume(net.as_ref(), checkpoint.unwrap(), other, 4, &path);
        let message = refused.err().expect("refused").to_string();
        assert!(
            message.contains(&format!("precision: \"{precision}\" then, \"f32\" now")),
            "{message}"
        );
    }
    // Run settings recorded before the option existed are f32's.
    let mut settings = serde_json::to_value(config(kind, 1, 2, 1e-3, BackboneMode::Eval)).unwrap();
    settings.as_object_mut().unwrap().remove("precision");
    let old: TrainConfig = serde_json::from_value(settings).unwrap();
    assert_eq!(old.precision, Precision::F32);
}
