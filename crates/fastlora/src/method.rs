//! LoRA as a finetuning method of the training loop: the adapters plug into llmtrain-accel's [`Finetune`] hook,
//! the way ZeRO's strategies plug into its Accelerator (PEFT's model wrapping, for Accelerate).

use std::path::Path;

use crate::{LoraConfig, LoraSection, attach, load_adapter, write_adapter_files};
use burn::tensor::backend::AutodiffBackend;
use llmtrain_accel::Finetune;
use llmtrain_core::model::LlamaModel;

/// Trains a PEFT adapter on a frozen (possibly 4-bit) base; checkpoints and `final/` hold the adapter, not the base.
pub struct LoraMethod {
    config: LoraConfig,
    /// LoRA+: B's learning-rate multiplier.
    loraplus_lr_ratio: Option<f64>,
}

impl LoraMethod {
    /// From the run config's `[lora]` section; `base` is the base model's directory, recorded in the adapter.
    pub fn new(section: &LoraSection, base: Option<&Path>) -> Self {
        let base = base.map(|p| p.display().to_string());
        Self { config: LoraConfig::from_section(section, base), loraplus_lr_ratio: section.loraplus_lr_ratio }
    }
}

impl<A: AutodiffBackend> Finetune<A> for LoraMethod {
    fn prepare(&self, model: &mut LlamaModel<A>, device: &A::Device) -> Result<(), String> {
        attach(model, &self.config, device).map(|_| ()).map_err(|e| format!("[lora]: {e}"))
    }

    fn save(&self, model: &LlamaModel<A>, dir: &Path) -> Result<(), String> {
        write_adapter_files(model, &self.config, dir).map_err(|e| e.to_string())
    }

    fn load(&self, model: &mut LlamaModel<A>, dir: &Path, device: &A::Device) -> Result<(), String> {
        // The checkpoint holds no base: the one this run built must be the one the adapter trained on.
        let saved = LoraConfig::load(dir).map_err(|e| e.to_string())?.base_model_name_or_path;
        if saved != self.config.base_model_name_or_path {
            tracing::warn!(
                "{}: the adapter was trained on base {saved:?}; this run's base is {:?}",
                dir.display(),
                self.config.base_model_name_or_path
            );
        }
        load_adapter(model, dir, device).map(|_| ()).map_err(|e| e.to_string())
    }

    fn saves_adapter_only(&self) -> bool {
        true
    }

    fn lr_scale(&self, name: &str) -> f64 {
        match self.loraplus_lr_ratio {
            Some(ratio) if name.ends_with("adapter.lora_b") => ratio,
            _ => 1.0,
        }
    }
}
