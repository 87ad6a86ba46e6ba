use std::path::PathBuf;

/// Everything that can go wrong building or running a backbone.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("unknown model `{name}` (valid: {valid})")]
    UnknownModel { name: String, valid: String },

    #[error("unknown tap `{name}` for {model}; valid taps: {valid}")]
    UnknownTap {
        model: String,
        name: String,
        valid: String,
    },

    #[error(
        "tap `{name}` gives {shape:?}, not a feature map (batch, channels, height, width): \
         the attention mechanism reads convolutional taps (`tame inspect` lists them)"
    )]
    NotAFeatureMap { name: String, shape: Vec<usize> },

    #[error("{path}: {message}")]
    WeightsFile { path: PathBuf, message: String },

    #[error("{0}")]
    Hub(String),

    /// A precision unknown, or one the device cannot run.
    #[error("{0}")]
    Precision(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
