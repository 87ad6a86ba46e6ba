//! The fully connected layer `x · Wᵀ + b` as `(W · xᵀ)ᵀ + b`, one block of output features
//! per thread.
//!
//! The same products as candle_nn's `x.matmul(&w.t())`, arranged for the weight's memory
//! traffic, which is what these layers cost (VGG-16's first weight is 411 MB): with `x · Wᵀ`
//! the GEMM packs the whole weight again on every pass of more than one image (3 images:
//! 82 ms, here 30 ms), and one image is a GEMV that candle runs on one thread (30.5 ms;
//! two blocks on two threads 16.1 ms).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// `x` (batch, inputs), `weight` (outputs, inputs), `bias` (outputs) -> (batch, outputs).
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let xt = x.t()?;
    let outputs = weight.dim(0)?;
    let threads = rayon::current_num_threads().min(outputs);
    let product = if x.device().is_cpu() && threads > 1 {
        let block = outputs.div_ceil(threads);
        let starts: Vec<usize> = (0..outputs).step_by(block).collect();
        let blocks = starts
            .into_par_iter()
            .map(|start| {
                weight
                    .narrow(0, start, block.min(outputs - start))?
                    .matmul(&xt)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&blocks, 0)?
    } else {
        weight.matmul(&xt)?
    };
    product.t()?.broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{max_abs_diff, seeded};
    use candle_core::{Device, Var};

    /// Against `x · Wᵀ + b` forward and backward (input, weight, bias) on 1-3 threads,
    /// with output counts that do not split evenly.
    #[test]
    fn matches_the_plain_product_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        for (batch, inputs, outputs) in [(1, 37, 11), (3, 20, 7), (8, 5, 1)] {
            let x = Var::from_tensor(&seeded(&[batch, inputs], 1, &dev)?)?;
            let w = Var::from_tensor(&seeded(&[outputs, inputs], 2, &dev)?)?;
            let b = Var::from_tensor(&seeded(&[outputs], 3, &dev)?)?;
            let r = seeded(&[batch, outputs], 4, &dev)?;
            let plain = x.matmul(&w.t()?)?.broadcast_add(&b)?;
            let want = (&plain * &r)?.sum_all()?.backward()?;
            for threads in 1..=3 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(candle_core::Error::wrap)?;
                let ours = pool.install(|| linear(&x, &w, &b))?;
                assert!(max_abs_diff(&ours, &plain) < 1e-12, "{threads} threads");
                let got = (&ours * &r)?.sum_all()?.backward()?;
                for v in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
                    let diff = max_abs_diff(got.get(v).unwrap(), want.get(v).unwrap());
                    assert!(diff < 1e-12, "{threads} threads: {diff}");
                }
            }
        }
        Ok(())
    }
}
