//! The reference rule that keeps a fraction of a map's pixels (TAME-SPEC section 6), on the
//! host and on the maps' device.

use candle_core::{DType, Tensor};

use crate::{MetricsError, Result};

/// Keeps the fraction `keep` (in (0, 1]) of the highest values of `map` in place, zeroing the
/// others by the reference rule, ties included; kept values are unchanged (not binarised).
///
/// With N = `map.len()` and p = 1 - `keep`: when p > 0, v is the ⌊N·p⌋-th smallest value
/// (1-indexed, ties counted) and every value < v becomes 0; if the number of non-zero values
/// then exceeds ⌈keep·N⌉ by j ≥ 1, the first j positions (row-major) whose value equals v
/// become 0. So with many equal values the kept set is cut at v in reading order.
pub fn keep_fraction(map: &mut [f32], keep: f64) {
    let n = map.len();
    let p = 1.0 - keep;
    if p <= 0.0 || n == 0 {
        return;
    }
    // ⌊N·p⌋ = 0 has no k-th value: nothing is below the threshold.
    let k = (n as f64 * p).floor() as usize;
    if k == 0 {
        return;
    }
    let mut sorted = map.to_vec();
    let (_, &mut v, _) = sorted.select_nth_unstable_by(k - 1, f32::total_cmp);
    for x in map.iter_mut() {
        if *x < v {
            *x = 0.0;
        }
    }
    let limit = (keep * n as f64).ceil() as usize;
    let nonzero = map.iter().filter(|&&x| x != 0.0).count();
    let mut excess = nonzero.saturating_sub(limit);
    for x in map.iter_mut() {
        if excess == 0 {
            break;
        }
        if *x == v {
            *x = 0.0;
            excess -= 1;
        }
    }
}

/// [`keep_fraction`] of each of `maps` (n, H, W) f32, computed where the maps are: the same
/// values, bit for bit, with no copy to the host but one flag per map and round of the
/// threshold search.
pub fn keep_fraction_on_device(maps: &Tensor, keep: f64) -> Result<Tensor> {
    let (n, h, w) = maps.dims3()?;
    let len = h * w;
    let k = (len as f64 * (1.0 - keep)).floor() as usize;
    if keep >= 1.0 || k == 0 {
        return Ok(maps.clone());
    }
    let flat = maps.reshape((n, len))?;
    let v = kth_smallest(&flat, k)?;
    let zeros = flat.zeros_like()?;
    let kept = flat.broadcast_ge(&v)?.where_cond(&flat, &zeros)?;
    // Past ⌈keep·N⌉ non-zero values, the first ones equal to v (row-major) go too.
    let limit = (keep * len as f64).ceil();
    let nonzero = count(&kept.ne(0f32)?)?;
    let excess = (nonzero - limit)?.relu()?;
    let at_v = kept.broadcast_eq(&v)?;
    let rank = running_count(&at_v, n, h, w)?;
    let cut = at_v
        .to_dtype(DType::F32)?
        .mul(&rank.broadcast_le(&excess)?.to_dtype(DType::F32)?)?;
    Ok(cut
        .ne(0f32)?
        .where_cond(&zeros, &kept)?
        .reshape((n, h, w))?)
}

/// Each row's `k`-th smallest value (1-indexed), (n, 1), by a search that halves an interval
/// (lo, hi] holding it until no other value of the row lies in it: then it is the smallest
/// value above lo. Counting is exact (f32 holds whole numbers to 2^24).
fn kth_smallest(rows: &Tensor, k: usize) -> Result<Tensor> {
    let (n, len) = rows.dims2()?;
    if len >= 1 << 24 {
        return Err(MetricsError::BadInput(format!(
            "maps of {len} pixels are too large to count in f32"
        )));
    }
    let k = k as f64;
    // count(x <= lo) < k <= count(x <= hi) holds throughout.
    let mut lo = (rows.min_keepdim(1)? - 1.0)?;
    let mut hi = rows.max_keepdim(1)?;
    let inf = Tensor::full(f32::INFINITY, (n, len), rows.device())?;
    // Twenty halvings part values 1e-6 apart in [0, 1]; closer ones take more rounds.
    for _round in 0..8 {
        for _ in 0..20 {
            let mid = ((&lo + &hi)? * 0.5)?;
            let enough = count(&rows.broadcast_le(&mid)?)?.ge(k)?;
            hi = enough.where_cond(&mid, &hi)?;
            lo = enough.where_cond(&lo, &mid)?;
        }
        let above = rows.broadcast_gt(&lo)?.where_cond(rows, &inf)?;
        let v = above.min_keepdim(1)?;
        let found = count(&rows.broadcast_le(&v)?)?.ge(k)?;
        if tame_ops::host::download::<u8>(&found.min(0)?)?.first() == Some(&1) {
            return Ok(v);
        }
    }
    Err(MetricsError::BadInput(
        "a map's values are too close together to rank".into(),
    ))
}

