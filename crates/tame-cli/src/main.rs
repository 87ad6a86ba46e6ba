//! `tame`: learned explanation maps of image classifiers.

mod common;
mod datalist;
mod device;
mod inspect;

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
    /// Write a training list labelled with the backbone's own top-1 predictions ("model
    /// truth", what TAME trains on) for every image under a folder.
    Datalist(datalist::DatalistArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Datalist(args) => datalist::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
