//! Loading weights from files and memory, with torchvision and timm names, and the errors for
//! missing, mis-shaped and unreadable weights.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use tame_backbones::synthetic::{synthetic_uniform, SyntheticWeights};
use tame_backbones::weights::{load_backbone, NamedTensors, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode};

/// Synthetic weights that also record every (name, tensor) the network asked for.
#[derive(Default)]
struct Recording(Mutex<Vec<(String, Tensor)>>);

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = SyntheticWeights.get(s, name, h, dtype, dev)?;
        self.0.lock().unwrap().push((name.to_string(), t.clone()));
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        SyntheticWeights.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Every parameter of `kind` under its torchvision name, with synthetic values.
fn torchvision_tensors(kind: BackboneKind) -> Vec<(String, Tensor)> {
    let recording = std::sync::Arc::new(Recording::default());
    struct Shared(std::sync::Arc<Recording>);
    impl SimpleBackend for Shared {
        fn get(
            &self,
            s: Shape,
            n: &str,
            h: candle_nn::Init,
            d: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, n, h, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(recording.clone())), DType::F32, Device::Cpu);
    kind.build(vb).unwrap();
    let tensors = recording.0.lock().unwrap().clone();
    tensors
}

fn small_image() -> Tensor {
    let v: Vec<f32> = synthetic_uniform("weights-test", 3 * 32 * 32)
        .into_iter()
        .map(|u| u as f32)
        .collect();
    Tensor::from_vec(v, (1, 3, 32, 32), &Device::Cpu).unwrap()
}

