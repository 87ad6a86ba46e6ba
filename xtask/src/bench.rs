//! Benchmarks, run side by side with their PyTorch halves (xtask/bench/*.py) on the same
//! machine and thread count (`RAYON_NUM_THREADS` here, `--threads` there).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Subcommand;
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{BackboneKind, Mode};

#[derive(Subcommand)]
pub enum Bench {
    /// Forward latency at batch 1 and throughput at batch 8 (logits, eval mode, synthetic
    /// weights) for VGG-16 and ResNet-50.
    Backbones {
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Backbones { runs } => backbones(runs),
    }
}

fn median_seconds(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn backbones(runs: usize) -> Result<()> {
    let device = Device::Cpu;
    println!(
        "threads: {}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    println!("model     batch  median s/batch  images/s");
    for kind in BackboneKind::ALL {
        let net = load_backbone(kind, &WeightsSpec::Synthetic, &device)?;
        let request = net.tap_request(&[], true)?;
        for batch in [1, 8] {
            let images =
                Tensor::rand(0f32, 1f32, (batch, 3, 224, 224), &device)?.to_dtype(DType::F32)?;
            let secs = median_seconds(runs, || {
                net.forward(&images, &request, Mode::Eval)?;
                Ok(())
            })?;
            println!(
                "{:<9} {batch:>5}  {secs:>14.3}  {:>8.2}",
                kind.name(),
                batch as f64 / secs
            );
        }
    }
    Ok(())
}
