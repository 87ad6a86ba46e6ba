//! Which implementation the ops run: the native CPU kernels of `tame-kernels`, or the portable
//! compositions of candle operations that every other device runs.
//!
//! The environment variable `TAME_KERNELS` chooses for the process: `native` (or unset) runs
//! the native kernels wherever they apply, `portable` runs the portable path on the CPU too,
//! so that the code a GPU runs is tested against the native kernels on a machine without
//! one. It is read once. [`with_kernels`] chooses for the calls of one thread (tests compare
//! the two paths in one process this way, without touching the environment).

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// The implementation an op runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The CPU kernels of `tame-kernels`: f32 and f64 tensors on the CPU only.
    Native,
    /// Compositions of candle's operations: any device, any dtype.
    Portable,
}

impl Kernels {
    /// The implementation an op on `x` runs: [`Native`](Self::Native) for f32 and f64
    /// tensors on the CPU unless [`selected`](Self::selected) says otherwise,
    /// [`Portable`](Self::Portable) for anything else.
    pub fn for_tensor(x: &Tensor) -> Self {
        let native = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
        if native {
            Self::selected()
        } else {
            Self::Portable
        }
    }

    /// The implementation chosen where the native kernels apply: [`with_kernels`]' choice
    /// inside it, else `TAME_KERNELS`' (`portable`, or `native` for any other value and when
    /// unset).
    pub fn selected() -> Self {
        static FROM_ENV: OnceLock<Kernels> = OnceLock::new();
        CHOSEN.with(Cell::get).unwrap_or_else(|| {
            *FROM_ENV.get_or_init(|| Self::parse(std::env::var("TAME_KERNELS").ok().as_deref()))
        })
    }

    /// The value of `TAME_KERNELS`, if set, as an implementation.
    fn parse(value: Option<&str>) -> Self {
        match value {
            Some("portable") => Self::Portable,
            _ => Self::Native,
        }
    }
}

/// Whether `dtype` is a half-precision type (bf16, f16). The portable path computes some
/// ops on these in f32 and rounds the result back: batch norms (their statistics sum
/// thousands of values, which a half type's 8 or 11 bits of mantissa would lose, and their
/// per-channel scale rounded would be off alike at every pixel) and average pools, and on
/// the CPU the convolutions, which candle has no bf16 kernel for (f16 it accumulates in
/// f16). A GPU's half-precision convolution likewise accumulates in f32 and rounds its
/// output.
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// `t` in f32, for an op computed in f32 on half-precision operands ([`is_half`]).
pub(crate) fn widened(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(DType::F32)
}

thread_local! {
    /// [`with_kernels`]' choice for this thread, if inside it.
    static CHOSEN: Cell<Option<Kernels>> = const { Cell::new(None) };
}

/// Runs `f` with `kernels` chosen for the ops this thread calls (the native kernels still
/// only for f32 and f64 CPU tensors), whatever `TAME_KERNELS` says. The previous choice comes
/// back afterwards, also when `f` panics. Backward passes follow the choice made when the
/// forward pass built the graph.
pub fn with_kernels<R>(kernels: Kernels, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Kernels>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CHOSEN.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CHOSEN.with(|c| c.replace(Some(kernels))));
    f()
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn only_portable_turns_the_native_kernels_off() {
        assert_eq!(Kernels::parse(Some("portable")), Kernels::Portable);
        for value in [None, Some("native"), Some(""), Some("Portable")] {
            assert_eq!(Kernels::parse(value), Kernels::Native, "{value:?}");
        }
    }

    #[test]
    fn the_choice_holds_inside_with_kernels_and_for_f32_and_f64_cpu_tensors_only() {
        let dev = Device::Cpu;
        let f32s = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let f16s = Tensor::zeros(2, DType::F16, &dev).unwrap();
        let outside = Kernels::selected();
        with_kernels(Kernels::Portable, || {
            assert_eq!(Kernels::for_tensor(&f32s), Kernels::Portable);
            with_kernels(Kernels::Native, || {
                assert_eq!(Kernels::for_tensor(&f32s), Kernels::Native);
                assert_eq!(Kernels::for_tensor(&f16s), Kernels::Portable);
            });
            assert_eq!(Kernels::selected(), Kernels::Portable);
        });
        assert_eq!(Kernels::selected(), outside);
        let panicked = std::panic::catch_unwind(|| {
            with_kernels(Kernels::Portable, || panic!("inside"));
        });
        assert!(panicked.is_err());
        assert_eq!(Kernels::selected(), outside);
    }
}
