//! The project's checkpoint format (safetensors + JSON sidecar) and the import of reference
//! PyTorch checkpoints.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{AmConfig, AmError, AttentionMechanism, Mismatch, TapShape, Version};

/// The JSON sidecar of a checkpoint (same stem, `.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Backbone the mechanism explains (e.g. `vgg16`).
    pub backbone: String,
    /// Tap names, in order.
    pub taps: Vec<String>,
    /// Their shapes (C, H, W), in order; empty when unknown.
    #[serde(default)]
    pub tap_shapes: Vec<TapShape>,
    /// Attention-mechanism version.
    #[serde(with = "version_name")]
    pub version: Version,
    /// Epochs completed.
    pub epoch: u64,
    /// Optimizer steps completed.
    pub global_step: u64,
    /// Free-form configuration of the run that wrote it.
    #[serde(default)]
    pub config: serde_json::Value,
    /// SHA-256 (hex) of the tensor file this sidecar belongs to, set by
    /// [`write_checkpoint_pair`]; absent in sidecars written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors_sha256: Option<String>,
}

mod version_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Version;

    pub fn serialize<S: Serializer>(v: &Version, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl CheckpointMeta {
    /// Reads the sidecar of the checkpoint `path` (or the JSON file `path` itself).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, AmError> {
        let json = sidecar_path(path.as_ref());
        let text = fs::read_to_string(&json).map_err(|source| AmError::Io {
            path: json.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| AmError::Metadata { path: json, source })
    }

    /// Checks that `bytes`, the content of the tensor file `path`, are the ones this sidecar
    /// was written for: a mismatch is a pair left half-written by a crash or a kill.
    pub fn check_tensors(&self, bytes: &[u8], path: &Path) -> Result<(), AmError> {
        match &self.tensors_sha256 {
            Some(expected) if *expected != sha256_hex(bytes) => Err(AmError::HalfWritten {
                path: path.to_path_buf(),
                sidecar: sidecar_path(path),
            }),
            _ => Ok(()),
        }
    }
}

/// The JSON sidecar path of checkpoint `path`: same stem, `.json`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// A checkpoint read by [`AttentionMechanism::load`].
pub struct LoadedCheckpoint {
    /// The mechanism with the checkpoint's weights and running statistics.
    pub am: AttentionMechanism,
    /// Epochs completed, when the file says.
    pub epoch: Option<u64>,
    /// Optimizer steps completed (the reference's `global_counter`), when the file says.
    pub global_step: Option<u64>,
    /// The sidecar of a checkpoint in the project's format, when there is one.
    pub meta: Option<CheckpointMeta>,
}

impl AttentionMechanism {
    /// Writes the state dict as safetensors at `path` and `meta` as JSON next to it
    /// ([`sidecar_path`]), as one commit ([`write_checkpoint_pair`]).
    pub fn save(&self, path: impl AsRef<Path>, meta: &CheckpointMeta) -> Result<(), AmError> {
        self.save_as(path, meta, Storage::Full)
    }

    /// [`save`](Self::save), with the tensors stored as `storage` says (smaller files for
    /// mechanisms meant for distribution; loading converts back to the dtype asked for).
    pub fn save_as(
        &self,
        path: impl AsRef<Path>,
        meta: &CheckpointMeta,
        storage: Storage,
    ) -> Result<(), AmError> {
        let mut tensors = HashMap::new();
        for (name, t) in self.state_dict()? {
            storage.encode(name, t, &mut tensors)?;
        }
        write_checkpoint_pair(path.as_ref(), &tensors, meta)
    }

    /// Reads a checkpoint for the mechanism `config`: the project's safetensors format
    /// (recognised by its content, whatever the extension; the JSON sidecar is read when
    /// present; tensors named `optimizer.*`, the optimizer state of training checkpoints,
    /// are skipped) or a reference PyTorch checkpoint (`{'epoch', 'global_counter', 'state_dict',
    /// ...}` or a bare state dict; `module.` prefixes are tolerated).
    ///
    /// A file whose tensors do not fit `config` is refused with [`AmError::Mismatch`], which
    /// names the file and the first difference; so is a sidecar that names another version or
    /// other tap shapes.
    pub fn load(
        path: impl AsRef<Path>,
        config: &AmConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<LoadedCheckpoint, AmError> {
        let path = path.as_ref();
        let io = |source| AmError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Only regular files: a device such as /dev/zero would be read without end.
        if !fs::metadata(path).map_err(io)?.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let bytes = fs::read(path).map_err(io)?;
        let mismatch = |m: Mismatch| AmError::Mismatch {
            path: path.to_path_buf(),
            mismatch: m,
        };
        let in_file = |e: AmError| match e {
            AmError::State(m) => mismatch(m),
            e => e,
        };
        if is_safetensors(path, &bytes) {
            let meta = match sidecar_path(path).exists() {
                true => Some(CheckpointMeta::read(path)?),
                false => None,
            };
            Self::from_safetensors_bytes(&bytes, meta, path, config, dtype, device)
        } else {
            let ckpt = tame_pth::read_checkpoint(path)?;
            let count = |key| ckpt.int(key).and_then(|v| u64::try_from(v).ok());
            let (epoch, global_step) = (count("epoch"), count("global_counter"));
            let am = Self::from_tensors(config, ckpt.tensors, dtype, device).map_err(in_file)?;
            Ok(LoadedCheckpoint {
                am,
                epoch,
                global_step,
                meta: None,
            })
        }
    }
}

impl AttentionMechanism {
    /// A checkpoint in the project's safetensors format held in memory (a built-in
    /// mechanism), with its sidecar `meta` if any; `name` stands for the file in errors.
    /// The same checks as [`AttentionMechanism::load`].
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        meta: Option<CheckpointMeta>,
        name: &Path,
        config: &AmConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<LoadedCheckpoint, AmError> {
        let mismatch = |m: Mismatch| AmError::Mismatch {
            path: name.to_path_buf(),
            mismatch: m,
        };
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
            AmError::Safetensors {
                path: name.to_path_buf(),
                source: candle_core::Error::msg(format!("not a readable safetensors file: {e}")),
            }
        })?;
        // Training checkpoints also hold optimizer state under `optimizer.`: not ours.
        let tensors: Vec<_> = tensors
            .into_iter()
            .filter(|(name, _)| !name.starts_with("optimizer."))
            .collect();
        let tensors = dequantize(tensors).map_err(|e| match e {
            AmError::State(m) => mismatch(m),
            e => e,
        })?;
        if let Some(meta) = &meta {
            meta.check_tensors(bytes, name)?;
            check_meta(meta, config).map_err(mismatch)?;
        }
        let am = Self::from_tensors(config, tensors, dtype, device).map_err(|e| match e {
            AmError::State(m) => mismatch(m),
            e => e,
        })?;
        Ok(LoadedCheckpoint {
            am,
            epoch: meta.as_ref().map(|m| m.epoch),
            global_step: meta.as_ref().map(|m| m.global_step),
            meta,
        })
    }
}

