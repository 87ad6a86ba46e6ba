use candle_core::Tensor;

use crate::LossError;

/// The coefficients and constants of the loss. [`Default`] gives the reference's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Weight of the cross-entropy term (1.5).
    pub ce: f64,
    /// Weight of the area term (2).
    pub area: f64,
    /// Weight of the smoothness term (0.01).
    pub smoothness: f64,
    /// Exponent of the area term (0.3).
    pub area_power: f64,
    /// Offset added to the masks before the power (0.0005): keeps the gradient finite at 0.
    pub area_offset: f64,
    /// Weight of the squared border values in the smoothness term (0.3).
    pub border: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            ce: 1.5,
            area: 2.0,
            smoothness: 0.01,
            area_power: 0.3,
            area_offset: 0.0005,
            border: 0.3,
        }
    }
}

/// The loss and its weighted terms, as scalar tensors; `total = ce + area + smoothness`.
///
/// The terms are already multiplied by their weights, as the reference logs them.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// The differentiable total.
    pub total: Tensor,
    /// `weights.ce * CE`.
    pub ce: Tensor,
    /// `weights.area * Area`.
    pub area: Tensor,
    /// `weights.smoothness * Smooth`.
    pub smoothness: Tensor,
}

/// The TAME loss of a batch: `logits` (B, K) of the backbone on the masked images, `labels`
/// (B values in 0..K), `masks` the explanation maps (B, M, S, S) picked by a
/// [`MaskSet`](crate::MaskSet).
pub fn tame_loss(
    logits: &Tensor,
    labels: &[u32],
    masks: &Tensor,
    weights: &LossWeights,
) -> Result<LossParts, LossError> {
    let ce = (cross_entropy(logits, labels)? * weights.ce)?;
    let area = (area_loss(masks, weights.area_power, weights.area_offset)? * weights.area)?;
    let smoothness = (smoothness_loss(masks, weights.border)? * weights.smoothness)?;
    let total = ((&ce + &area)? + &smoothness)?;
    Ok(LossParts {
        total,
        ce,
        area,
        smoothness,
    })
}

/// Mean cross-entropy of `logits` (B, K) against `labels` (PyTorch's `CrossEntropyLoss`).
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor, LossError> {
    let (b, k) = logits.dims2().map_err(|_| {
        LossError::Shape(format!(
            "logits must have shape (B, K), got {:?}",
            logits.dims()
        ))
    })?;
    check_labels(labels, b, k)?;
    let target = tame_ops::host::upload_slice(labels, logits.device())?;
    Ok(candle_nn::loss::cross_entropy(logits, &target)?)
}

/// Area term: `mean((masks + offset)^power)`.
pub fn area_loss(masks: &Tensor, power: f64, offset: f64) -> Result<Tensor, LossError> {
    check_masks(masks)?;
    Ok((masks + offset)?.powf(power)?.mean_all()?)
}

/// Smoothness term of masks (B, M, H, W): squared differences of vertical and horizontal
/// neighbours, plus `border` times the squares of the first and last rows and columns (corner
/// values count twice, as in the reference), all summed and divided by `2 * B`.
pub fn smoothness_loss(masks: &Tensor, border: f64) -> Result<Tensor, LossError> {
    let (b, _, h, w) = check_masks(masks)?;
    let diff_sq = |dim: usize, len: usize| -> candle_core::Result<Tensor> {
        if len < 2 {
            return Tensor::zeros((), masks.dtype(), masks.device());
        }
        let d = (masks.narrow(dim, 1, len - 1)? - masks.narrow(dim, 0, len - 1)?)?;
        d.sqr()?.sum_all()
    };
    let edge_sq = |dim: usize, index: usize| masks.narrow(dim, index, 1)?.sqr()?.sum_all();
    let edges = (((edge_sq(2, h - 1)? + edge_sq(2, 0)?)? + edge_sq(3, w - 1)?)? + edge_sq(3, 0)?)?;
    let total = ((diff_sq(2, h)? + diff_sq(3, w)?)? + (edges * border)?)?;
    Ok((total / (2 * b) as f64)?)
}

fn check_masks(masks: &Tensor) -> Result<(usize, usize, usize, usize), LossError> {
    match masks.dims4() {
        Ok(d) if d.0 * d.1 * d.2 * d.3 > 0 && masks.dtype().is_float() => Ok(d),
        _ => Err(LossError::Shape(format!(
            "masks must be a float tensor of shape (B, M, S, S), got {:?} {:?}",
            masks.dtype(),
            masks.dims()
        ))),
    }
}

pub(crate) fn check_labels(labels: &[u32], batch: usize, classes: usize) -> Result<(), LossError> {
    if labels.len() != batch {
        return Err(LossError::Shape(format!(
            "{} labels for a batch of {batch}",
            labels.len()
        )));
    }
    match labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        Some((sample, &label)) => Err(LossError::Label {
            sample,
            label,
            classes,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    fn seeded(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Central finite differences of the total against its analytic gradient, in float64.
    #[test]
    fn gradient_matches_finite_differences() {
        let labels = [1u32, 0];
        let z0 = seeded(&[2, 3], 1).affine(4.0, -2.0).unwrap();
        let m0 = seeded(&[2, 2, 3, 4], 2);
        let w = LossWeights::default();
        let loss = |z: &Tensor, m: &Tensor| {
            tame_loss(z, &labels, m, &w)
                .unwrap()
                .total
                .to_scalar::<f64>()
                .unwrap()
        };
        let (z, m) = (
            Var::from_tensor(&z0).unwrap(),
            Var::from_tensor(&m0).unwrap(),
        );
        let grads = tame_loss(z.as_tensor(), &labels, m.as_tensor(), &w)
            .unwrap()
            .total
            .backward()
            .unwrap();
        let h = 1e-6;
        for (var, base, other_is_z) in [(&z, &z0, false), (&m, &m0, true)] {
            let analytic = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let flat = base.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in 0..flat.len() {
                let shifted = |d: f64| {
                    let mut v = flat.clone();
                    v[i] += d;
                    let t = Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap();
                    if other_is_z {
                        loss(&z0, &t)
                    } else {
                        loss(&t, &m0)
                    }
                };
                let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
                assert!(
                    (numeric - analytic[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
                    "element {i}: numeric {numeric} vs analytic {}",
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn smoothness_of_a_constant_map_is_its_border() {
        // A constant map of value v: no neighbour differences; each border line of length
        // 3 or 4 contributes its squares; two samples, one map each, divided by 2 * B = 4.
        let m = Tensor::full(0.5f64, (2, 1, 3, 4), &Device::Cpu).unwrap();
        let s = smoothness_loss(&m, 0.3)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let per_map = 0.3 * 0.25 * (4.0 + 4.0 + 3.0 + 3.0);
        assert!((s - 2.0 * per_map / 4.0).abs() < 1e-12, "{s}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let m = Tensor::zeros((2, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let w = LossWeights::default();
        assert!(matches!(
            tame_loss(&z, &[0, 3], &m, &w),
            Err(LossError::Label {
                sample: 1,
                label: 3,
                classes: 3
            })
        ));
        assert!(matches!(
            tame_loss(&z, &[0], &m, &w),
            Err(LossError::Shape(_))
        ));
        let flat = Tensor::zeros((2, 9), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            tame_loss(&z, &[0, 1], &flat, &w),
            Err(LossError::Shape(_))
        ));
        assert!(crate::MaskSet::PerSample.select(&m, &[0, 2]).is_err());
    }
}
