//! Read PyTorch checkpoint files (`torch.save`) into named candle tensors.
//!
//! Both formats are read: the zip format written by PyTorch >= 1.6 and the
//! legacy format (`_use_new_zipfile_serialization=False`, or files from before
//! 1.6). The pickle inside is decoded into plain data and is **never executed**:
//! only the tensor rebuild functions, the typed storage classes and
//! `collections.OrderedDict` are recognised, anything else stays opaque.
//!
//! Tensors keep their shape and values; strided views (transposes, slices,
//! several tensors sharing one storage) are copied out into contiguous tensors.
//! Storage types map to candle dtypes as follows:
//!
//! | storage  | dtype | note |
//! |----------|-------|------|
//! | Float, Double, Half, BFloat16 | `F32`, `F64`, `F16`, `BF16` | |
//! | Long, Int, Short | `I64`, `I32`, `I16` | |
//! | Char (int8) | `I16` | widened: candle has no `I8` |
//! | Byte, Bool | `U8` | bools are 0 or 1 |
//!
//! # Limits
//!
//! Corrupt or hostile input yields one error, never a panic, and is refused before
//! it takes much memory or time: declared sizes are checked against the file's
//! length and these limits before anything is allocated for them, and what the
//! pickle builds is counted as it is built. Real checkpoints (ResNet-50 or VGG-16
//! state dicts of 100-550 MB, TAME training checkpoints) stay far inside them.
//!
//! - Only regular files are read ([`ErrorKind::NotAFile`]).
//! - In a zip archive, `data.pkl` may declare 64 MiB, or the file's size if larger
//!   ([`ErrorKind::EntryTooLarge`]); a storage entry must hold the bytes its tensors
//!   declare, and deflated data cannot claim more than deflate's 1032:1 ratio.
//! - Each pickle holds at most 1,048,576 memo entries and 1,048,576 stack entries
//!   (values and marks), and decodes to at most 4,194,304 objects, counting a shared
//!   (memoised) object at each use and a string as one object per 16 bytes
//!   ([`ErrorKind::PickleLimit`]). A state dict needs about 35 objects a tensor; the
//!   bounds keep decoding one pickle within a few hundred MB at worst.
//! - A tensor has at most 64 dimensions, lies within its storage and repeats it
//!   (stride 0) at most 64 times over ([`ErrorKind::Malformed`]).
//! - The storage bytes read plus the tensors built total at most 8 times the file's
//!   size plus 64 MiB ([`ErrorKind::TooMuchData`]); a real checkpoint needs about
//!   twice its size, as a storage shared by several tensors is read once.
//!
//! ```no_run
//! let ckpt = tame_pth::read_checkpoint("tame_vgg16.pth")?;
//! let epoch = ckpt.int("epoch");
//! let weights = tame_pth::strip_prefix(ckpt.tensors, "module.");
//! # Ok::<(), tame_pth::PthError>(())
//! ```

mod budget;
mod error;
mod legacy;
mod pickle;
mod select;
mod source;
mod tensor;
mod zipped;

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

pub use error::{ErrorKind, PthError};

use budget::DataBudget;
use source::Source;

/// Reads every tensor of a state dict, in the file's order.
///
/// With `key`, the state dict is the top-level dict's entry `key` (e.g.
/// `"state_dict"`). Without, it is the top-level dict if that holds tensors,
/// otherwise its `"state_dict"` entry (the usual training checkpoint layout).
/// Entries that are not tensors are skipped; finding no tensor at all is an
/// error ([`ErrorKind::NoTensors`]) listing the keys present and which of them
/// hold tensors.
pub fn read_tensors(
    path: impl AsRef<Path>,
    key: Option<&str>,
) -> Result<Vec<(String, Tensor)>, PthError> {
    let path = path.as_ref();
    let data = read_file(path).map_err(|e| PthError::new(path, e))?;
    load_tensors(&data, key).map_err(|e| PthError::new(path, e))
}

/// A training checkpoint: the state dict's tensors and the top-level scalars.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The tensors found as by [`read_tensors`] with no key.
    pub tensors: Vec<(String, Tensor)>,
    /// The top-level entries that are ints, floats, bools or strings, in order.
    pub scalars: Vec<(String, Scalar)>,
}

