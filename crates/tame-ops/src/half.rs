//! Half-precision tensors on the portable path: every op of a backbone runs on bf16 and f16
//! CPU tensors (candle alone has no bf16 convolution there), forward and backward, keeps the
//! dtype, and agrees with the same op in f32 on the same (rounded) operands.
//!
//! Tolerance: max |half - f32| <= 1e-2 (bf16) / 1.5e-3 (f16) x max |f32| for each output and
//! gradient; measured at most 5.3e-3 and 5.6e-4 (a bf16 or f16 value keeps 8 or 11 bits).
//! Batch statistics summed in bf16 instead of f32 are off by 0.8 x max |f32| here.
//! A batch norm's operands may be half or f32 (a half-precision backbone keeps its batch
//! norms' parameters in f32).

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::gradcheck::{max_abs_diff, output_and_gradients, seeded};
use crate::{
    adaptive_avg_pool2d, batch_norm_eval, batch_norm_train, conv2d_fused, conv2d_fused_residual,
    depthwise_conv2d, max_pool2d, with_kernels, Epilogue, Kernels, Padding,
};

/// Relative tolerance of each half type (see the module documentation).
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        _ => 1.5e-3,
    }
}

/// `op` on `inputs` rounded to `dtype` (the output and each input's gradient) against `op` on
/// the same rounded values in f32, both on the portable path (the same composition: a max
/// pool splits the gradient between tied inputs there, and rounding makes ties); returns the
/// largest relative difference.
fn compare(
    what: &str,
    dtype: DType,
    inputs: &[Tensor],
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<f64> {
    let run = |to: DType| -> Result<Vec<Tensor>> {
        let vars = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dtype)?.to_dtype(to)?))
            .collect::<Result<Vec<_>>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = with_kernels(Kernels::Portable, || op(&tensors))?;
        assert_eq!(y.dtype(), to, "{what}: the output's dtype");
        output_and_gradients(&y, &tensors.iter().collect::<Vec<_>>())
    };
    let (half, full) = (run(dtype)?, run(DType::F32)?);
    let mut worst = 0f64;
    for (i, (h, f)) in half.iter().zip(&full).enumerate() {
        assert_eq!(h.dtype(), dtype, "{what} {dtype:?}, tensor {i}: dtype");
        let scale = f
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert!(scale > 0.0, "{what}, tensor {i}: all zero");
        let relative = max_abs_diff(&h.to_dtype(DType::F32)?, f) / scale;
        assert!(
            relative <= tolerance(dtype),
            "{what} {dtype:?}, tensor {i}: {relative:e} x max |f32|"
        );
        worst = worst.max(relative);
    }
    Ok(worst)
}

#[test]
fn every_backbone_op_runs_in_bf16_and_f16_on_the_cpu() -> Result<()> {
    let dev = Device::Cpu;
    let x = seeded(&[2, 8, 9, 9], 1, &dev)?;
    let weight = (seeded(&[6, 8, 3, 3], 2, &dev)? * 0.3)?;
    let bias = seeded(&[6], 3, &dev)?;
    let residual = seeded(&[2, 6, 9, 9], 4, &dev)?;
    let depthwise = seeded(&[8, 1, 3, 3], 5, &dev)?;
    let (gamma, beta) = ((seeded(&[8], 6, &dev)? + 1.5)?, seeded(&[8], 7, &dev)?);
    let (mean, var) = (
        (seeded(&[8], 9, &dev)? * 0.1)?,
        (seeded(&[8], 10, &dev)? + 1.2)?,
    );
    let residual8 = seeded(&[2, 8, 9, 9], 11, &dev)?;
    let wide = seeded(&[2, 8, 40, 40], 8, &dev)?;
    // A batch norm's parameters in f32, as a half-precision backbone keeps them.
    let f32s = |t: &Tensor| t.to_dtype(DType::F32);
    let (g32, b32, m32, v32) = (f32s(&gamma)?, f32s(&beta)?, f32s(&mean)?, f32s(&var)?);
    let same = Padding::uniform(1);
    for dtype in [DType::BF16, DType::F16] {
        let mut worst = Vec::new();
        let conv = [x.clone(), weight.clone(), bias.clone()];
        worst.push(compare("conv2d_fused", dtype, &conv, |t| {
            conv2d_fused(&t[0], &t[1], None, &t[2], 1, same, true)
        })?);
        let strided = [x.clone(), weight.clone(), bias.clone()];
        worst.push(compare("conv2d_fused stride 2", dtype, &strided, |t| {
            conv2d_fused(&t[0], &t[1], None, &t[2], 2, same, false)
        })?);
        // The residual form's bias is a constant (not differentiated), rounded as the rest.
        let frozen_bias = bias.to_dtype(dtype)?;
        let res = [x.clone(), weight.clone(), residual.clone()];
        worst.push(compare("conv2d_fused_residual", dtype, &res, |t| {
            let b = frozen_bias.to_dtype(t[0].dtype())?;
            conv2d_fused_residual(&t[0], &t[1], None, &b, &t[2], 1, same)
        })?);
        let dw = [x.clone(), depthwise.clone()];
        worst.push(compare("depthwise_conv2d", dtype, &dw, |t| {
            depthwise_conv2d(&t[0], &t[1], 2, same)
        })?);
        // Statistics over 2·40·40 values a channel: summed in bf16 they would be off by far
        // more than the tolerance.
        let one_wide = std::slice::from_ref(&wide);
        worst.push(compare("batch_norm_train", dtype, one_wide, |t| {
            let (y, stats) = batch_norm_train(&t[0], &g32, &b32, 1e-5, Epilogue::relu())?;
            assert_eq!(stats.mean.dtype(), DType::F32, "statistics' dtype");
            assert_eq!(stats.var.dtype(), DType::F32, "statistics' dtype");
            Ok(y)
        })?);
        let with_residual = [x.clone(), residual8.clone()];
        worst.push(compare("batch_norm_eval", dtype, &with_residual, |t| {
            let then = Epilogue::add_relu(&t[1]);
            batch_norm_eval(&t[0], &g32, &b32, &m32, &v32, 1e-5, then)
        })?);
        worst.push(compare(
            "max_pool2d",
            dtype,
            std::slice::from_ref(&x),
            |t| max_pool2d(&t[0], 3, 2, 1),
        )?);
        for out in [1, 4] {
            worst.push(compare("adaptive_avg_pool2d", dtype, one_wide, |t| {
                adaptive_avg_pool2d(&t[0], out, out)
            })?);
        }
        println!("{dtype:?}: worst relative differences {worst:?}");
    }
    Ok(())
}
