//! `device` and `precision` settings.

use anyhow::{bail, Result};
use gptpipe_core::config::{self, Precision};
use tch::{Device, Kind};

/// A device as the config layer parsed it ([`config::Device`]), or as a string (examples,
/// tests), parsed by the same parser.
pub trait DeviceSetting {
    fn setting(&self) -> Result<config::Device>;
}

impl DeviceSetting for config::Device {
    fn setting(&self) -> Result<config::Device> {
        Ok(*self)
    }
}

impl DeviceSetting for str {
    fn setting(&self) -> Result<config::Device> {
        self.parse().map_err(anyhow::Error::msg)
    }
}

impl DeviceSetting for String {
    fn setting(&self) -> Result<config::Device> {
        self.as_str().setting()
    }
}

/// `"auto"` (CUDA when present), `"cpu"`, `"cuda"` or `"cuda:N"` as a libtorch device.
/// Asking for CUDA where there is none is an error, not a silent fallback.
pub fn parse_device<D: DeviceSetting + ?Sized>(d: &D) -> Result<Device> {
    let setting = d.setting()?;
    let cuda = tch::Cuda::is_available();
    let none = || {
        anyhow::anyhow!(
            "device = {:?} but no CUDA GPU is available to libtorch here; use device = \"cpu\" \
             (or \"auto\", which takes CUDA only when present)",
            setting.to_string()
        )
    };
    match setting {
        config::Device::Auto => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        config::Device::Cpu => Ok(Device::Cpu),
        config::Device::Cuda => {
            if !cuda {
                return Err(none());
            }
            Ok(Device::Cuda(0))
        }
        config::Device::CudaIndex(n) => {
            if !cuda {
                return Err(none());
            }
            let count = tch::Cuda::device_count() as usize;
            if n >= count {
                bail!(
                    "device = {:?} but only {count} CUDA device(s) exist (cuda:0..cuda:{})",
                    setting.to_string(),
                    count - 1
                );
            }
            Ok(Device::Cuda(n))
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