impl Checkpoint {
    /// The top-level scalar `name`.
    pub fn scalar(&self, name: &str) -> Option<&Scalar> {
        self.scalars.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The top-level integer `name` (e.g. `epoch`, `global_counter`).
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.scalar(name)? {
            Scalar::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A non-tensor value stored at the top level of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A Python `int` that fits in `i64`.
    Int(i64),
    /// A Python `float`.
    Float(f64),
    /// A Python `bool`.
    Bool(bool),
    /// A Python `str`.
    Str(String),
}

/// Reads a checkpoint such as `{'epoch': 3, 'state_dict': {...}, 'optimizer': {...}}`:
/// the tensors as [`read_tensors`] finds them with no key, plus the top-level scalars.
pub fn read_checkpoint(path: impl AsRef<Path>) -> Result<Checkpoint, PthError> {
    let path = path.as_ref();
    let data = read_file(path).map_err(|e| PthError::new(path, e))?;
    load_checkpoint(&data).map_err(|e| PthError::new(path, e))
}

/// Removes `prefix` from the names that start with it, e.g. the `module.` that
/// `DataParallel` adds; other names are kept as they are.
pub fn strip_prefix(tensors: Vec<(String, Tensor)>, prefix: &str) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(name, t)| match name.strip_prefix(prefix) {
            Some(rest) => (rest.to_string(), t),
            None => (name, t),
        })
        .collect()
}

/// The whole file, which must be a regular file: a device such as /dev/zero would be read
/// without end, a pipe would block.
fn read_file(path: &Path) -> Result<Vec<u8>, ErrorKind> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(ErrorKind::NotAFile);
    }
    Ok(std::fs::read(path)?)
}

fn load_tensors(data: &[u8], key: Option<&str>) -> Result<Vec<(String, Tensor)>, ErrorKind> {
    let mut source = Source::open(data)?;
    let specs = select::state_dict(source.root(), key)?;
    materialize(&mut source, specs, data.len())
}

fn load_checkpoint(data: &[u8]) -> Result<Checkpoint, ErrorKind> {
    let mut source = Source::open(data)?;
    let specs = select::state_dict(source.root(), None)?;
    let scalars = select::entries(source.root())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), scalar(v)?)))
        .collect();
    Ok(Checkpoint {
        tensors: materialize(&mut source, specs, data.len())?,
        scalars,
    })
}

fn scalar(v: &pickle::Value) -> Option<Scalar> {
    use pickle::Value;
    match v {
        Value::Int(i) => Some(Scalar::Int(*i)),
        Value::Float(f) => Some(Scalar::Float(*f)),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Str(s) => Some(Scalar::Str(s.to_string())),
        _ => None,
    }
}

/// Builds the tensors, each storage read once however many tensors share it, and all
/// within the [`DataBudget`] of a file of `file_len` bytes.
fn materialize(
    source: &mut Source<'_>,
    specs: Vec<(String, tensor::TensorSpec)>,
    file_len: usize,
) -> Result<Vec<(String, Tensor)>, ErrorKind> {
    let mut budget = DataBudget::new(file_len);
    // Per storage: the most bytes one of its tensors needs, and the last tensor using it.
    let mut plan: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, (_, spec)) in specs.iter().enumerate() {
        let need = spec.storage.byte_len()?;
        let (most, last) = plan.entry(&spec.storage.key).or_insert((need, i));
        (*most, *last) = (need.max(*most), i);
    }
    // Storages read and still needed by a later tensor.
    let mut kept = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for (i, (name, spec)) in specs.iter().enumerate() {
        budget.charge(
            || format!("tensor {}", error::short(name)),
            spec.byte_len()? as u64,
        )?;
        let key = spec.storage.key.as_str();
        let own = spec.storage.byte_len()?;
        let (need, last) = plan.get(key).copied().unwrap_or((own, i));
        let bytes = match kept.remove(key) {
            Some(bytes) => bytes,
            None => source.storage(key, need, &mut budget)?,
        };
        let tensor = spec.materialize(bytes.get(..own).unwrap_or(&bytes))?;
        if last > i {
            kept.insert(key, bytes);
        }
        out.push((name.clone(), tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod fuzz;
