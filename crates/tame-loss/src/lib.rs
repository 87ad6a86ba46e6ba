//! The TAME training loss (Ntrougkas, Gkalelis, Mezaris, IEEE ISM 2022):
//! `1.5 * CE + 2 * Area + 0.01 * Smooth`.
//!
//! - CE: mean cross-entropy of the backbone's logits on the masked images against the labels;
//! - Area: `mean((M + 0.0005)^0.3)` over every mask value;
//! - Smooth: the sum of squared vertical and horizontal neighbour differences plus
//!   `0.3 *` the sum of squares of the four border rows and columns, divided by `2 * B`.
//!
//! M is the set of explanation maps (sigmoid of the mechanism's logits) at the mechanism's own
//! resolution (S x S, not the 224 x 224 upsampled masks), as in the reference. By default it is
//! the reference's set `a[:, y]`: for every image, the maps of **all labels present in the
//! batch**, (B, B, S, S) ([`MaskSet::BatchLabels`]); [`MaskSet::PerSample`] keeps each
//! image's own map, (B, 1, S, S).
//!
//! Everything is built from candle operations that have backward passes (`log_softmax`,
//! `gather`, `powf`, `narrow`, `sqr`, sums), so the total is differentiable.

mod error;
mod loss;
mod masks;

pub use error::LossError;
pub use loss::{area_loss, cross_entropy, smoothness_loss, tame_loss, LossParts, LossWeights};
pub use masks::MaskSet;
