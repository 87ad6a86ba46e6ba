//! Times every distinct convolution of ResNet-50's forward pass (batch 1 unless given) as the backbone
//! runs it (bias and ReLU fused, Winograd filters prepared once), with how often each
//! occurs in the network; `xtask/bench/resnet_layers_pytorch.py` times the same shapes with
//! PyTorch. Random weights; medians of the runs after a warm-up.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p tame-ops --example bench_resnet_layers [runs] [batch]`

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use tame_ops::{conv2d_fused, Padding, WinogradFilters};

/// (name, occurrences, c_in, input size, c_out, kernel, stride, padding).
type Layer = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// torchvision's ResNet-50 (stride on the 3x3 convolution of each stage's first block).
const LAYERS: [Layer; 23] = [
    ("conv1 7x7/2 3->64 @224", 1, 3, 224, 64, 7, 2, 3),
    ("layer1 1x1 64->64 @56", 1, 64, 56, 64, 1, 1, 0),
    ("layer1 1x1 256->64 @56", 2, 256, 56, 64, 1, 1, 0),
    ("layer1 3x3 64->64 @56", 3, 64, 56, 64, 3, 1, 1),
    ("layer1 1x1 64->256 @56", 4, 64, 56, 256, 1, 1, 0),
    ("layer2 1x1 256->128 @56", 1, 256, 56, 128, 1, 1, 0),
    ("layer2 3x3/2 128->128 @56", 1, 128, 56, 128, 3, 2, 1),
    ("layer2 1x1/2 256->512 @56", 1, 256, 56, 512, 1, 2, 0),
    ("layer2 1x1 512->128 @28", 3, 512, 28, 128, 1, 1, 0),
    ("layer2 3x3 128->128 @28", 3, 128, 28, 128, 3, 1, 1),
    ("layer2 1x1 128->512 @28", 4, 128, 28, 512, 1, 1, 0),
    ("layer3 1x1 512->256 @28", 1, 512, 28, 256, 1, 1, 0),
    ("layer3 3x3/2 256->256 @28", 1, 256, 28, 256, 3, 2, 1),
    ("layer3 1x1/2 512->1024 @28", 1, 512, 28, 1024, 1, 2, 0),
    ("layer3 3x3 256->256 @14", 5, 256, 14, 256, 3, 1, 1),
    ("layer3 1x1 1024->256 @14", 5, 1024, 14, 256, 1, 1, 0),
    ("layer3 1x1 256->1024 @14", 6, 256, 14, 1024, 1, 1, 0),
    ("layer4 1x1 1024->512 @14", 1, 1024, 14, 512, 1, 1, 0),
    ("layer4 3x3/2 512->512 @14", 1, 512, 14, 512, 3, 2, 1),
    ("layer4 1x1/2 1024->2048 @14", 1, 1024, 14, 2048, 1, 2, 0),
    ("layer4 3x3 512->512 @7", 2, 512, 7, 512, 3, 1, 1),
    ("layer4 1x1 2048->512 @7", 2, 2048, 7, 512, 1, 1, 0),
    ("layer4 1x1 512->2048 @7", 3, 512, 7, 2048, 1, 1, 0),
];

fn main() -> Result<()> {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|r| r.parse().ok())
            .unwrap_or(default)
    };
    let (runs, batch) = (arg(1, 21), arg(2, 1));
    let dev = Device::Cpu;
    println!("| convolution | count | ms | GFLOP/s | count x ms |");
    println!("|---|---:|---:|---:|---:|");
    let mut total = 0.0;
    for (name, count, c, size, o, k, s, p) in LAYERS {
        let x = Tensor::randn(0f32, 1.0, (batch, c, size, size), &dev)?;
        let w = (Tensor::randn(0f32, 1.0, (o, c, k, k), &dev)? * 0.05)?;
        let prepared = WinogradFilters::new(&w)?;
        let bias = Tensor::zeros(o, x.dtype(), &dev)?;
        let pad = Padding::uniform(p);
        let conv = || conv2d_fused(&x, &w, prepared.as_ref(), &bias, s, pad, true).map(drop);
        conv()?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            conv()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        let out = (size + 2 * p - k) / s + 1;
        let gflop = 2.0 * (batch * o * c * k * k * out * out) as f64 / 1e9;
        total += ms * count as f64;
        println!(
            "| {name} | {count} | {ms:.3} | {:.0} | {:.2} |",
            gflop / ms * 1e3,
            ms * count as f64
        );
    }
    println!("| all convolutions | 53 | | | {total:.1} |");
    Ok(())
}
