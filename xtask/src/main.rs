//! `cargo xtask <task>`: project pipelines and benchmarks.

mod bench;

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
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bench { what } => bench::run(what),
    }
}
