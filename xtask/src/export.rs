//! `cargo xtask export-am`: a training checkpoint made fit to ship — the mechanism's tensors
//! only (no optimizer state), stored small (8-bit weights by default), with its sidecar.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use tame_am::{AttentionMechanism, CheckpointMeta, Storage};

#[derive(Args)]
pub struct ExportAm {
    /// A training checkpoint (`epoch_<k>.safetensors` with its `.json`).
    checkpoint: PathBuf,
    /// The file to write (its `.json` sidecar goes next to it).
    out: PathBuf,
    /// How the tensors are stored: `int8` (weight matrices as 8-bit integers with a scale per
    /// output channel, the rest in half precision; ~1/4 of the size), `half`, or `full`.
    #[arg(long, value_enum, default_value_t = StorageArg::Int8)]
    storage: StorageArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum StorageArg {
    Int8,
    Half,
    Full,
}

pub fn run(args: ExportAm) -> Result<()> {
    let meta = CheckpointMeta::read(&args.checkpoint).with_context(|| {
        format!(
            "{}: no sidecar to take the layout from",
            args.checkpoint.display()
        )
    })?;
    let config = tame_am::AmConfig::new(meta.version, meta.tap_shapes.clone())?;
    let loaded = AttentionMechanism::load(&args.checkpoint, &config, DType::F32, &Device::Cpu)?;
    let (storage, how) = match args.storage {
        StorageArg::Int8 => (Storage::Int8, "8-bit weights"),
        StorageArg::Half => (Storage::Half, "half precision"),
        StorageArg::Full => (Storage::Full, "full precision"),
    };
    loaded.am.save_as(&args.out, &meta, storage)?;
    let size = std::fs::metadata(&args.out)?.len();
    eprintln!(
        "wrote {} ({:.1} MB, {how}, epoch {})",
        args.out.display(),
        size as f64 / 1e6,
        meta.epoch
    );
    Ok(())
}