/// How many of each row's flags (u8) are set, (n, 1) f32.
fn count(flags: &Tensor) -> Result<Tensor> {
    Ok(flags.to_dtype(DType::F32)?.sum_keepdim(1)?)
}

/// For each position of `flags` (n, H·W, u8), how many flags are set up to and including it
/// in row-major order, as f32: a running sum within each image row (a product with an upper
/// triangle of ones) plus the totals of the rows above it.
fn running_count(flags: &Tensor, n: usize, h: usize, w: usize) -> Result<Tensor> {
    let device = flags.device();
    let flags = flags.to_dtype(DType::F32)?.reshape((n * h, w))?;
    let within = flags.matmul(&Tensor::triu2(w, DType::F32, device)?)?;
    let totals = within.narrow(1, w - 1, 1)?.reshape((n, h))?;
    let strictly_above =
        (Tensor::triu2(h, DType::F32, device)? - Tensor::eye(h, DType::F32, device)?)?;
    let before = totals.matmul(&strictly_above)?;
    Ok(within
        .reshape((n, h, w))?
        .broadcast_add(&before.unsqueeze(2)?)?
        .reshape((n, h * w))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_at_one() {
        let mut m = vec![0.3, 0.0, 1.0, 0.5];
        keep_fraction(&mut m, 1.0);
        assert_eq!(m, vec![0.3, 0.0, 1.0, 0.5]);
    }

    #[test]
    fn distinct_values_keep_the_top_fraction() {
        let mut m: Vec<f32> = (1..=8).map(|i| i as f32 / 8.0).collect();
        keep_fraction(&mut m, 0.25);
        // k = 6: v = 0.75, smaller values go; three remain, one over ⌈2⌉: 0.75 goes too.
        let expected = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.875, 1.0];
        assert_eq!(m, expected);
    }

    #[test]
    fn ties_at_the_threshold_are_cut_in_reading_order() {
        let mut m = vec![0.5, 0.1, 0.5, 0.5, 0.9, 0.5, 0.2, 0.5];
        keep_fraction(&mut m, 0.5);
        // k = 4, sorted: 0.1 0.2 0.5 0.5 ... so v = 0.5; non-zero after the cut: six, limit 4,
        // so the first two 0.5s (positions 0 and 2) go.
        assert_eq!(m, vec![0.0, 0.0, 0.0, 0.5, 0.9, 0.5, 0.0, 0.5]);
    }

    #[test]
    fn zero_threshold_leaves_zeros_counted_as_removed() {
        // v = 0: the zeros are "removed" already; the non-zero count is within the limit.
        let mut m = vec![0.0, 0.0, 0.0, 0.4, 0.0, 0.7];
        keep_fraction(&mut m, 0.5);
        assert_eq!(m, vec![0.0, 0.0, 0.0, 0.4, 0.0, 0.7]);
    }
}

#[cfg(test)]
mod device_tests {
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The device rule gives the host rule's values exactly, on maps with runs of equal
    /// values (ties at the threshold), zeros, values 1e-7 apart, and non-square shapes.
    #[test]
    fn the_device_rule_is_the_host_rule() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (h, w) in [(7, 7), (13, 5), (32, 24)] {
            let len = h * w;
            let maps: Vec<Vec<f32>> = vec![
                (0..len).map(|_| rng.random::<f32>()).collect(),
                (0..len)
                    .map(|_| (rng.random_range(0..4) as f32) / 3.0)
                    .collect(),
                (0..len)
                    .map(|i| if i % 3 == 0 { 0.0 } else { 0.5 })
                    .collect(),
                (0..len).map(|i| 0.5 + i as f32 * 1e-7).collect(),
                vec![0.25; len],
            ];
            let flat: Vec<f32> = maps.concat();
            let t = Tensor::from_vec(flat, (maps.len(), h, w), &Device::Cpu).unwrap();
            for keep in [1.0, 0.5, 0.15, 0.01] {
                let got = keep_fraction_on_device(&t, keep).unwrap();
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, map) in maps.iter().enumerate() {
                    let mut want = map.clone();
                    keep_fraction(&mut want, keep);
                    let row = &got[i * len..(i + 1) * len];
                    assert!(
                        row.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{h}x{w}, map {i}, keep {keep}"
                    );
                }
            }
        }
    }
}
