//! Which backend runs: the CPU by default; CUDA and wgpu when built with their features.

use std::fmt;
use std::str::FromStr;

/// The CPU backend: burn's pure-Rust Flex. On the model's forward+backward (full-tiny shape, 2 threads,
/// `cargo xtask backends`) it ran 1.10x faster than NdArray and level with NdArray over OpenBLAS, without
/// needing a system library.
pub type CpuBackend = burn::backend::Flex;

/// The CPU backend with automatic differentiation, for training.
pub type CpuTrainBackend = burn::backend::Autodiff<CpuBackend>;

/// burn's NdArray backend (over OpenBLAS with the `openblas` feature), kept for comparison.
#[cfg(feature = "ndarray")]
pub type NdArrayBackend = burn::backend::NdArray<f32>;

#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

/// wgpu without burn's operation fusion (`burn::backend::Wgpu` wraps this backend in `Fusion`). On Mesa's lavapipe
/// the fused backend computed two things wrongly that this one computes right: a one-row linear layer with a bias
/// (every decoding step of a model with q/k/v biases, so cached generation left the uncached one), and flash
/// attention's key gradient when the last query tile is shorter than a key tile. `crates/core/tests/wgpu.rs`
/// covers both.
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

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
