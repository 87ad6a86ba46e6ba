//! Times `tame_ops::conv2d` against candle's `conv2d` on VGG-16 and ResNet-50 layer shapes,
//! forward and input gradient (what explaining and training back-propagate through).
//!
//! `cargo run --release -p tame-ops --example bench_conv [runs]`

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use tame_ops::{conv2d_fused, Padding, WinogradFilters};

/// (name, c_in, size, c_out, k, stride, padding)
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 8] = [
    ("vgg features.2 (64->64 @224)", 64, 224, 64, 3, 1, 1),
    ("vgg features.7 (128->128 @112)", 128, 112, 128, 3, 1, 1),
    ("vgg features.12 (256->256 @56)", 256, 56, 256, 3, 1, 1),
    ("vgg features.24 (512->512 @28)", 512, 28, 512, 3, 1, 1),
    ("vgg features.28 (512->512 @14)", 512, 14, 512, 3, 1, 1),
    ("resnet conv1 (3->64 7x7/2 @224)", 3, 224, 64, 7, 2, 3),
    ("resnet layer1 3x3 (64->64 @56)", 64, 56, 64, 3, 1, 1),
    ("resnet layer2 1x1 (512->128 @28)", 512, 28, 128, 1, 1, 0),
];

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn main() -> Result<()> {
    let runs = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let dev = Device::Cpu;
    println!(
        "| layer | GFLOP | candle fwd ms | tame fwd ms | candle fwd+grad ms | tame fwd+grad ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, c, size, o, k, s, p) in LAYERS {
        let x = Tensor::randn(0f32, 1.0, (1, c, size, size), &dev)?;
        let w = (Tensor::randn(0f32, 1.0, (o, c, k, k), &dev)? * 0.05)?;
        let out = (size + 2 * p - k) / s + 1;
        let gflop = 2.0 * (o * c * k * k * out * out) as f64 / 1e9;
        let pad = Padding::uniform(p);
        let candle_fwd = time(runs, || x.conv2d(&w, p, s, 1, 1).map(drop))?;
        // As the backbones run it: filters prepared once, a bias (zero here).
        let prepared = if s == 1 {
            WinogradFilters::new(&w)?
        } else {
            None
        };
        let bias = Tensor::zeros(o, x.dtype(), &dev)?;
        let tame = |x: &Tensor| conv2d_fused(x, &w, prepared.as_ref(), &bias, s, pad, false);
        let tame_fwd = time(runs, || tame(&x).map(drop))?;
        let xv = Var::from_tensor(&x)?;
        let candle_bwd = time(runs, || {
            xv.as_tensor()
                .conv2d(&w, p, s, 1, 1)?
                .sum_all()?
                .backward()
                .map(drop)
        })?;
        let tame_bwd = time(runs, || {
            tame(xv.as_tensor())?.sum_all()?.backward().map(drop)
        })?;
        println!(
            "| {name} | {gflop:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
            candle_fwd * 1e3,
            tame_fwd * 1e3,
            candle_bwd * 1e3,
            tame_bwd * 1e3
        );
    }
    Ok(())
}
