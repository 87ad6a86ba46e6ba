//! The crate's error type.

/// Why a metric could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Inputs of the wrong shape or out of range (maps, classes, settings).
    #[error("{0}")]
    BadInput(String),
    /// A `--metrics` name that is none of `ad-ic`, `road`, `insdel`.
    #[error("unknown metric `{0}` (expected ad-ic, road or insdel)")]
    UnknownMetric(String),
    /// The backbone failed (e.g. an unknown tap name).
    #[error(transparent)]
    Backbone(#[from] tame_backbones::BackboneError),
    /// The attention mechanism failed (e.g. taps that do not fit it). Boxed: it is large,
    /// and every `Result` of this crate would carry its size.
    #[error(transparent)]
    Am(Box<tame_am::AmError>),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<tame_am::AmError> for MetricsError {
    fn from(err: tame_am::AmError) -> Self {
        MetricsError::Am(Box::new(err))
    }
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, MetricsError>;
