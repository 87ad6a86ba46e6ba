//! A training step copies little between the host and the device: on the portable path (the
//! code a GPU runs) it uploads only label-sized index lists and downloads its numbers once.

mod common;

use candle_core::{Device, Tensor};
use tame_backbones::BackboneKind;
use tame_ops::host::copies;
use tame_ops::{with_kernels, Kernels};
use tame_train::{BackboneMode, Trainer};

use common::*;

#[test]
fn a_training_step_downloads_once_and_uploads_only_label_lists() {
    // VGG-16 in train mode: its dropout layers draw masks too.
    let kind = BackboneKind::Vgg16;
    let backbone = backbone(kind);
    let images = Tensor::rand(0f32, 1f32, (2, 3, 224, 224), &Device::Cpu).unwrap();
    for per_sample_masks in [false, true] {
        let mut config = config(kind, 1, 2, 1e-2, BackboneMode::Reference);
        config.per_sample_masks = per_sample_masks;
        let am = synthetic_am(&am_config(kind));
        let mut trainer = Trainer::new(backbone.as_ref(), am, config, 4).unwrap();
        let before = copies();
        with_kernels(Kernels::Portable, || {
            trainer.step(&images, &[3, 999]).unwrap()
        });
        let made = copies() - before;
        // The mechanism's class index, the loss's labels, the labels to rank the logits
        // by, and with the batch's labels as masks each image's own map.
        assert!(made.uploads <= 4, "{per_sample_masks}: {made:?}");
        assert_eq!(made.downloads, 1, "{per_sample_masks}: {made:?}");
    }
}
