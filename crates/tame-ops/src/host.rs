//! Copies between host memory and a tensor's device, counted per thread.
//!
//! On a GPU each copy is a transfer over the bus and a synchronisation point, so the loops
//! that run per batch (a training step, an evaluation) copy as little as they can: a batch
//! goes up once, its results come down once. Those loops copy through these functions only,
//! and tests bound [`copies`] around them on the CPU, where the same calls are what a GPU
//! would transfer.

use std::cell::Cell;

use candle_core::{Device, Result, Shape, Tensor, WithDType};

/// Copies made so far, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copies {
    /// Host to device.
    pub uploads: usize,
    /// Device to host.
    pub downloads: usize,
}

impl std::ops::Sub for Copies {
    type Output = Copies;
    fn sub(self, earlier: Copies) -> Copies {
        Copies {
            uploads: self.uploads - earlier.uploads,
            downloads: self.downloads - earlier.downloads,
        }
    }
}

thread_local! {
    static COPIES: Cell<Copies> = const {
        Cell::new(Copies {
            uploads: 0,
            downloads: 0,
        })
    };
}

/// The copies this thread has made through this module so far.
pub fn copies() -> Copies {
    COPIES.with(Cell::get)
}

fn count(f: impl FnOnce(&mut Copies)) {
    COPIES.with(|c| {
        let mut n = c.get();
        f(&mut n);
        c.set(n);
    });
}

/// `data` as a tensor of `shape` on `device`: one copy.
pub fn upload<T: WithDType, S: Into<Shape>>(
    data: Vec<T>,
    shape: S,
    device: &Device,
) -> Result<Tensor> {
    count(|c| c.uploads += 1);
    Tensor::from_vec(data, shape, device)
}

/// `data` as a one-dimensional tensor on `device`: one copy.
pub fn upload_slice<T: WithDType>(data: &[T], device: &Device) -> Result<Tensor> {
    count(|c| c.uploads += 1);
    Tensor::from_slice(data, data.len(), device)
}

/// The values of `t` in row-major order, converted to `T` on its device first: one copy.
pub fn download<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count(|c| c.downloads += 1);
    t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;

    #[test]
    fn every_copy_counts_and_round_trips_keep_the_values() -> Result<()> {
        let before = copies();
        let t = upload(vec![1.5f32, -2.0, 3.25, 0.0], (2, 2), &Device::Cpu)?;
        let u = upload_slice(&[7u32, 8], &Device::Cpu)?;
        assert_eq!(download::<f64>(&t)?, [1.5, -2.0, 3.25, 0.0]);
        assert_eq!(download::<u32>(&u)?, [7, 8]);
        assert_eq!(t.dtype(), DType::F32);
        let made = copies() - before;
        assert_eq!((made.uploads, made.downloads), (2, 2));
        Ok(())
    }
}
