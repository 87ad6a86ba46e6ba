//! Training of TAME attention mechanisms (section 4 of the method) and the learning-rate
//! range test (section 5).
//!
//! - [`Sgd`]: PyTorch's `torch.optim.SGD` (Nesterov, per-group learning rate, weight decay
//!   and momentum), with its momentum buffers exposed for checkpoints;
//! - [`OneCycle`]: PyTorch's `OneCycleLR` (two cosine phases, momentum cycling);
//! - [`Trainer`]: one optimizer step per batch, epochs, checkpoints and exact resumption;
//! - [`lr_range_test`]: the range test, [`suggest_max_lr`] and [`plot_lr_curves`].
//!
//! The crate touches no terminal: progress is reported to a [`StepObserver`].

mod checkpoint;
mod error;
mod lr_finder;
mod plot;
mod schedule;
mod sgd;
mod trainer;

pub use checkpoint::{
    find_latest_checkpoint, read_checkpoint, write_checkpoint, CheckpointScan, TrainCheckpoint,
    TrainState, OPTIMIZER_PREFIX,
};
pub use error::TrainError;
pub use lr_finder::{
    lr_range_test, moving_average, suggest_max_lr, LrCurve, LrTestConfig, LrTestOutcome,
};
pub use plot::{plot_lr_curves, AxisRanges};
pub use schedule::OneCycle;
pub use sgd::{ParamGroup, Sgd};
pub use trainer::{
    BackboneMode, RunInputs, StepObserver, StepRecord, StopReason, TrainConfig, TrainOutcome,
    Trainer,
};
