//! Mixed precision: a backbone whose weights and arithmetic are bf16 or f16, and whose
//! taps and logits come out in the dtype its input came in (f32), so that whatever reads
//! them (an attention mechanism, its loss and optimizer, the metrics) stays in f32.
//!
//! The casts sit at one seam: [`InPrecision::forward`] casts the input down, and the
//! [`TapRequest`] it passes on hands the taps and logits out cast back up. A gradient
//! crosses both casts, so a loss on the logits still reaches an input mask, and a tap asked
//! for with its gradient receives it in f32.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, DeviceLocation, Tensor, Var};
use serde::{Deserialize, Serialize};
use tame_data::Preprocessing;

use crate::{Backbone, BackboneError, ForwardOutput, Mode, Result, TapRequest};

/// The dtype a backbone runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// The backbone in bfloat16 (f32's range, 8 bits of mantissa).
    Bf16,
    /// The backbone in IEEE half precision (11 bits of mantissa, values up to 65504): for
    /// GPUs; on the CPU it runs, slowly.
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// The name on the command line and in run records: `f32`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The dtype of the backbone's weights and arithmetic.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// A one-line error unless `device` runs the backbone's operations, forward and
    /// backward, in this precision (a GPU without bf16 kernels does not).
    pub fn check(self, device: &Device) -> Result<()> {
        if self == Precision::F32 {
            return Ok(());
        }
        probe(self.dtype(), device).map_err(|e| self.unsupported(device, &e))
    }

    /// The error of a device that failed the probe with `e`, on one line (candle may append
    /// a backtrace to its message).
    fn unsupported(self, device: &Device, e: &candle_core::Error) -> BackboneError {
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default().trim();
        BackboneError::Precision(format!(
            "{} cannot run a backbone in {self} ({first}); f32 runs everywhere",
            device_name(device)
        ))
    }
}

/// One of each kind of op a backbone runs, on a tiny tensor in `dtype`, differentiated.
fn probe(dtype: DType, device: &Device) -> candle_core::Result<()> {
    let x = Var::from_tensor(&Tensor::ones((2, 2, 4, 4), dtype, device)?)?;
    let weight = Tensor::ones((2, 2, 3, 3), dtype, device)?;
    let ones = Tensor::ones(2, dtype, device)?;
    let padding = tame_ops::Padding::uniform(1);
    let y = tame_ops::conv2d_fused(&x, &weight, None, &ones, 1, padding, true)?;
    let y = tame_ops::depthwise_conv2d(&y, &weight.narrow(1, 0, 1)?, 1, padding)?;
    let (y, _) = tame_ops::batch_norm_train(&y, &ones, &ones, 1e-5, Default::default())?;
    let y = tame_ops::max_pool2d(&y, 3, 2, 1)?;
    let y = tame_ops::adaptive_avg_pool2d(&y, 1, 1)?.flatten_from(1)?;
    let fc = Tensor::ones((3, 2), dtype, device)?;
    let y = tame_ops::linear(&y, &fc, &Tensor::ones(3, dtype, device)?)?;
    let grads = y.to_dtype(DType::F32)?.sum_all()?.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => g
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()
            .map(drop),
        None => candle_core::bail!("no gradient reached the input"),
    }
}

fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "the CPU".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = BackboneError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let valid = Self::ALL.map(Precision::name).join(", ");
                BackboneError::Precision(format!("unknown precision `{s}` (valid: {valid})"))
            })
    }
}

/// A network built in a lower precision, run from and handing out f32 (or whatever dtype
/// its input is in).
pub(crate) struct InPrecision {
    pub(crate) inner: Box<dyn Backbone>,
    pub(crate) precision: Precision,
}

impl Backbone for InPrecision {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn tap_names(&self) -> Vec<String> {
        self.inner.tap_names()
    }

    fn default_taps(&self) -> Vec<String> {
        self.inner.default_taps()
    }

    fn cam_tap(&self) -> &'static str {
        self.inner.cam_tap()
    }

    fn input_mean(&self) -> [f32; 3] {
        self.inner.input_mean()
    }

    fn preprocessing(&self) -> Preprocessing {
        self.inner.preprocessing()
    }

    fn forward(&self, images: &Tensor, request: &TapRequest, mode: Mode) -> Result<ForwardOutput> {
        let request = request.clone().handing_out(images.dtype());
        let images = images.to_dtype(self.precision.dtype())?;
        self.inner.forward(&images, &request, mode)
    }

    fn reseed(&self, seed: u64) {
        self.inner.reseed(seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_print_and_serialise_alike() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
            p.check(&Device::Cpu).unwrap();
        }
        assert_eq!(Precision::default(), Precision::F32);
        let unknown = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert_eq!(unknown, "unknown precision `fp16` (valid: f32, bf16, f16)");
        let failed = candle_core::Error::Msg("no bf16 kernel\n   0: backtrace".into());
        assert_eq!(
            Precision::Bf16
                .unsupported(&Device::Cpu, &failed)
                .to_string(),
            "the CPU cannot run a backbone in bf16 (no bf16 kernel); f32 runs everywhere"
        );
    }
}
