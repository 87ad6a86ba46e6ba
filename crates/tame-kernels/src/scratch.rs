//! Reusable per-thread work buffers (the convolutions' column matrices and Winograd
//! operands).
//!
//! A fresh buffer per call is zero-filled (or page-faulted in) before the kernel overwrites
//! all of it: ResNet-50's forward spent ~2 % of its time in that memset alone.

use std::any::Any;
use std::cell::RefCell;

use crate::Float;

thread_local! {
    /// Free buffers, last returned on top: nested calls take them in the same order each
    /// time, so each call site gets back the buffer it grew.
    static FREE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` values of a work buffer of this thread, grown when too short. The
/// values are whatever the previous user left: `f` must write each one before reading it.
/// Calls made inside `f` (a second buffer, or a rayon task that this thread runs while it
/// waits) take other buffers.
pub(crate) fn with_buffer<T: Float, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let mut buffer: Vec<T> = FREE
        .with(|free| free.borrow_mut().pop())
        .and_then(|b| b.downcast::<Vec<T>>().ok())
        .map(|b| *b)
        .unwrap_or_default();
    if buffer.len() < len {
        buffer.resize(len, T::ZERO);
    }
    let result = f(&mut buffer[..len]);
    FREE.with(|free| free.borrow_mut().push(Box::new(buffer)));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_per_thread_and_nested_calls_get_their_own() {
        let round = || {
            with_buffer(8, |outer: &mut [f32]| {
                let seen = outer.to_vec();
                outer.fill(1.0);
                let inner = with_buffer(4, |inner: &mut [f32]| {
                    let seen = inner.to_vec();
                    inner.fill(2.0);
                    (seen, inner.as_ptr() as usize)
                });
                (seen, outer.as_ptr() as usize, inner)
            })
        };
        let (seen, outer, (inner_seen, inner)) = round();
        assert_eq!((seen, inner_seen), (vec![0.0; 8], vec![0.0; 4]));
        // The second round gets the same two buffers back, each with its own contents.
        let (seen, outer_again, (inner_seen, inner_again)) = round();
        assert_eq!((seen, inner_seen), (vec![1.0; 8], vec![2.0; 4]));
        assert_eq!((outer, inner), (outer_again, inner_again));
        // Another element type gets a fresh buffer.
        with_buffer(3, |b: &mut [f64]| assert_eq!(b, [0.0; 3]));
    }
}
