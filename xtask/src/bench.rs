//! Benchmarks, run side by side with their PyTorch halves (xtask/bench/*.py) on the same
//! machine and thread count (`RAYON_NUM_THREADS` here, `--threads` there).

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Subcommand;
use tame_am::{AmConfig, AttentionMechanism, TapShape, Version};
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode, Precision};
use tame_metrics::{normalize_maps, EvalConfig, Evaluator, Explainer, TameExplainer};
use tame_train::{BackboneMode, RunInputs, TrainConfig, Trainer};

#[derive(Subcommand)]
pub enum Bench {
    /// Forward latency at batch 1 and throughput at batch 8 (logits, eval mode, synthetic
    /// weights) for VGG-16 and ResNet-50.
    Backbones {
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only this backbone (vgg16, resnet50, efficientnet-lite0); all when left out.
        #[arg(long)]
        model: Option<BackboneKind>,
    },
    /// The speed table of the project, per backbone (VGG-16, ResNet-50; synthetic weights,
    /// the default TAME taps): forward at batch 1, explanation of one class at batch 1,
    /// a training step at batch 8 (reference backbone mode), AD/IC of one image at the
    /// three levels. xtask/bench/table_pytorch.py measures the same on the reference side.
    Table {
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only this backbone (vgg16 or resnet50); both when left out.
        #[arg(long)]
        model: Option<BackboneKind>,
        /// Only this row of the table; all when left out.
        #[arg(long, value_enum)]
        work: Option<Work>,
    },
}

/// The rows of the speed table.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Work {
    Forward,
    Explain,
    Train,
    AdIc,
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Backbones { runs, model } => backbones(runs, model),
        Bench::Table { runs, model, work } => table(runs, model, work),
    }
}

/// The median and the fastest of the timed runs, in seconds: on a shared host the fastest is
/// the least disturbed.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) median: f64,
    pub(crate) best: f64,
}

/// A warm-up call of `f`, then `runs` timed calls.
pub(crate) fn timed(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing {
        median: times[times.len() / 2],
        best: times[0],
    })
}

/// `all`, or only `only` when one is given.
fn selected(all: &[BackboneKind], only: Option<BackboneKind>) -> Vec<BackboneKind> {
    all.iter()
        .copied()
        .filter(|&k| only.is_none_or(|o| o == k))
        .collect()
}

fn backbones(runs: usize, model: Option<BackboneKind>) -> Result<()> {
    let device = Device::Cpu;
    println!(
        "threads: {}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    println!("model     batch  median s/batch  best s/batch  images/s");
    for kind in selected(&BackboneKind::ALL, model) {
        let net = load_backbone(kind, &WeightsSpec::Synthetic, &device)?;
        let request = net.tap_request(&[], true)?;
        let side = input_side(net.as_ref());
        for batch in [1, 8] {
            let images =
                Tensor::rand(0f32, 1f32, (batch, 3, side, side), &device)?.to_dtype(DType::F32)?;
            let t = timed(runs, || {
                net.forward(&images, &request, Mode::Eval)?;
                Ok(())
            })?;
            println!(
                "{:<9} {batch:>5}  {:>14.3}  {:>12.3}  {:>8.2}",
                kind.name(),
                t.median,
                t.best,
                batch as f64 / t.median
            );
        }
    }
    Ok(())
}

/// The side of the square images `backbone` takes.
pub(crate) fn input_side(backbone: &dyn Backbone) -> usize {
    backbone.preprocessing().crop as usize
}

/// A freshly initialised TAME mechanism (seed 0) on `backbone`'s default taps.
pub(crate) fn mechanism(backbone: &dyn Backbone, device: &Device) -> Result<AttentionMechanism> {
    let taps = backbone
        .tap_dims(&backbone.default_taps(), input_side(backbone), device)?
        .into_iter()
        .map(|[c, h, w]| TapShape::new(c, h, w))
        .collect();
    let config = AmConfig::new(Version::Tame, taps)?;
    Ok(AttentionMechanism::new(&config, 0, DType::F32, device)?)
}

fn table(runs: usize, model: Option<BackboneKind>, work: Option<Work>) -> Result<()> {
    let wants = |row: Work| work.is_none_or(|w| w == row);
    let device = Device::Cpu;
    println!(
        "threads: {}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    println!("model     work                          median s    best s");
    let report = |model: &str, work: &str, t: Timing| {
        println!("{model:<9} {work:<29} {:>8.3}  {:>8.3}", t.median, t.best)
    };
    let kinds = [BackboneKind::Vgg16, BackboneKind::ResNet50];
    if let Some(other) = model.filter(|m| !kinds.contains(m)) {
        anyhow::bail!(
            "the speed table covers vgg16 and resnet50, not {}",
            other.name()
        );
    }
    for kind in selected(&kinds, model) {
        let net = load_backbone(kind, &WeightsSpec::Synthetic, &device)?;
        let name = net.name();
        let side = input_side(net.as_ref());
        let one = Tensor::rand(0f32, 1f32, (1, 3, side, side), &device)?;
        if wants(Work::Forward) {
            let logits = net.tap_request(&[], true)?;
            let secs = timed(runs, || {
                net.forward(&one, &logits, Mode::Eval)?;
                Ok(())
            })?;
            report(name, "forward, batch 1", secs);
        }

        let am = mechanism(net.as_ref(), &device)?;
        let taps = net.default_taps();
        let explainer = TameExplainer::new(&am, taps.clone())?;
        let with_taps = net.tap_request(&taps, true)?;
        if wants(Work::Explain) {
            // As `tame explain`: one pass for the taps and the prediction, the map of the top
            // class, normalised and upsampled to the input.
            let secs = timed(runs, || {
                let out = net.forward(&one, &with_taps, Mode::Eval)?;
                let top = out
                    .logits
                    .context("no logits")?
                    .argmax(D::Minus1)?
                    .to_vec1::<u32>()?;
                let map = normalize_maps(&explainer.explain(&one, &out.taps, &top)?, side, side)?;
                map.flatten_all()?.to_vec1::<f32>()?;
                Ok(())
            })?;
            report(name, "explain, batch 1, one class", secs);
        }

        if wants(Work::Train) {
            let config = TrainConfig {
                backbone: name.to_string(),
                taps: taps.clone(),
                epochs: 1,
                batch_size: 8,
                max_lr: 1e-4,
                weight_decay: 5e-4,
                seed: 0,
                per_sample_masks: false,
                backbone_mode: BackboneMode::Reference,
                precision: Precision::F32,
                inputs: RunInputs::default(),
            };
            let mut trainer = Trainer::new(
                net.as_ref(),
                mechanism(net.as_ref(), &device)?,
                config,
                1000,
            )?;
            let eight = Tensor::rand(0f32, 1f32, (8, 3, side, side), &device)?;
            let labels: Vec<u32> = (0..8).map(|i| 100 * i + 7).collect();
            let secs = timed(runs, || {
                trainer.step(&eight, &labels)?;
                Ok(())
            })?;
            report(name, "training step, batch 8", secs);
            println!(
                "{:<9} {:<29} {:>8.2}",
                "",
                "  (images/s)",
                8.0 / secs.median
            );
        }

        if wants(Work::AdIc) {
            let evaluator = Evaluator::new(
                net.as_ref(),
                &explainer as &dyn Explainer,
                EvalConfig::default(),
            )?;
            let secs = timed(runs, || {
                evaluator.evaluate(&one, 0)?;
                Ok(())
            })?;
            report(name, "AD/IC, one image, 3 levels", secs);
        }
    }
    Ok(())
}
