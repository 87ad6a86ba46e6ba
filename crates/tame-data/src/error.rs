//! The crate's error types: values naming the file (and list line) at fault.

use std::io;
use std::path::{Path, PathBuf};

/// Why one image file could not be turned into RGB pixels.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The path is a folder, a device or a FIFO, which are not read.
    #[error("{path}: not a regular file")]
    NotRegularFile {
        /// The path given as an image.
        path: PathBuf,
    },
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The image file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file ends before the image does (a JPEG without its end-of-image marker, a PNG
    /// cut short).
    #[error("cannot decode {path}: the file is truncated")]
    Truncated {
        /// The image file.
        path: PathBuf,
    },
    /// The image is wider or taller than allowed; it was not decoded.
    #[error(
        "cannot decode {path}: {width}x{height} pixels, more than the {max_side} per side allowed"
    )]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// Its width in pixels.
        width: u32,
        /// Its height in pixels.
        height: u32,
        /// The largest width or height allowed.
        max_side: u32,
    },
    /// The bytes are not a decodable image of a supported format.
    #[error("cannot decode {path}: {source}")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },
}

impl DecodeError {
    /// The image file at fault.
    pub fn path(&self) -> &Path {
        match self {
            Self::NotRegularFile { path }
            | Self::Read { path, .. }
            | Self::Truncated { path }
            | Self::TooLarge { path, .. }
            | Self::Decode { path, .. } => path,
        }
    }
}

/// Errors of list parsing and of loading the images a list names.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The list path is a folder, a device or a FIFO, which are not read.
    #[error("{list}: not a regular file")]
    ListNotRegularFile {
        /// The path given as a list.
        list: PathBuf,
    },
    /// The list file could not be read.
    #[error("cannot read list file {list}: {source}")]
    ListRead {
        /// The list file.
        list: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A line of the list file is malformed or has an out-of-range label.
    #[error("{list}:{line}: {problem}")]
    ListLine {
        /// The list file.
        list: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// The image named on a list line is missing or cannot be decoded.
    #[error("{list}:{line}: {source}")]
    Image {
        /// The list file.
        list: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The decoding failure (it names the image file).
        source: DecodeError,
    },
    /// The loader's settings cannot work (e.g. a batch size of zero).
    #[error("invalid loader configuration: {0}")]
    Config(String),
    /// The loader's worker threads could not be started.
    #[error("cannot start loader threads: {0}")]
    Threads(String),
}
