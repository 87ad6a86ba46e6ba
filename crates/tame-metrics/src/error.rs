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
    /// The attention mechanism failed (e.g. taps that do not fit it).
    #[error(transparent)]
    Am(#[from] tame_am::AmError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, MetricsError>;