/// How [`AttentionMechanism::save_as`] stores the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// As they are (float32 in training): exact.
    Full,
    /// Floating-point tensors in half precision: half the size, ~1e-3 relative error.
    Half,
    /// Weight matrices (2 or more dimensions) as 8-bit integers with one float32 scale per
    /// output channel (`<name>.q8` holds code = round(w / scale) + 128, `<name>.q8_scale` the
    /// scales, scale = max |w| of the channel / 127); the other floating-point tensors in
    /// half precision. About a quarter of the full size; each weight within half a scale.
    Int8,
}

/// The suffixes of a weight stored as [`Storage::Int8`].
const Q8: &str = ".q8";
const Q8_SCALE: &str = ".q8_scale";
/// The code of zero: codes are unsigned bytes, as candle has no signed 8-bit type.
const Q8_ZERO: f64 = 128.0;

impl Storage {
    /// Adds tensor `name` as stored to `out`.
    fn encode(
        self,
        name: String,
        t: Tensor,
        out: &mut HashMap<String, Tensor>,
    ) -> Result<(), AmError> {
        if !t.dtype().is_float() || self == Self::Full {
            out.insert(name, t);
        } else if self == Self::Int8 && t.rank() >= 2 {
            let rows = t.to_dtype(DType::F32)?.flatten_from(1)?;
            let scale = (rows.abs()?.max_keepdim(1)? / 127.0)?;
            // An all-zero channel keeps scale 1 so that decoding never divides by zero.
            let scale = scale.eq(0.0)?.where_cond(&scale.ones_like()?, &scale)?;
            let codes = (rows.broadcast_div(&scale)?.round()? + Q8_ZERO)?
                .reshape(t.shape())?
                .to_dtype(DType::U8)?;
            out.insert(format!("{name}{Q8}"), codes);
            out.insert(format!("{name}{Q8_SCALE}"), scale.flatten_all()?);
        } else {
            out.insert(name, t.to_dtype(DType::F16)?);
        }
        Ok(())
    }
}

