//! `device` and `precision` settings.

use anyhow::{bail, Result};
use gptpipe_core::config::Precision;
use tch::{Device, Kind};

/// `"auto"` (CUDA when present), `"cpu"`, `"cuda"` or `"cuda:N"`. Asking for CUDA where
/// there is none is an error, not a silent fallback.
pub fn parse_device(s: &str) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    let none = |what: &str| {
        anyhow::anyhow!(
            "device = {what:?} but no CUDA GPU is available to libtorch here; use device = \"cpu\" \
             (or \"auto\", which takes CUDA only when present)"
        )
    };
    match s.trim() {
        "auto" => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cuda {
                return Err(none(s));
            }
            Ok(Device::Cuda(0))
        }
        other => {
            match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => {
                    if !cuda {
                        return Err(none(s));
                    }
                    let count = tch::Cuda::device_count() as usize;
                    if n >= count {
                        bail!("device = {s:?} but only {count} CUDA device(s) exist (cuda:0..cuda:{})", count - 1);
                    }
                    Ok(Device::Cuda(n))
                }
                _ => bail!("device = {s:?} is not one of \"auto\", \"cpu\", \"cuda\", \"cuda:N\""),
            }
        }
    }
}

/// The compute kind for training. Weights stay fp32 (master weights); `bf16`/`fp16`
/// cast each weight where it is used, so matmuls and attention run in half precision
/// while gradients and optimizer updates stay fp32. `auto` is bf16 on CUDA, fp32 on CPU.
pub fn compute_kind(precision: Precision, device: Device) -> Result<Option<Kind>> {
    Ok(match (precision, device) {
        (Precision::Auto, Device::Cpu) | (Precision::Fp32, _) => None,
        (Precision::Auto, _) | (Precision::Bf16, _) => Some(Kind::BFloat16),
        (Precision::Fp16, Device::Cpu) => {
            bail!("precision = \"fp16\" needs a CUDA device; use \"fp32\" or \"bf16\" on the CPU")
        }
        (Precision::Fp16, _) => Some(Kind::Half),
    })
}
