//! Which backend runs: the CPU by default; CUDA and wgpu when built with their features.

use std::fmt;
use std::str::FromStr;

/// The CPU backend: NdArray, which ran the model's forward+backward 1.5x faster than Flex on the full-tiny
/// shape (2 threads; `cargo xtask backends`), and 1.9x faster over OpenBLAS (feature `openblas`).
pub type CpuBackend = burn::backend::NdArray<f32>;

/// The CPU backend with automatic differentiation, for training.
pub type CpuTrainBackend = burn::backend::Autodiff<CpuBackend>;

/// burn's pure-Rust Flex backend, kept for comparison.
#[cfg(feature = "flex")]
pub type FlexBackend = burn::backend::Flex;

#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu<f32, i32>;

/// A device kind a user can ask for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Wgpu,
}

impl DeviceKind {
    /// Whether this binary was built with support for the kind.
    pub fn compiled(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Cuda => cfg!(feature = "cuda"),
            DeviceKind::Wgpu => cfg!(feature = "wgpu"),
        }
    }
}

impl FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            "wgpu" => Ok(DeviceKind::Wgpu),
            other => Err(format!("unknown device `{other}`; expected cpu, cuda or wgpu")),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Wgpu => "wgpu",
        })
    }
}
