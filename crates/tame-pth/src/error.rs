//! Error types. Every public error names the file it came from.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// An error while reading a PyTorch checkpoint: the file and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct PthError {
    path: PathBuf,
    kind: ErrorKind,
}

impl PthError {
    pub(crate) fn new(path: &Path, kind: ErrorKind) -> Self {
        Self {
            path: path.to_path_buf(),
            kind,
        }
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

/// What went wrong while reading a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// The path names a folder, device or pipe: only regular files are read.
    #[error("not a regular file")]
    NotAFile,
    /// The file is neither a zip archive nor a legacy PyTorch pickle.
    #[error("not a PyTorch checkpoint: {0}")]
    BadMagic(String),
    /// The data ends before a structure it declares.
    #[error("file is truncated: {0} ends early")]
    Truncated(&'static str),
    /// The pickle stream holds an opcode this reader does not know.
    #[error("unknown pickle opcode 0x{opcode:02x} at byte {offset} of the pickle")]
    UnknownOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its position in the pickle stream.
        offset: usize,
    },
    /// A storage type this reader cannot convert (e.g. complex or quantized).
    #[error("unsupported storage type {0}")]
    UnsupportedStorage(String),
    /// A valid checkpoint that uses a feature this reader does not support.
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    /// Inconsistent or corrupt content.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// The zip container is corrupt.
    #[error("bad zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// A zip entry declares more data than this reader accepts for it.
    #[error(
        "zip entry {name} declares {}, more than the {} allowed",
        size(*declared),
        size(*limit)
    )]
    EntryTooLarge {
        /// The entry's name.
        name: String,
        /// Its declared uncompressed size, in bytes.
        declared: u64,
        /// The most accepted, in bytes.
        limit: u64,
    },
    /// Decoding a pickle reached one of its limits (e.g. "memo exceeds 1048576 entries").
    #[error("pickle {0}")]
    PickleLimit(String),
    /// The storages read and the tensors built would take far more memory than the file's
    /// size explains: at most 8 times its size plus 64 MiB.
    #[error(
        "{what} brings the data read to {}, more than the {} allowed for a file of {} \
         ({} times its size plus {})",
        size(*total),
        size(*limit),
        size(*file),
        crate::budget::RATIO,
        size(crate::budget::SLACK)
    )]
    TooMuchData {
        /// The storage or tensor that went over: "storage KEY" or "tensor NAME".
        what: String,
        /// The bytes it would bring the total to.
        total: u64,
        /// The most allowed, in bytes.
        limit: u64,
        /// The file's size, in bytes.
        file: u64,
    },
    /// The requested key is not in the top-level dict.
    #[error("key {key:?} not found; keys present: {}", list(keys))]
    KeyNotFound {
        /// The key asked for.
        key: String,
        /// The string keys of the top-level dict.
        keys: Vec<String>,
    },
    /// The object that should hold tensors is not a dict.
    #[error("{at} is {found}, not a dict")]
    NotADict {
        /// Which object: "the top-level object" or "entry KEY".
        at: String,
        /// What it is instead.
        found: String,
    },
    /// The selected dict holds no tensors.
    #[error(
        "no tensors in {at}; keys present: {}; entries holding tensors: {}",
        list(keys),
        list(holding_tensors)
    )]
    NoTensors {
        /// Which dict: "the top-level dict" or "entry KEY".
        at: String,
        /// Its string keys.
        keys: Vec<String>,
        /// Those of its entries that are dicts holding tensors (candidate keys).
        holding_tensors: Vec<String>,
    },
    /// candle refused to build a tensor.
    #[error("cannot build a tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// A byte count for messages: "512 bytes", "64.0 MiB".
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Names for a one-line message: the first 20, each cut short, then how many more.
fn list(items: &[String]) -> String {
    const SHOWN: usize = 20;
    let shown: Vec<_> = items.iter().take(SHOWN).map(|s| short(s)).collect();
    match items.len() {
        0 => "none".to_string(),
        n if n <= SHOWN => shown.join(", "),
        n => format!("{}, and {} more", shown.join(", "), n - SHOWN),
    }
}

/// `s` cut to its first 60 characters, for a one-line message.
pub(crate) fn short(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(60) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}…", &s[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::{list, short, size};

    #[test]
    fn sizes_read_as_bytes_or_binary_units() {
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(1023), "1023 bytes");
        assert_eq!(size(64 << 20), "64.0 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn long_names_and_lists_are_cut_short() {
        assert_eq!(short("conv1.weight"), "conv1.weight");
        let long = "é".repeat(100);
        assert_eq!(short(&long), format!("{}…", "é".repeat(60)));
        let names: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        assert_eq!(list(&names[..2]), "0, 1");
        assert!(list(&names).ends_with(", 18, 19, and 5 more"));
        assert_eq!(list(&[]), "none");
    }
}