fn logits(net: &dyn Backbone) -> Vec<f32> {
    let request = net.tap_request(&[], true).unwrap();
    let out = net.forward(&small_image(), &request, Mode::Eval).unwrap();
    out.logits
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn build(
    kind: BackboneKind,
    named: NamedTensors,
) -> Result<Box<dyn Backbone>, tame_backbones::BackboneError> {
    kind.build(VarBuilder::from_backend(
        Box::new(named),
        DType::F32,
        Device::Cpu,
    ))
}

#[test]
fn safetensors_file_with_torchvision_names_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet50.safetensors");
    let tensors: HashMap<String, Tensor> = torchvision_tensors(BackboneKind::ResNet50)
        .into_iter()
        .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();

    let from_file = load_backbone(
        BackboneKind::ResNet50,
        &WeightsSpec::File(path),
        &Device::Cpu,
    )
    .unwrap();
    let synthetic = load_backbone(
        BackboneKind::ResNet50,
        &WeightsSpec::Synthetic,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(logits(from_file.as_ref()), logits(synthetic.as_ref()));
}

#[test]
fn timm_vgg16_names_are_mapped_to_torchvision() {
    // timm's vgg16.tv_in1k: the classifier as convolutions under other names, and a
    // DataParallel prefix on top for good measure.
    let timm: Vec<(String, Tensor)> = torchvision_tensors(BackboneKind::Vgg16)
        .into_iter()
        .map(|(name, t)| match name.as_str() {
            "classifier.0.weight" => (
                "pre_logits.fc1.weight".into(),
                t.reshape((4096, 512, 7, 7)).unwrap(),
            ),
            "classifier.0.bias" => ("pre_logits.fc1.bias".into(), t),
            "classifier.3.weight" => (
                "pre_logits.fc2.weight".into(),
                t.reshape((4096, 4096, 1, 1)).unwrap(),
            ),
            "classifier.3.bias" => ("pre_logits.fc2.bias".into(), t),
            "classifier.6.weight" => ("head.fc.weight".into(), t),
            "classifier.6.bias" => ("head.fc.bias".into(), t),
            _ => (format!("module.{name}"), t),
        })
        .collect();
    let named = NamedTensors::new("timm".into(), timm, BackboneKind::Vgg16).unwrap();
    let from_timm = build(BackboneKind::Vgg16, named).unwrap();
    let synthetic =
        load_backbone(BackboneKind::Vgg16, &WeightsSpec::Synthetic, &Device::Cpu).unwrap();
    assert_eq!(logits(from_timm.as_ref()), logits(synthetic.as_ref()));
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let mut tensors = torchvision_tensors(BackboneKind::ResNet50);
    tensors.retain(|(n, _)| n != "layer3.1.bn2.running_var");
    let err = build(
        BackboneKind::ResNet50,
        NamedTensors::new("w.safetensors".into(), tensors, BackboneKind::ResNet50).unwrap(),
    )
    .err()
    .expect("a missing tensor is an error")
    .to_string();
    assert!(
        err.contains("w.safetensors") && err.contains("`layer3.1.bn2.running_var` is missing"),
        "{err}"
    );

    let mut tensors = torchvision_tensors(BackboneKind::ResNet50);
    for (name, t) in tensors.iter_mut() {
        if name == "fc.weight" {
            *t = Tensor::zeros((10, 2048), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let err = build(
        BackboneKind::ResNet50,
        NamedTensors::new("w.pth".into(), tensors, BackboneKind::ResNet50).unwrap(),
    )
    .err()
    .expect("a mis-shaped tensor is an error")
    .to_string();
    assert!(
        err.contains("`fc.weight` has shape [10, 2048], the model needs [1000, 2048]"),
        "{err}"
    );
}

#[test]
fn unreadable_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
    let unknown = dir.path().join("weights.onnx");
    std::fs::write(&unknown, b"whatever").unwrap();
    let missing = dir.path().join("missing.safetensors");
    for (path, expected) in [
        (&corrupt, "not a readable safetensors file"),
        (&unknown, "unknown weights format"),
        (&missing, "no such file"),
    ] {
        let err = load_backbone(
            BackboneKind::Vgg16,
            &WeightsSpec::File(path.clone()),
            &Device::Cpu,
        )
        .err()
        .expect("bad weights are an error")
        .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains(expected),
            "{err}"
        );
    }
}

#[test]
fn weights_spec_parses_hub_and_files() {
    assert_eq!(
        "hub:timm/vgg16.tv_in1k".parse::<WeightsSpec>().unwrap(),
        WeightsSpec::Hub("timm/vgg16.tv_in1k".into())
    );
    assert_eq!(
        "synthetic".parse::<WeightsSpec>().unwrap(),
        WeightsSpec::Synthetic
    );
    assert_eq!(
        "a/b.pth".parse::<WeightsSpec>().unwrap(),
        WeightsSpec::File("a/b.pth".into())
    );
    assert!("hub:nonsense".parse::<WeightsSpec>().is_err());
}

#[test]
fn pytorch_files_in_both_formats_are_read_through_the_same_loader() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tame-pth/tests/fixtures");
    for file in ["state_dict.legacy.pth", "state_dict.zip.pth"] {
        let path = std::path::Path::new(fixtures).join(file);
        let named = NamedTensors::from_file(&path, BackboneKind::ResNet50, &Device::Cpu).unwrap();
        let weight = named
            .get(
                (4, 3, 3, 3).into(),
                "conv.weight",
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(weight.dims(), &[4, 3, 3, 3]);
        let err = named
            .get(
                (8,).into(),
                "bn.running_var",
                candle_nn::Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(file) && err.contains("has shape [4], the model needs [8]"),
            "{err}"
        );
    }
    // A truncated file is an error naming it, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.pth");
    let bytes =
        std::fs::read(std::path::Path::new(fixtures).join("state_dict.legacy.pth")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_backbone(
        BackboneKind::ResNet50,
        &WeightsSpec::File(truncated.clone()),
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("truncated.pth"), "{err}");
}

#[test]
fn unknown_taps_are_errors_listing_the_valid_names() {
    let net = load_backbone(
        BackboneKind::ResNet50,
        &WeightsSpec::Synthetic,
        &Device::Cpu,
    )
    .unwrap();
    let err = net
        .tap_request(&["layer5".into()], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown tap `layer5`") && err.contains("layer4.2.relu_2"),
        "{err}"
    );
}

#[test]
fn a_pass_for_early_taps_stops_early_and_train_mode_dropout_is_seeded() {
    let net = load_backbone(BackboneKind::Vgg16, &WeightsSpec::Synthetic, &Device::Cpu).unwrap();
    let early = net.tap_request(&["features.4".into()], false).unwrap();
    let out = net.forward(&small_image(), &early, Mode::Train).unwrap();
    assert!(out.logits.is_none());
    assert_eq!(out.taps[0].dims(), &[1, 64, 16, 16]);

    // Dropout: about half the units of `classifier.2` are zero, the rest doubled; the same
    // seed gives the same mask.
    let request = net
        .tap_request(&["classifier.1".into(), "classifier.2".into()], false)
        .unwrap();
    let run = |seed| {
        net.reseed(seed);
        let out = net.forward(&small_image(), &request, Mode::Train).unwrap();
        let before: Vec<f32> = out.taps[0].flatten_all().unwrap().to_vec1().unwrap();
        let after: Vec<f32> = out.taps[1].flatten_all().unwrap().to_vec1().unwrap();
        (before, after)
    };
    let (before, after) = run(7);
    let active: Vec<(f32, f32)> = before
        .iter()
        .copied()
        .zip(after.iter().copied())
        .filter(|(b, _)| *b > 0.0)
        .collect();
    let dropped = active.iter().filter(|(_, a)| *a == 0.0).count() as f64 / active.len() as f64;
    assert!((0.4..0.6).contains(&dropped), "dropped fraction {dropped}");
    assert!(active.iter().all(|(b, a)| *a == 0.0 || *a == 2.0 * b));
    assert_eq!(run(7).1, after);
    assert_ne!(run(8).1, after);
}
