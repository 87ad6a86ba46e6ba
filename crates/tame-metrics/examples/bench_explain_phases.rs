//! Where a batch-1 explanation's time goes (the backbone's forward pass with its taps, the
//! mechanism's branches, the class's map), and what running it on a thread of the pool
//! (`tame_process::on_worker`, as the binaries do) changes: each iteration explains once from
//! outside the pool and once on a worker, so both see the same state of the host.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p tame-metrics --example bench_explain_phases
//! [runs] [vgg16|resnet50]`

use std::error::Error;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use tame_am::{AmConfig, AttentionMechanism, TapShape, Version};
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode, TapRequest};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Seconds of the three phases of one explanation of `image`'s top class.
fn explain(
    net: &dyn Backbone,
    request: &TapRequest,
    am: &AttentionMechanism,
    image: &Tensor,
) -> Result<[f64; 3]> {
    let start = Instant::now();
    let out = net.forward(image, request, Mode::Eval)?;
    let logits = out.logits.as_ref().ok_or("no logits")?;
    let top = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let forward = Instant::now();
    let branches = am.branches(&out.taps, false)?;
    let branched = Instant::now();
    let map = am.per_sample_class_logits(&branches, &[top])?;
    map.flatten_all()?.to_vec1::<f32>()?;
    let end = Instant::now();
    Ok([forward - start, branched - forward, end - branched].map(|d| d.as_secs_f64()))
}

fn main() -> Result<()> {
    tame_process::reuse_freed_memory();
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(Ok(40), |r| r.parse())?;
    let kind: BackboneKind = args.next().as_deref().unwrap_or("resnet50").parse()?;
    let device = Device::Cpu;
    let net = load_backbone(kind, &WeightsSpec::Synthetic, &device)?;
    let taps = net.default_taps();
    let image = Tensor::rand(0f32, 1f32, (1, 3, 224, 224), &device)?;
    let request = net.tap_request(&taps, true)?;
    let tap_shapes = net
        .tap_dims(&taps, 224, &device)?
        .into_iter()
        .map(|[c, h, w]| TapShape::new(c, h, w))
        .collect();
    let config = AmConfig::new(Version::Tame, tap_shapes)?;
    let am = AttentionMechanism::new(&config, 0, DType::F32, &device)?;
    let once = || explain(net.as_ref(), &request, &am, &image);
    once()?;
    let (mut outside, mut on_worker) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        outside.push(once()?);
        on_worker.push(tame_process::on_worker(once)?);
    }
    println!("{}, batch 1, {runs} runs each, medians in ms", net.name());
    println!("started            forward  branches  class map  total");
    for (name, times) in [("outside the pool", outside), ("on a worker", on_worker)] {
        let phase = |i: usize| median(times.iter().map(|t| t[i]).collect()) * 1e3;
        let total = median(times.iter().map(|t| t.iter().sum()).collect()) * 1e3;
        println!(
            "{name:<18} {:>7.1}  {:>8.1}  {:>9.2}  {total:>5.1}",
            phase(0),
            phase(1),
            phase(2)
        );
    }
    Ok(())
}
