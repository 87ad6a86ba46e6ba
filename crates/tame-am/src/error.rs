use std::path::PathBuf;

use thiserror::Error;

/// An error of the attention mechanism or of its checkpoints.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AmError {
    /// A version name that is none of the four published ones.
    #[error(
        "unknown attention-mechanism version {0:?} \
         (expected TAME, Noskipconnection, NoskipNobatchnorm or Sigmoidinfeaturebranch)"
    )]
    UnknownVersion(String),
    /// The mechanism was asked to read no taps at all.
    #[error("the attention mechanism needs at least one tap")]
    NoTaps,
    /// A tap shape with a zero dimension.
    #[error("tap {index} has an empty shape {shape:?}")]
    EmptyTap {
        /// Position of the tap.
        index: usize,
        /// Its (C, H, W).
        shape: [usize; 3],
    },
    /// A forward pass got another number of taps than the mechanism was built for.
    #[error("expected {expected} tap tensors, got {got}")]
    TapCount {
        /// Taps the mechanism was built for.
        expected: usize,
        /// Tensors passed.
        got: usize,
    },
    /// A tap tensor whose shape does not fit the mechanism.
    #[error("tap {index}: expected shape (B, {}, {}, {}), got {got:?}", expected[0], expected[1], expected[2])]
    TapShape {
        /// Position of the tap.
        index: usize,
        /// The (C, H, W) the mechanism was built for.
        expected: [usize; 3],
        /// The tensor's shape.
        got: Vec<usize>,
    },
    /// Input of the wrong rank or size for a class-map computation.
    #[error("{0}")]
    BadInput(String),
    /// A class index outside the fuser's outputs.
    #[error("class index {index} is out of range (the mechanism has {classes} classes)")]
    ClassIndex {
        /// The offending index.
        index: i64,
        /// Number of classes.
        classes: usize,
    },
    /// Batch statistics need more than one value per channel.
    #[error("batch norm in train mode needs more than one value per channel (got a batch of {0})")]
    BatchTooSmall(usize),
    /// A state dict whose tensors do not fit the chosen taps and version.
    #[error("the state dict does not fit the attention mechanism: {0}")]
    State(#[from] Mismatch),
    /// A checkpoint whose tensors do not fit the chosen taps and version.
    #[error("{}: does not fit the attention mechanism: {mismatch}", path.display())]
    Mismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The first difference found.
        mismatch: Mismatch,
    },
    /// A tensor file that is not the one its sidecar was written for.
    #[error(
        "{}: does not match its sidecar {} (a checkpoint left half-written by a crash or a \
         kill; use an earlier one)",
        path.display(),
        sidecar.display()
    )]
    HalfWritten {
        /// The tensor file.
        path: PathBuf,
        /// Its sidecar.
        sidecar: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The JSON metadata next to a checkpoint is malformed.
    #[error("{}: invalid checkpoint metadata: {source}", path.display())]
    Metadata {
        /// The JSON file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A safetensors file that candle cannot read or write.
    #[error("{}: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: candle_core::Error,
    },
    /// A reference PyTorch checkpoint that cannot be read.
    #[error(transparent)]
    Pth(#[from] tame_pth::PthError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The first difference between a checkpoint's tensors and the expected ones.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Mismatch {
    /// An expected tensor is absent.
    #[error("missing tensor `{0}`")]
    Missing(String),
    /// The file holds a tensor the mechanism does not have.
    #[error("unexpected tensor `{0}`")]
    Unexpected(String),
    /// A tensor has another shape than expected.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        /// Reference name of the tensor.
        name: String,
        /// The shape the mechanism needs.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A tensor holds integers where floating-point values belong.
    #[error("tensor `{name}` holds {dtype:?} integers, expected floating-point values")]
    NotFloat {
        /// Reference name of the tensor.
        name: String,
        /// The tensor's type in the file.
        dtype: candle_core::DType,
    },
    /// A tensor holds NaN or infinite values.
    #[error("tensor `{0}` holds NaN or infinite values")]
    NonFinite(String),
    /// The checkpoint's metadata names another version.
    #[error("it holds version {found}, expected {expected}")]
    Version {
        /// The version asked for.
        expected: crate::Version,
        /// The version in the metadata.
        found: crate::Version,
    },
    /// The checkpoint's metadata names other tap shapes.
    #[error("it was trained on taps {found:?}, expected {expected:?}")]
    Taps {
        /// The tap shapes asked for.
        expected: Vec<crate::TapShape>,
        /// The tap shapes in the metadata.
        found: Vec<crate::TapShape>,
    },
}
