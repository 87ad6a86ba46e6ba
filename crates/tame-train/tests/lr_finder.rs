//! The learning-rate range test: a dropout draw of its own for every batch, seeded, and a
//! non-finite loss named by its batch and learning rate.

mod common;

use std::sync::atomic::AtomicBool;

use tame_backbones::{Backbone, BackboneKind};
use tame_train::{lr_range_test, BackboneMode, LrTestConfig, LrTestOutcome, TrainError, Trainer};

use common::*;

fn range_test(
    backbone: &dyn Backbone,
    kind: BackboneKind,
    images: &[(&str, u32)],
    mode: BackboneMode,
    seed: u64,
    config: &LrTestConfig,
) -> LrTestOutcome {
    let loader = list_loader(images, SAMPLE_DIR, 1, false, false, 0);
    let mut train = common::config(kind, 1, 1, 1.0, mode);
    train.seed = seed;
    let am = synthetic_am(&am_config(kind));
    let mut trainer = Trainer::new(backbone, am, train, loader.num_batches() as u64).unwrap();
    lr_range_test(
        &mut trainer,
        &loader,
        config,
        &mut |_, _, _| {},
        &AtomicBool::new(false),
    )
    .unwrap()
}

/// One photo twice at a rate too small to move the mechanism: the two batches' losses differ
/// only through VGG-16's dropout. No smoothing (beta 0) and no early stop, so the curve
/// holds the raw losses.
#[test]
fn every_batch_draws_its_own_dropout_reproducibly() {
    let kind = BackboneKind::Vgg16;
    let vgg = backbone(kind);
    let images = [IMAGES[0], IMAGES[0]];
    let config = LrTestConfig {
        start_lr: 1e-30,
        end_lr: 1e-30,
        beta: 0.0,
        stop_factor: f64::INFINITY,
        ..LrTestConfig::default()
    };
    let run = |seed| {
        let outcome = range_test(
            vgg.as_ref(),
            kind,
            &images,
            BackboneMode::Reference,
            seed,
            &config,
        );
        assert!(outcome.non_finite.is_none());
        assert_eq!(outcome.curve.losses.len(), 2);
        outcome.curve
    };
    let first = run(7);
    assert_ne!(
        first.losses[0], first.losses[1],
        "both batches dropped the same units"
    );
    assert_eq!(run(7), first, "one seed, two different runs");
    assert_ne!(run(8).losses, first.losses, "two seeds, one dropout draw");
}

/// Three batches at 1e-8, 1e142 and 1e292: the second step's rate overflows float32, so the
/// mechanism's weights and the third batch's loss are no longer finite.
#[test]
fn a_non_finite_loss_names_its_batch_and_learning_rate() {
    let kind = BackboneKind::ResNet50;
    let resnet = backbone(kind);
    let config = LrTestConfig {
        start_lr: 1e-8,
        end_lr: 1e292,
        stop_factor: f64::INFINITY,
        ..LrTestConfig::default()
    };
    let outcome = range_test(
        resnet.as_ref(),
        kind,
        &IMAGES[..3],
        BackboneMode::Eval,
        7,
        &config,
    );
    assert_eq!(outcome.curve.lrs.len(), 2);
    let err = outcome.non_finite.expect("the loss stayed finite");
    let &TrainError::RangeTestNonFinite { batch, lr, value } = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(batch, 3);
    // The last batch's rate is the end rate.
    assert!((lr / config.end_lr - 1.0).abs() < 1e-9, "{lr}");
    assert!(!value.is_finite());
    let message = err.to_string();
    assert!(
        message.contains("batch 3") && message.contains("learning rate 1.000e292"),
        "{message}"
    );
}
