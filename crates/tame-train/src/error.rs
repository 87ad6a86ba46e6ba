use std::path::PathBuf;

use thiserror::Error;

/// An error of training, checkpointing or the range test.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// An invalid setting (zero epochs, an empty list, ...).
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite; the checkpoints written before are kept.
    #[error(
        "the loss is {value} at step {step} (epoch {epoch}); stopped, the last good checkpoint \
         is kept"
    )]
    NonFinite {
        /// Global optimizer step (1-based) whose loss was not finite.
        step: u64,
        /// Epoch (1-based) of that step.
        epoch: u64,
        /// The loss value.
        value: f64,
    },
    /// The loss became NaN or infinite during the range test, which stopped there.
    #[error(
        "the loss is {value} at batch {batch} of the range test (learning rate {lr:.3e}); \
         the test stopped there"
    )]
    RangeTestNonFinite {
        /// Batch (1-based) of the pass whose loss was not finite.
        batch: u64,
        /// Learning rate of the weights group at that batch.
        lr: f64,
        /// The loss value.
        value: f64,
    },
    /// A checkpoint that cannot be read or does not belong to this run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Drawing or encoding a plot failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// The attention mechanism refused its input or a checkpoint (boxed: it is large).
    #[error(transparent)]
    Am(Box<tame_am::AmError>),
    /// The backbone failed.
    #[error(transparent)]
    Backbone(#[from] tame_backbones::BackboneError),
    /// The loss refused its input.
    #[error(transparent)]
    Loss(#[from] tame_loss::LossError),
    /// Loading images failed.
    #[error(transparent)]
    Data(#[from] tame_data::DataError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<tame_am::AmError> for TrainError {
    fn from(e: tame_am::AmError) -> Self {
        TrainError::Am(Box::new(e))
    }
}
