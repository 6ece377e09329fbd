//! What a finetuning method changes in a training run. Full finetuning changes nothing; llmtrain-fastlora's LoRA
//! attaches adapters and freezes the base, and writes a PEFT adapter instead of the whole model. The `llmtrain`
//! command composes the two: the method plugs in here, and llmtrain-lightning's Trainer runs the loop.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use llmtrain_core::model::LlamaModel;

/// A finetuning method's hooks into the training of a [`LlamaModel`] (llmtrain-lightning's causal-LM module calls
/// them). Errors are one-line messages.
pub trait Finetune<A: AutodiffBackend>: Sync {
    /// Adapts a freshly built or loaded model (before rank 0's weights are broadcast to the other ranks).
    fn prepare(&self, model: &mut LlamaModel<A>, device: &A::Device) -> Result<(), String>;
    /// Writes the method's files (a PEFT adapter) into `dir`: each checkpoint, and `final/`.
    fn save(&self, model: &LlamaModel<A>, dir: &Path) -> Result<(), String>;
    /// Restores what [`save`](Self::save) wrote into checkpoint `dir`, on the model the run built and prepared
    /// (an adapter method) or on the model loaded from the checkpoint (the others).
    fn load(&self, model: &mut LlamaModel<A>, dir: &Path, device: &A::Device) -> Result<(), String>;
    /// Whether checkpoints and `final/` hold only what `save` writes instead of the whole model: the base is
    /// frozen, so a resumed run rebuilds it from the run config (and re-quantizes a 4-bit base, which is
    /// deterministic) instead of storing a copy in every checkpoint.
    fn saves_adapter_only(&self) -> bool;
    /// The learning-rate multiplier of the parameter at burn path `name` (`layers.0.self_attn.q_proj.adapter.lora_b`;
    /// LoRA+ raises the B matrices').
    fn lr_scale(&self, _name: &str) -> f64 {
        1.0
    }
}

/// Every parameter trains; checkpoints and `final/` hold the whole model.
pub struct FullFinetune;

impl<A: AutodiffBackend> Finetune<A> for FullFinetune {
    fn prepare(&self, _: &mut LlamaModel<A>, _: &A::Device) -> Result<(), String> {
        Ok(())
    }
    fn save(&self, _: &LlamaModel<A>, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn load(&self, _: &mut LlamaModel<A>, _: &Path, _: &A::Device) -> Result<(), String> {
        Ok(())
    }
    fn saves_adapter_only(&self) -> bool {
        false
    }
}
