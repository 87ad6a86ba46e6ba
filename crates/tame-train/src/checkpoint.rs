//! Training checkpoints: the mechanism's state dict and the optimizer's momentum buffers in
//! one safetensors file, the position and configuration in its JSON sidecar.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tame_am::{sidecar_path, AmConfig, AttentionMechanism, CheckpointMeta};

use crate::TrainError;

/// Prefix of the tensors that hold optimizer state rather than mechanism state; readers of
/// the mechanism alone (`AttentionMechanism::load`) skip them.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
const BUFFER_PREFIX: &str = "optimizer.momentum_buffer.";
/// `[epoch, batches_done, global_step]` as I64: ties the tensors to their sidecar.
const POSITION: &str = "optimizer.position";

/// Where training stands, stored in the sidecar's `config` next to the run's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: u64,
    /// Batches of the next epoch already trained on (non-zero only after an interruption).
    pub batches_done: u64,
    /// Optimizer steps done (the schedule's position).
    pub global_step: u64,
    /// The training settings of the run ([`crate::TrainConfig`] as JSON).
    pub run: serde_json::Value,
}

/// A checkpoint read back by [`read_checkpoint`].
pub struct TrainCheckpoint {
    /// The mechanism with the saved weights and running statistics.
    pub am: AttentionMechanism,
    /// The optimizer's momentum buffers, named `<group>.<parameter>`.
    pub momentum_buffers: Vec<(String, Tensor)>,
    /// The position and settings.
    pub state: TrainState,
    /// The whole sidecar.
    pub meta: CheckpointMeta,
}

/// Writes a checkpoint at `path` (`.safetensors`) and its sidecar as one commit
/// ([`tame_am::write_checkpoint_pair`]): a pair left half-written by a crash is detected
/// when read, and [`find_latest_checkpoint`] passes over it.
pub fn write_checkpoint(
    path: &Path,
    am: &AttentionMechanism,
    momentum_buffers: &[(String, Tensor)],
    meta: &CheckpointMeta,
    state: &TrainState,
) -> Result<(), TrainError> {
    let mut tensors: HashMap<String, Tensor> = am.state_dict()?.into_iter().collect();
    for (name, t) in momentum_buffers {
        tensors.insert(format!("{BUFFER_PREFIX}{name}"), t.clone());
    }
    let position = [state.epoch, state.batches_done, state.global_step].map(|v| v as i64);
    tensors.insert(POSITION.into(), Tensor::new(&position, &Device::Cpu)?);
    let meta = CheckpointMeta {
        epoch: state.epoch,
        global_step: state.global_step,
        config: serde_json::to_value(state).map_err(|e| bad(path, e.to_string()))?,
        ..meta.clone()
    };
    Ok(tame_am::write_checkpoint_pair(path, &tensors, &meta)?)
}

/// Reads a checkpoint written by [`write_checkpoint`] for the mechanism `config`.
///
/// Everything is checked before anything is returned: the file parses, the sidecar exists
/// and agrees with the tensors, the tensors fit `config`, and the momentum buffers are
/// complete. Any failure is [`TrainError::Checkpoint`] naming the file and the problem.
pub fn read_checkpoint(
    path: &Path,
    config: &AmConfig,
    dtype: DType,
    device: &Device,
) -> Result<TrainCheckpoint, TrainError> {
    let bytes = fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(path, format!("not a readable safetensors file ({e})")))?;
    let json = sidecar_path(path);
    if !json.exists() {
        return Err(bad(
            path,
            format!("its sidecar {} is missing", json.display()),
        ));
    }
    let meta = CheckpointMeta::read(path).map_err(|e| bad(path, e.to_string()))?;
    meta.check_tensors(&bytes, path)?;
    let state: TrainState = serde_json::from_value(meta.config.clone()).map_err(|e| {
        bad(
            path,
            format!("the sidecar holds no training position ({e})"),
        )
    })?;
    let position = tensors
        .get(POSITION)
        .ok_or_else(|| {
            bad(
                path,
                "no optimizer state (a mechanism-only checkpoint?)".into(),
            )
        })?
        .to_vec1::<i64>()
        .map_err(|e| bad(path, e.to_string()))?;
    let expected = [state.epoch, state.batches_done, state.global_step].map(|v| v as i64);
    if position != expected {
        return Err(bad(
            path,
            format!(
                "the tensors are at position {position:?} but the sidecar says {expected:?} \
                 (a half-written pair)"
            ),
        ));
    }
    if meta.version != config.version() {
        return Err(bad(
            path,
            format!("version {} (this run: {})", meta.version, config.version()),
        ));
    }
    let mut am_tensors = Vec::new();
    let mut buffers = Vec::new();
    for (name, t) in tensors {
        if let Some(param) = name.strip_prefix(BUFFER_PREFIX) {
            let t = t
                .to_dtype(dtype)
                .and_then(|t| t.to_device(device))
                .map_err(|e| bad(path, e.to_string()))?;
            buffers.push((param.to_string(), t));
        } else if !name.starts_with(OPTIMIZER_PREFIX) {
            am_tensors.push((name, t));
        }
    }
    am_tensors.sort_by(|a, b| a.0.cmp(&b.0));
    buffers.sort_by(|a, b| a.0.cmp(&b.0));
    let am = AttentionMechanism::from_tensors(config, am_tensors, dtype, device)
        .map_err(|e| bad(path, e.to_string()))?;
    Ok(TrainCheckpoint {
        am,
        momentum_buffers: buffers,
        state,
        meta,
    })
}

/// What [`find_latest_checkpoint`] found in a folder.
#[derive(Debug, Default)]
pub struct CheckpointScan {
    /// The complete checkpoint with the most optimizer steps.
    pub latest: Option<PathBuf>,
    /// Checkpoints a crash or a kill left incomplete, with why; they are passed over.
    pub incomplete: Vec<(PathBuf, String)>,
}

/// The complete checkpoint in `dir` with the most optimizer steps (`epoch_<k>.safetensors`
/// or `interrupted.safetensors`; at equal steps the epoch one wins). A checkpoint without
/// its sidecar, or whose sidecar was written for other tensors, is incomplete: listed, not
/// chosen.
pub fn find_latest_checkpoint(dir: &Path) -> Result<CheckpointScan, TrainError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CheckpointScan::default()),
        Err(source) => {
            return Err(TrainError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut scan = CheckpointScan::default();
    let mut best: Option<(u64, bool)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|_| path.extension().is_some_and(|e| e == "safetensors"))
        else {
            continue;
        };
        let is_epoch = stem
            .strip_prefix("epoch_")
            .is_some_and(|k| k.parse::<u64>().is_ok());
        if !is_epoch && stem != "interrupted" {
            continue;
        }
        let meta = match complete_pair(&path) {
            Ok(meta) => meta,
            Err(why) => {
                scan.incomplete.push((path, why));
                continue;
            }
        };
        let key = (meta.global_step, is_epoch);
        if best.is_none_or(|k| key > k) {
            best = Some(key);
            scan.latest = Some(path);
        }
    }
    scan.incomplete.sort();
    Ok(scan)
}

/// The sidecar of `path` when the pair is complete, otherwise why not.
fn complete_pair(path: &Path) -> Result<CheckpointMeta, String> {
    let meta = CheckpointMeta::read(path).map_err(|e| e.to_string())?;
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    meta.check_tensors(&bytes, path)
        .map_err(|e| e.to_string())?;
    Ok(meta)
}

fn bad(path: &Path, reason: String) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    }
}
