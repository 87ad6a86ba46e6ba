//! Comparison explainers for TAME: Grad-CAM, Grad-CAM++, Score-CAM and RISE, each an
//! [`Explainer`](tame_metrics::Explainer) over any [`Backbone`](tame_backbones::Backbone), so
//! that every metric reads their maps as it reads TAME's. Formulas, defaults and sources:
//! `docs/EXPLAINERS.md`.
//!
//! The methods run their own forward (and backward) passes: their `taps()` are empty and they
//! ignore the taps the evaluator passes. They return raw maps (Grad-CAM family: at the tap's
//! resolution; RISE: at the input's), which `tame_metrics::normalize_maps` min-max normalises
//! and resizes.
//!
//! The gradient methods are one [`GradientCam`] each, differing only in their
//! [`ChannelWeights`] (Grad-CAM: [`MeanGradient`]; Grad-CAM++: [`PlusPlusWeights`]): a new
//! gradient method is one small file with one `weights` function.

mod base;
mod grad_cam;
mod grad_cam_plus_plus;
mod gradients;
mod rise;
mod score_cam;

pub use grad_cam::{GradCam, GradCamConfig, MeanGradient};
pub use grad_cam_plus_plus::{GradCamPlusPlus, PlusPlusWeights};
pub use gradients::{ChannelWeights, GradientCam};
pub use rise::{Rise, RiseConfig};
pub use score_cam::{ScoreCam, ScoreCamConfig};
