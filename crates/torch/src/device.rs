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
/// while gradients and optimizer updates stay fp32. `auto` is [`auto_precision`]'s choice
/// for the device. Returns the kind (`None`: fp32) and a phrase for the log saying why.
pub fn compute_kind(precision: Precision, device: Device) -> Result<(Option<Kind>, String)> {
    Ok(match (precision, device) {
        (Precision::Auto, _) => {
            let capability = match device {
                Device::Cuda(i) => cuda_properties(i).map(|p| p.capability),
                _ => None,
            };
            auto_precision(device.is_cuda(), capability)
        }
        (Precision::Fp32, _) => (None, "precision = \"fp32\"".into()),
        (Precision::Bf16, _) => (Some(Kind::BFloat16), "precision = \"bf16\"".into()),
        (Precision::Fp16, Device::Cpu) => {
            bail!("precision = \"fp16\" needs a CUDA device; use \"fp32\" or \"bf16\" on the CPU")
        }
        (Precision::Fp16, _) => (Some(Kind::Half), "precision = \"fp16\"".into()),
    })
}

/// `precision = "auto"`: fp32 on the CPU; on CUDA, bf16 where the GPU computes in it
/// (compute capability 8.0 and up: Ampere and later), else fp16, which the trainer pairs
/// with dynamic loss scaling (a T4, 7.5, has no bf16 units). A GPU whose capability is
/// unknown gets fp16, which every CUDA GPU runs. The phrase says why, for the log.
pub fn auto_precision(cuda: bool, capability: Option<(i32, i32)>) -> (Option<Kind>, String) {
    match (cuda, capability) {
        (false, _) => (None, "precision = \"auto\": fp32 on the CPU".into()),
        (true, Some((major, minor))) if major >= 8 => (
            Some(Kind::BFloat16),
            format!("precision = \"auto\": bf16 (compute capability {major}.{minor})"),
        ),
        (true, Some((major, minor))) => (
            Some(Kind::Half),
            format!(
                "precision = \"auto\": fp16 with loss scaling (compute capability {major}.{minor} \
                 has no bf16; 8.0 and up has)"
            ),
        ),
        (true, None) => (
            Some(Kind::Half),
            "precision = \"auto\": fp16 with loss scaling (the GPU's compute capability is \
             unknown; set precision = \"bf16\" on an Ampere or later GPU)"
                .into(),
        ),
    }
}

/// What a CUDA device is, as far as training needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaProperties {
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    /// Total memory in bytes.
    pub total_memory: u128,
}

/// The properties of CUDA device `index` (as libtorch numbers them): from libtorch through
/// the shim when it was built, else from `nvidia-smi`; `None` when neither answers.
pub fn cuda_properties(index: usize) -> Option<CudaProperties> {
    #[cfg(gptpipe_cuda_props)]
    {
        let (mut major, mut minor, mut total) = (0, 0, 0u64);
        // SAFETY: the shim writes the three plain values through the pointers, which live
        // for the call, and keeps none of them.
        let rc = unsafe {
            crate::ffi::gptpipe_cuda_device_props(index as i32, &mut major, &mut minor, &mut total)
        };
        if rc == 0 {
            return Some(CudaProperties {
                capability: (major, minor),
                total_memory: total as u128,
            });
        }
    }
    nvidia_smi_properties(index)
}

/// `nvidia-smi --query-gpu=compute_cap,memory.total` of device `index`, mapped through
/// `CUDA_VISIBLE_DEVICES` (nvidia-smi numbers every GPU, libtorch only the visible ones).
fn nvidia_smi_properties(index: usize) -> Option<CudaProperties> {
    let id = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').nth(index)?.trim().to_owned(),
        _ => index.to_string(),
    };
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=compute_cap,memory.total",
            "--format=csv,noheader,nounits",
            "-i",
            &id,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))
}

/// `"7.5, 15360"` (capability, MiB) as properties.
fn parse_nvidia_smi(line: &str) -> Option<CudaProperties> {
    let mut fields = line.lines().next()?.split(',').map(str::trim);
    let (major, minor) = fields.next()?.split_once('.')?;
    let mib: u128 = fields.next()?.parse().ok()?;
    Some(CudaProperties {
        capability: (major.parse().ok()?, minor.parse().ok()?),
        total_memory: mib * 1024 * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_precision_is_bf16_from_ampere_fp16_before_and_fp32_on_the_cpu() {
        let kind = |cuda, cap| auto_precision(cuda, cap).0;
        assert_eq!(kind(true, Some((7, 5))), Some(Kind::Half), "T4");
        assert_eq!(kind(true, Some((7, 0))), Some(Kind::Half), "V100");
        assert_eq!(kind(true, Some((8, 0))), Some(Kind::BFloat16), "A100");
        assert_eq!(kind(true, Some((9, 0))), Some(Kind::BFloat16), "H100");
        assert_eq!(kind(true, None), Some(Kind::Half), "unknown GPU");
        assert_eq!(kind(false, None), None, "CPU");
        assert!(auto_precision(true, Some((7, 5)))
            .1
            .contains("fp16 with loss scaling"));
        assert!(auto_precision(true, Some((8, 6)))
            .1
            .contains("bf16 (compute capability 8.6)"));
        let (cpu, why) = compute_kind(Precision::Auto, Device::Cpu).unwrap();
        assert_eq!(cpu, None);
        assert!(why.contains("fp32 on the CPU"), "{why}");
        assert!(compute_kind(Precision::Fp16, Device::Cpu).is_err());
    }

    #[test]
    fn nvidia_smi_figures_parse() {
        assert_eq!(
            parse_nvidia_smi("7.5, 15360\n"),
            Some(CudaProperties {
                capability: (7, 5),
                total_memory: 15360 * 1024 * 1024
            })
        );
        assert_eq!(parse_nvidia_smi("[N/A], 15360"), None);
    }
}
