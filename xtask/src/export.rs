//! `cargo xtask export-am`: a training checkpoint made fit to ship — the mechanism's tensors
//! only (no optimizer state), in half precision, with its sidecar.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use tame_am::{AttentionMechanism, CheckpointMeta};

#[derive(Args)]
pub struct ExportAm {
    /// A training checkpoint (`epoch_<k>.safetensors` with its `.json`).
    checkpoint: PathBuf,
    /// The file to write (its `.json` sidecar goes next to it).
    out: PathBuf,
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
    loaded.am.save_as(&args.out, &meta, Some(DType::F16))?;
    let size = std::fs::metadata(&args.out)?.len();
    eprintln!(
        "wrote {} ({:.1} MB, half precision, epoch {})",
        args.out.display(),
        size as f64 / 1e6,
        meta.epoch
    );
    Ok(())
}
