//! The TAME attention mechanism (Ntrougkas, Gkalelis, Mezaris, IEEE ISM 2022) on candle.
//!
//! The mechanism reads feature maps tapped from several layers of a frozen classifier and
//! outputs, for each of the 1000 classes, a logit map **c** of side S (the first tap's height,
//! at most 56); the explanation maps are a = sigmoid(c). All four published versions are
//! built from the tap shapes alone, for any backbone and any taps.
//!
//! Explaining k classes needs only k rows of the final 1x1 fuser, so the work is split:
//! [`AttentionMechanism::branches`] runs the branches once, then
//! [`AttentionMechanism::class_logits`] (one class list for the batch) or
//! [`AttentionMechanism::per_sample_class_logits`] (one list per sample) computes only the
//! maps asked for, applying the fuser's rows to each branch before its resize to S x S (the
//! same numbers as the reference's resize-concatenate-fuse, with k channels resized instead
//! of all); [`AttentionMechanism::forward`] gives all 1000 in the reference's order.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use tame_am::{AmConfig, AttentionMechanism, TapShape, Version};
//!
//! let taps = vec![TapShape::new(256, 28, 28), TapShape::new(512, 14, 14), TapShape::new(512, 7, 7)];
//! let config = AmConfig::new(Version::Tame, taps)?;
//! let am = AttentionMechanism::new(&config, 0, DType::F32, &Device::Cpu)?;
//! # let features: Vec<Tensor> = vec![];
//! let branches = am.branches(&features, false)?;
//! let beagle = am.class_logits(&branches, &[162])?; // (B, 1, 28, 28)
//! # Ok::<(), tame_am::AmError>(())
//! ```
//!
//! Checkpoints: [`AttentionMechanism::save`] writes safetensors under the reference tensor
//! names plus a JSON sidecar ([`CheckpointMeta`]); [`AttentionMechanism::load`] reads those
//! and reference PyTorch checkpoints.

mod checkpoint;
mod config;
mod error;
mod layers;
mod mechanism;
mod version;

pub use checkpoint::{
    sidecar_path, write_checkpoint_pair, CheckpointMeta, LoadedCheckpoint, Storage,
};
pub use config::{AmConfig, TapShape, NUM_CLASSES};
pub use error::{AmError, Mismatch};
pub use mechanism::{AttentionMechanism, Branches};
pub use version::Version;
