//! Where a run executes: the device a Plan asks for (`device:` in the file, or `kdc run
//! --device`) resolved against this build and this machine. `auto` takes the first GPU when
//! the binary has CUDA (`--features cuda`, the `kdc-cuda` binary) and the machine has one,
//! else the CPU; `cuda(N)` must be there.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// The device a run executes on, and what its summary records of it.
#[derive(Debug, Clone)]
pub struct RunDevice {
    pub device: Device,
    /// `cpu` or `cuda:N`.
    pub name: String,
    pub gpu: Option<GpuInfo>,
}

/// `summary.json`'s record of the GPU a run used.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GpuInfo {
    /// As the driver names it (`NVIDIA H200`).
    pub name: String,
    /// The NVIDIA driver's version, as its kernel module reports it.
    pub driver: Option<String>,
    /// The CUDA version this binary was built for.
    pub cuda: String,
}

/// Whether this binary was built with CUDA.
pub const HAS_CUDA: bool = cfg!(feature = "cuda");

/// The CUDA version CUDA builds are made for (scripts/cuda-toolchain.sh).
pub const CUDA_VERSION: &str = "13.0";

/// The device for `wanted`.
pub fn select(wanted: &kd_plan::Device) -> Result<RunDevice> {
    match wanted {
        kd_plan::Device::Cpu => Ok(cpu()),
        kd_plan::Device::Auto if !HAS_CUDA => Ok(cpu()),
        kd_plan::Device::Auto => match gpu::count() {
            Ok(n) if n > 0 => gpu::open(0),
            _ => Ok(cpu()),
        },
        kd_plan::Device::Cuda(index) if !HAS_CUDA => Err(RuntimeError::NoCuda { index: *index }),
        kd_plan::Device::Cuda(index) => {
            let count = gpu::count()?;
            if *index >= count {
                return Err(RuntimeError::NoGpu {
                    index: *index,
                    reason: match count {
                        0 => "the driver sees no GPU".to_string(),
                        1 => "this machine has 1 GPU, `cuda:0`".to_string(),
                        n => format!("this machine has {n} GPUs, `cuda:0` to `cuda:{}`", n - 1),
                    },
                });
            }
            gpu::open(*index)
        }
    }
}

fn cpu() -> RunDevice {
    RunDevice {
        device: Device::Cpu,
        name: "cpu".into(),
        gpu: None,
    }
}

/// The NVIDIA driver's version from the kernel module (`/proc/driver/nvidia/version`).
pub fn driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Thu Sep ..."
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|word| {
            word.split('.').count() >= 2 && word.split('.').all(|p| p.parse::<u32>().is_ok())
        })
        .map(str::to_string)
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::cuda_backend::cudarc::driver::{
        sys::cudaError_enum, CudaContext, DriverError,
    };
    use candle_core::Device;

    use super::{driver_version, GpuInfo, RunDevice, CUDA_VERSION};
    use crate::error::{Result, RuntimeError};

    /// GPUs the driver sees; an error when the driver cannot be used at all.
    pub(super) fn count() -> Result<usize> {
        CudaContext::device_count()
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(driver_error)
    }

    pub(super) fn open(index: usize) -> Result<RunDevice> {
        let device = Device::new_cuda(index).map_err(|e| RuntimeError::NoGpu {
            index,
            reason: e.to_string(),
        })?;
        let name = device
            .as_cuda_device()
            .ok()
            .and_then(|d| d.cuda_stream().context().name().ok())
            .unwrap_or_else(|| "an NVIDIA GPU".into());
        Ok(RunDevice {
            device,
            name: format!("cuda:{index}"),
            gpu: Some(GpuInfo {
                name,
                driver: driver_version(),
                cuda: CUDA_VERSION.to_string(),
            }),
        })
    }

    fn driver_error(error: DriverError) -> RuntimeError {
        match error.0 {
            cudaError_enum::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
            | cudaError_enum::CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER
            | cudaError_enum::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => RuntimeError::OldDriver {
                driver: driver_version().unwrap_or_else(|| "unknown".into()),
            },
            cudaError_enum::CUDA_ERROR_NO_DEVICE => RuntimeError::NoGpu {
                index: 0,
                reason: "the driver sees no GPU".into(),
            },
            cudaError_enum::CUDA_ERROR_STUB_LIBRARY => RuntimeError::NoGpu {
                index: 0,
                reason: "no NVIDIA driver is installed (the libcuda.so.1 found is a stub)".into(),
            },
            _ => RuntimeError::NoGpu {
                index: 0,
                reason: format!("the NVIDIA driver cannot be used ({error})"),
            },
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod gpu {
    use super::RunDevice;
    use crate::error::{Result, RuntimeError};

    pub(super) fn count() -> Result<usize> {
        Ok(0)
    }

    pub(super) fn open(index: usize) -> Result<RunDevice> {
        Err(RuntimeError::NoCuda { index })
    }
}
