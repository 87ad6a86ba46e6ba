//! Where the work of a whole command runs.
//!
//! The tensor work of every library runs on rayon's global pool (`RAYON_NUM_THREADS`
//! threads, else rayon's default); [`on_worker`] starts a whole command on one of them.

/// Runs `work` on a thread of rayon's global pool, the caller waiting for it.
///
/// A parallel section started from outside the pool is handed to a worker and the caller
/// sleeps on a lock until it ends: a wake-up and a hand-over each time, and a forward pass
/// starts hundreds of them. Started on a worker, a section runs there at once and the other
/// workers steal from it. Measured at batch 1 on two threads (`bench_explain_phases` of
/// tame-metrics, both ways alternating): explanations 1-3 % faster with ResNet-50, 5 % with
/// VGG-16. Binaries run each command through it.
pub fn on_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| work())
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    #[test]
    fn work_runs_on_a_pool_thread_and_returns_its_value() {
        // Test threads are not the pool's.
        assert_eq!(rayon::current_thread_index(), None);
        let (index, sum) = on_worker(|| {
            let sum: u64 = (1..=100u64).into_par_iter().sum();
            (rayon::current_thread_index(), sum)
        });
        assert!(index.is_some());
        assert_eq!(sum, 5050);
    }
}