/// Decodes the weights stored as [`Storage::Int8`] (the pair `<name>.q8`, `<name>.q8_scale`)
/// into float32 tensors named `<name>`; the others pass as they are. Sorted by name.
fn dequantize(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, AmError> {
    let mut scales: HashMap<String, Tensor> = HashMap::new();
    let mut codes = Vec::new();
    let mut out = Vec::new();
    for (name, t) in tensors {
        if let Some(base) = name.strip_suffix(Q8_SCALE) {
            scales.insert(base.to_string(), t);
        } else if let Some(base) = name.strip_suffix(Q8) {
            codes.push((base.to_string(), t));
        } else {
            out.push((name, t));
        }
    }
    for (base, code) in codes {
        let scale = scales
            .remove(&base)
            .ok_or_else(|| Mismatch::Missing(format!("{base}{Q8_SCALE}")))?;
        let rows = code.dims().first().copied().unwrap_or(0);
        if scale.dims() != [rows] {
            return Err(Mismatch::Shape {
                name: format!("{base}{Q8_SCALE}"),
                expected: vec![rows],
                got: scale.dims().to_vec(),
            }
            .into());
        }
        let weight = ((code.to_dtype(DType::F32)?.flatten_from(1)? - Q8_ZERO)?
            .broadcast_mul(&scale.to_dtype(DType::F32)?.unsqueeze(1)?)?)
        .reshape(code.shape())?;
        out.push((base, weight));
    }
    // A scale without its codes is a tensor the mechanism does not have.
    if let Some(base) = scales.into_keys().next() {
        return Err(Mismatch::Unexpected(format!("{base}{Q8_SCALE}")).into());
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A safetensors file is named so, or starts with the little-endian length of its JSON
/// header, then `{`. The length is not checked: a damaged or truncated safetensors file
/// is still reported as one, not as a broken pickle.
fn is_safetensors(path: &Path, bytes: &[u8]) -> bool {
    let named = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    named || bytes.get(8) == Some(&b'{')
}

fn check_meta(meta: &CheckpointMeta, config: &AmConfig) -> Result<(), Mismatch> {
    if meta.version != config.version() {
        return Err(Mismatch::Version {
            expected: config.version(),
            found: meta.version,
        });
    }
    if !meta.tap_shapes.is_empty() && meta.tap_shapes != config.taps() {
        return Err(Mismatch::Taps {
            expected: config.taps().to_vec(),
            found: meta.tap_shapes.clone(),
        });
    }
    Ok(())
}

/// Writes `tensors` as a safetensors file at `path` and `meta` as its sidecar, as one commit.
///
/// Each file is written whole through tame-atomic (with the permissions of any new file:
/// candle's own writer renames an owner-only temporary file over the target). The sidecar
/// goes first and records the tensor file's SHA-256; the tensor file's rename is the commit.
/// A crash at any point leaves the previous pair, a sidecar without its tensor file, or a
/// sidecar whose hash the old tensor file does not match: never a pair that reads as whole.
pub fn write_checkpoint_pair(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<(), AmError> {
    let bytes = safetensors::serialize(tensors, None).map_err(|e| AmError::Safetensors {
        path: path.to_path_buf(),
        source: candle_core::Error::msg(e),
    })?;
    let meta = CheckpointMeta {
        tensors_sha256: Some(sha256_hex(&bytes)),
        ..meta.clone()
    };
    let json = sidecar_path(path);
    let text = serde_json::to_string_pretty(&meta).map_err(|source| AmError::Metadata {
        path: json.clone(),
        source,
    })?;
    let write = |path: &Path, bytes: &[u8]| {
        tame_atomic::write(path, bytes).map_err(|source| AmError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&json, text.as_bytes())?;
    write(path, &bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
