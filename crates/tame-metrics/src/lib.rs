//! Faithfulness metrics of explanation maps: Average Drop and Increase in Confidence at
//! 100/50/15 % kept pixels (the TAME protocol), ROAD (remove and debias, MoRF and LeRF) and
//! insertion/deletion AUC.
//!
//! Every metric reads maps through one interface, [`Explainer`]: raw maps of any resolution
//! for the classes asked for, which the metrics min-max normalise and resize to the image
//! ([`normalize_maps`]). [`TameExplainer`] adapts an attention mechanism; other explainers
//! (Grad-CAM, RISE ...) implement the same trait and are scored by the same code.
//!
//! [`Evaluator::evaluate`] runs one batch: the unmasked forward pass (prediction, its
//! probability Y and the explainer's taps) happens once, then each selected metric classifies
//! its modified images. [`Totals`] accumulates per-image scores into a [`Report`].
//!
//! ```no_run
//! # fn demo(backbone: &dyn tame_backbones::Backbone, am: &tame_am::AttentionMechanism,
//! #         images: &candle_core::Tensor) -> Result<(), tame_metrics::MetricsError> {
//! use tame_metrics::{EvalConfig, Evaluator, TameExplainer, Totals};
//!
//! let explainer = TameExplainer::new(am, backbone.default_taps())?;
//! let evaluator = Evaluator::new(backbone, &explainer, EvalConfig::default())?;
//! let mut totals = Totals::default();
//! for scores in evaluator.evaluate(images, 0)? {
//!     totals.add(&scores);
//! }
//! let report = totals.report();
//! println!("AD(100%) = {:.2}", report.ad_ic.unwrap().ad[0]);
//! # Ok(()) }
//! ```

mod ad_ic;
mod classify;
mod error;
mod evaluate;
mod explainer;
mod impute;
mod insdel;
mod keep;
mod road;

pub use ad_ic::{
    ad_ic_scores, ad_ic_scores_on_device, AdIcReport, AdIcScores, AdIcTotals, KEEP_LEVELS,
};
pub use classify::Classify;
pub use error::{MetricsError, Result};
pub use evaluate::{EvalConfig, Evaluator, ImageScores, MetricSet, Report, Totals};
pub use explainer::{normalize_maps, Explainer, TameExplainer};
pub use impute::{impute_linear, ImputeConfig};
pub use insdel::{
    gaussian_blur, insertion_deletion, insertion_deletion_with, InsDelConfig, InsDelReport,
    InsDelScores, InsDelTotals, Substrates,
};
pub use keep::{keep_fraction, keep_fraction_on_device};
pub use road::{road_scores, RoadConfig, RoadOrder, RoadPoint, RoadReport, RoadScores, RoadTotals};
