//! `--device cpu|cuda[:N]`.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses a `--device` value and opens the device.
pub fn open(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("unknown device `{spec}` (expected cpu, cuda or cuda:N)"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        bail!(
            "device `{spec}`: this `tame` was built without CUDA support; \
             rebuild it with `cargo build --release -p tame-cli --features cuda`"
        );
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
        let unknown = open("gpu").unwrap_err().to_string();
        assert!(
            unknown.contains("expected cpu, cuda or cuda:N"),
            "{unknown}"
        );
        if !candle_core::utils::cuda_is_available() {
            let unbuilt = open("cuda:1").unwrap_err().to_string();
            assert!(unbuilt.contains("--features cuda"), "{unbuilt}");
            assert!(!unbuilt.contains('\n'), "{unbuilt}");
        }
    }
}
