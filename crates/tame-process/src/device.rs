//! `--device cpu|cuda[:N]`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses a `--device` value and opens the device; `how_to_build` tells, for a binary built
/// without CUDA, how to build one with it.
pub fn open_device(spec: &str, how_to_build: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("unknown device `{spec}` (expected cpu, cuda or cuda:N)"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        bail!("device `{spec}`: this program was built without CUDA support; {how_to_build}");
    }
    Device::new_cuda(ordinal).with_context(|| {
        format!(
            "cannot open CUDA device {ordinal} (is an NVIDIA GPU present and its driver \
             installed? `nvidia-smi` lists them)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_unbuilt_devices_are_one_line_errors() {
        let unknown = open_device("gpu", "").unwrap_err().to_string();
        assert!(
            unknown.contains("expected cpu, cuda or cuda:N"),
            "{unknown}"
        );
        if !candle_core::utils::cuda_is_available() {
            let unbuilt = open_device("cuda:1", "rebuild with --features cuda")
                .unwrap_err()
                .to_string();
            assert!(
                unbuilt.ends_with("rebuild with --features cuda"),
                "{unbuilt}"
            );
            assert!(!unbuilt.contains('\n'), "{unbuilt}");
        }
        assert!(open_device("cpu", "").unwrap().is_cpu());
    }
}
