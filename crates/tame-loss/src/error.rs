use thiserror::Error;

/// An error of the loss computation.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LossError {
    /// An input of the wrong rank or size.
    #[error("{0}")]
    Shape(String),
    /// A label outside the logits' classes.
    #[error("label {label} of sample {sample} is out of range (there are {classes} classes)")]
    Label {
        /// The sample.
        sample: usize,
        /// Its label.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
