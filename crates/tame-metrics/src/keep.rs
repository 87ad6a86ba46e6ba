//! The reference rule that keeps a fraction of a map's pixels (TAME-SPEC section 6).

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
