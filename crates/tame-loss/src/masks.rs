use candle_core::Tensor;

use crate::loss::check_labels;
use crate::LossError;

/// Which explanation maps the area and smoothness terms see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskSet {
    /// The reference's `a[:, y]`: every image's maps of all the batch's labels, (B, B, S, S).
    #[default]
    BatchLabels,
    /// Each image's map of its own label, `a[b, y_b]`, (B, 1, S, S).
    PerSample,
}

impl MaskSet {
    /// The class list of each sample whose maps this set holds: the whole label list for
    /// every sample, or the sample's own label. This is what to ask the attention mechanism
    /// for when it computes only selected maps.
    pub fn classes(self, labels: &[u32]) -> Vec<Vec<u32>> {
        match self {
            MaskSet::BatchLabels => vec![labels.to_vec(); labels.len()],
            MaskSet::PerSample => labels.iter().map(|&l| vec![l]).collect(),
        }
    }

    /// Selects this set from the maps of all classes, `a` of shape (B, C, S, S).
    pub fn select(self, a: &Tensor, labels: &[u32]) -> Result<Tensor, LossError> {
        let (b, c, s, t) = a.dims4().map_err(|_| {
            LossError::Shape(format!(
                "maps must have shape (B, C, S, S), got {:?}",
                a.dims()
            ))
        })?;
        check_labels(labels, b, c)?;
        let idx = tame_ops::host::upload_slice(labels, a.device())?;
        Ok(match self {
            MaskSet::BatchLabels => a.index_select(&idx, 1)?,
            MaskSet::PerSample => {
                let idx = idx
                    .reshape((b, 1, 1, 1))?
                    .broadcast_as((b, 1, s, t))?
                    .contiguous()?;
                a.gather(&idx, 1)?
            }
        })
    }
}
