//! `[zero]`: DeepSpeed's `zero_optimization` names and defaults.

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

use crate::strategy::Zero;

/// A ZeRO stage this build runs (stage 0 is plain data parallelism: no strategy of this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroStage {
    /// Optimizer state partitioned.
    One,
    /// Optimizer state and gradients partitioned.
    Two,
    /// Optimizer state, gradients and parameters partitioned.
    Three,
}

impl ZeroStage {
    pub fn number(self) -> u8 {
        match self {
            ZeroStage::One => 1,
            ZeroStage::Two => 2,
            ZeroStage::Three => 3,
        }
    }
}

/// Where ZeRO-Offload keeps a state (DeepSpeed's `offload_optimizer.device` / `offload_param.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadDevice {
    #[default]
    None,
    Cpu,
    Nvme,
}

/// The `[zero]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZeroSection {
    /// 0 (plain data parallelism), 1 (optimizer state partitioned), 2 (and gradients) or 3 (and parameters).
    pub stage: u8,
    /// Elements per reduce-scatter and all-gather (DeepSpeed's default 5e8).
    pub reduce_bucket_size: f64,
    /// `"cpu"`: ZeRO-Offload, the share's optimizer state in host memory and its update on the CPU.
    pub offload_optimizer: OffloadDevice,
    /// Stage 3's parameter offload: `"cpu"` keeps the shares of the parameters in host memory, which is where this
    /// build's stage 3 always keeps them (its collectives work on host buffers), so `"none"` and `"cpu"` run alike.
    pub offload_param: OffloadDevice,
}

impl Default for ZeroSection {
    fn default() -> Self {
        Self {
            stage: 0,
            reduce_bucket_size: 5e8,
            offload_optimizer: OffloadDevice::None,
            offload_param: OffloadDevice::None,
        }
    }
}

impl ZeroSection {
    /// The stage to run, `None` for stage 0.
    pub fn zero_stage(&self) -> Option<ZeroStage> {
        match self.stage {
            1 => Some(ZeroStage::One),
            2 => Some(ZeroStage::Two),
            3 => Some(ZeroStage::Three),
            _ => None,
        }
    }

    /// Elements per collective window.
    pub fn bucket_elems(&self) -> usize {
        self.reduce_bucket_size as usize
    }

    /// The strategy this section asks for (`None` for stage 0: plain data parallelism).
    pub fn strategy<B: burn::tensor::backend::Backend>(&self) -> Option<Zero<B>> {
        let zero = Zero::new(self.zero_stage()?, self.bucket_elems());
        Some(if self.offload_optimizer == OffloadDevice::Cpu { zero.with_optimizer_offload() } else { zero })
    }
}

/// What stage 3 cannot partition in this build, named as the config names it (`[lora]`, `[dpo]`), or `None`: it
/// partitions what full finetuning trains through the causal-LM forward (pretraining, `[sft]`); an adapter's
/// frozen base and the preference, reward and online objectives' forwards are not partitioned yet.
pub fn not_partitioned(adapters: bool, trainer: Option<&str>) -> Option<String> {
    match (adapters, trainer) {
        (true, _) => Some("[lora] (an adapter's frozen base)".to_string()),
        (false, Some(trainer)) if trainer != "sft" => Some(format!("[{trainer}]")),
        _ => None,
    }
}

impl ConfigSection for ZeroSection {
    const NAME: &'static str = "zero";

    fn validate(&self) -> Result<(), InvalidKey> {
        match self.stage {
            0..=3 => {}
            other => return Err(InvalidKey::new("stage", format!("must be 0, 1, 2 or 3, got {other}"))),
        }
        if !(self.reduce_bucket_size >= 1.0 && self.reduce_bucket_size.is_finite()) {
            return Err(InvalidKey::new(
                "reduce_bucket_size",
                format!("must be a number of elements ≥ 1, got {}", self.reduce_bucket_size),
            ));
        }
        match self.offload_optimizer {
            OffloadDevice::None => {}
            OffloadDevice::Cpu if self.stage >= 1 => {}
            OffloadDevice::Cpu => {
                return Err(InvalidKey::new(
                    "offload_optimizer",
                    "needs stage 1, 2 or 3 (the optimizer state is partitioned)",
                ));
            }
            OffloadDevice::Nvme => {
                return Err(InvalidKey::new(
                    "offload_optimizer",
                    "\"nvme\" (ZeRO-Infinity) is not built: \"none\" or \"cpu\"",
                ));
            }
        }
        match self.offload_param {
            OffloadDevice::None => {}
            OffloadDevice::Cpu if self.stage == 3 => {}
            OffloadDevice::Cpu => {
                return Err(InvalidKey::new("offload_param", "needs stage 3 (the parameters are partitioned)"));
            }
            OffloadDevice::Nvme => {
                return Err(InvalidKey::new(
                    "offload_param",
                    "\"nvme\" (ZeRO-Infinity) is not built: \"none\" or \"cpu\"",
                ));
            }
        }
        Ok(())
    }
}
