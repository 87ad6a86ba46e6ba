//! Loops over slices that the kernels share: outputs made in parallel chunk by chunk, rows
//! split into their two phases, the ReLU forward and backward.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::Float;

/// `len` values made in parallel, `chunk` at a time, by `fill(index, chunk)` (chunk `index`
/// holds values `index * chunk..`): each chunk is zeroed by the task that fills it, while it
/// is in that core's cache. Zero-filling a whole output first is a pass over all of it on
/// one thread (with the convolutions' output fill, ~7 % of a ResNet-50 training step).
pub(crate) fn par_chunks_zeroed<T: Float>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let mut values: Vec<T> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, part)| {
            part.fill(MaybeUninit::new(T::ZERO));
            // SAFETY: every value of the part was just written; MaybeUninit<T> has T's layout.
            let part = unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(i, part);
        });
    // SAFETY: the parts cover 0..len and were all written above.
    unsafe { values.set_len(len) };
    values
}

/// As [`par_chunks_zeroed`] for a `fill` that writes every value of its chunk itself: no
/// zeroing first (a batch norm's output and input gradient, ~1.5 % of a ResNet-50
/// training step as memset).
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
pub(crate) unsafe fn par_chunks_written<T: Float>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut values: Vec<T> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, part)| fill(i, part));
    // SAFETY: the parts cover 0..len and the caller vouches that `fill` wrote them all.
    unsafe { values.set_len(len) };
    values
}

/// input[2t] -> even[t] and input[2t + 1] -> odd[t] (even and odd as long), as far as
/// they reach: a row split into its two phases for a stride-2 window (convolution, max
/// pool, Winograd's blocks). One pass over pairs: strided gathers ran one value at a time.
pub(crate) fn split_pairs<T: Float>(input: &[T], even: &mut [T], odd: &mut [T]) {
    let pairs = input.chunks_exact(2);
    let last = pairs.remainder().first();
    for ((pair, e), o) in pairs.zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
    // An odd-length input's last value, input[2 · (len / 2)], goes to even[len / 2].
    if let (Some(&v), Some(d)) = (last, even.get_mut(input.len() / 2)) {
        *d = v;
    }
}

/// ReLU in place (NaN stays NaN, as PyTorch's).
///
/// Every value is stored back, the kept ones as `v + 0` (-0 becomes +0): a store of `v`
/// itself is a no-op the compiler drops, leaving a store only where the value is negative,
/// which vectorises to masked stores. AMD's cores run those slowly: they were a third of the
/// time of the convolutions' bias, residual and ReLU passes in ResNet-50's forward pass.
pub(crate) fn clamp_negatives<T: Float>(values: &mut [T]) {
    for v in values {
        *v = if *v < T::ZERO { T::ZERO } else { *v + T::ZERO };
    }
}

/// `g` where `y` > 0, else 0, in parallel: the gradient `g` of a ReLU's output `y` passed
/// back through it (PyTorch's rule: no gradient where the output is zero).
pub fn relu_masked<T: Float>(g: &[T], y: &[T]) -> Vec<T> {
    g.par_iter()
        .zip(y)
        .map(|(&g, &y)| if y > T::ZERO { g } else { T::ZERO })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{clamp_negatives, par_chunks_written, par_chunks_zeroed};

    /// As the plain `if v < 0 { v = 0 }`, NaN and infinities included, over a length that
    /// leaves a remainder after the vector loop.
    #[test]
    fn relu_in_place_zeroes_the_negatives_only() {
        let mut values: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        values.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            -1e-30,
        ]);
        let mut expected = values.clone();
        for v in &mut expected {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
        clamp_negatives(&mut values);
        for (i, (v, e)) in values.iter().zip(&expected).enumerate() {
            assert!(v == e || (v.is_nan() && e.is_nan()), "{i}: {v} vs {e}");
        }
        let mut doubles = vec![-2.0f64, 3.0, f64::NAN];
        clamp_negatives(&mut doubles);
        assert_eq!(doubles[..2], [0.0, 3.0]);
        assert!(doubles[2].is_nan());
    }

    /// Every chunk is handed out once, zeroed, with its index; a short last chunk too.
    #[test]
    fn chunks_arrive_zeroed_with_their_index() {
        for (len, chunk) in [(10, 3), (9, 3), (1, 4), (0, 5), (7, 0)] {
            let values: Vec<f32> = par_chunks_zeroed(len, chunk, |i, part| {
                for (j, v) in part.iter_mut().enumerate() {
                    assert_eq!(*v, 0.0);
                    *v += (i * chunk.max(1) + j) as f32;
                }
            });
            let expected: Vec<f32> = (0..len).map(|v| v as f32).collect();
            assert_eq!(values, expected, "len {len}, chunk {chunk}");
        }
    }

    /// Every chunk is handed out once with its index, a short last chunk too, and what the
    /// fill writes is the result.
    #[test]
    fn written_chunks_cover_the_values_with_their_index() {
        for (len, chunk) in [(10, 3), (9, 3), (1, 4), (0, 5), (7, 0)] {
            // SAFETY: the fill writes every value of its chunk.
            let values: Vec<f32> = unsafe {
                par_chunks_written(len, chunk, |i, part| {
                    for (j, v) in part.iter_mut().enumerate() {
                        v.write((i * chunk.max(1) + j) as f32);
                    }
                })
            };
            let expected: Vec<f32> = (0..len).map(|v| v as f32).collect();
            assert_eq!(values, expected, "len {len}, chunk {chunk}");
        }
    }
}
