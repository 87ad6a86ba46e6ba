//! Synthetic backbones and mechanisms, and lists of the committed sample photos.
#![allow(dead_code)]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tame_am::{AmConfig, AttentionMechanism, CheckpointMeta, TapShape, Version};
use tame_backbones::synthetic::synthetic_values;
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Precision};
use tame_data::{ImageList, Loader, LoaderConfig};
use tame_train::{BackboneMode, RunInputs, TrainConfig};

/// The committed free-licence photos (`tests/photos/`).
pub const SAMPLE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/photos");

/// Sample photos with a class each (arbitrary: the backbones have synthetic weights).
pub const IMAGES: [(&str, u32); 4] = [
    ("coffee.jpg", 967),
    ("astronaut.jpg", 834),
    ("rocket.jpg", 812),
    ("chelsea_small.jpg", 285),
];

pub fn backbone(kind: BackboneKind) -> Box<dyn Backbone> {
    load_backbone(kind, &WeightsSpec::Synthetic, &Device::Cpu).unwrap()
}

pub fn taps(kind: BackboneKind) -> (Vec<String>, Vec<TapShape>) {
    match kind {
        BackboneKind::Vgg16 => (
            vec![
                "features.16".into(),
                "features.23".into(),
                "features.30".into(),
            ],
            vec![
                TapShape::new(256, 28, 28),
                TapShape::new(512, 14, 14),
                TapShape::new(512, 7, 7),
            ],
        ),
        _ => (
            vec!["layer2".into(), "layer3".into(), "layer4".into()],
            vec![
                TapShape::new(512, 28, 28),
                TapShape::new(1024, 14, 14),
                TapShape::new(2048, 7, 7),
            ],
        ),
    }
}

/// Every tensor filled by the synthetic formula, as `load_synthetic(am)` does in PyTorch.
pub fn synthetic_am(config: &AmConfig) -> AttentionMechanism {
    synthetic_am_in(config, DType::F32)
}

/// [`synthetic_am`] in `dtype`.
pub fn synthetic_am_in(config: &AmConfig, dtype: DType) -> AttentionMechanism {
    let dev = Device::Cpu;
    let tensors = config.state_layout().into_iter().map(|(name, shape)| {
        let t = if name.ends_with("num_batches_tracked") {
            Tensor::new(0i64, &dev).unwrap()
        } else {
            Tensor::from_vec(synthetic_values(&name, &shape), shape, &dev).unwrap()
        };
        (name, t)
    });
    AttentionMechanism::from_tensors(config, tensors, dtype, &dev).unwrap()
}

/// The evaluation crops (lossless PNG, written by `xtask/fixtures/make_train_fixtures.py`) of
/// [`IMAGES`], the images of the loop-parity fixtures: the reference decodes the same pixels
/// (JPEG decoders differ by a level here and there).
pub const PARITY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
pub const PARITY_IMAGES: [(&str, u32); 4] = [
    ("coffee.eval.png", 967),
    ("astronaut.eval.png", 834),
    ("rocket.eval.png", 812),
    ("chelsea_small.eval.png", 285),
];

/// A loader of the first `count` sample images.
pub fn loader(count: usize, batch: usize, shuffle: bool, augment: bool, seed: u64) -> Loader {
    list_loader(&IMAGES[..count], SAMPLE_DIR, batch, shuffle, augment, seed)
}

/// The loop-parity images in order, used as they are (224x224).
pub fn parity_loader(batch: usize) -> Loader {
    list_loader(&PARITY_IMAGES, PARITY_DIR, batch, false, false, 0)
}

pub fn list_loader(
    images: &[(&str, u32)],
    dir: &str,
    batch: usize,
    shuffle: bool,
    augment: bool,
    seed: u64,
) -> Loader {
    let text: String = images.iter().map(|(f, y)| format!("{f} {y}\n")).collect();
    let list = ImageList::parse(&text, "samples.txt").unwrap();
    let config = LoaderConfig {
        batch_size: batch,
        workers: 2,
        prefetch: 2,
        seed,
        shuffle,
        augmentation: if augment {
            tame_data::Augmentation::Reference
        } else {
            tame_data::Augmentation::None
        },
        preprocessing: tame_data::Preprocessing::IMAGENET,
        strict: true,
        max_image_side: tame_data::DEFAULT_MAX_IMAGE_SIDE,
    };
    Loader::new(list, dir, config).unwrap()
}

pub fn config(
    kind: BackboneKind,
    epochs: u64,
    batch: usize,
    max_lr: f64,
    mode: BackboneMode,
) -> TrainConfig {
    TrainConfig {
        backbone: kind.name().into(),
        taps: taps(kind).0,
        epochs,
        batch_size: batch,
        max_lr,
        weight_decay: 5e-4,
        seed: 7,
        per_sample_masks: false,
        backbone_mode: mode,
        precision: Precision::F32,
        inputs: RunInputs::default(),
    }
}

pub fn meta(kind: BackboneKind) -> CheckpointMeta {
    let (names, shapes) = taps(kind);
    CheckpointMeta {
        backbone: kind.name().into(),
        taps: names,
        tap_shapes: shapes,
        version: Version::Tame,
        epoch: 0,
        global_step: 0,
        config: serde_json::Value::Null,
        tensors_sha256: None,
    }
}

pub fn am_config(kind: BackboneKind) -> AmConfig {
    AmConfig::new(Version::Tame, taps(kind).1).unwrap()
}

/// Rows of a `train_log.csv` (header checked), as numbers.
pub fn read_log(path: &Path) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,step,lr,loss,ce,area,smoothness,top1,top5")
    );
    lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}
