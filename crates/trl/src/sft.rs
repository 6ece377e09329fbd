//! SFT (`[sft]`, TRL's SFTTrainer): causal-language-model training on text, messages or prompt/completion rows
//! is llmtrain-lightning's job ([`llmtrain_lightning::train`]); `[sft]` sets its data options with SFTConfig's
//! names and logs SFTTrainer's token metrics (`mean_token_accuracy`, `entropy`) beside the loss.

use llmtrain_accel::{Accelerator, Finetune};
use llmtrain_core::config::{ConfigSection, InvalidKey, RunConfig};
use llmtrain_core::data::LossOn;
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::setup::TrainOverrides;
use llmtrain_lightning::TrainSummary;
use llmtrain_memopt::MemoptSection;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The `[sft]` section: each key given replaces its `[data]` counterpart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    /// Tokens per sequence (`[data] seq_len`); longer rows keep their start.
    pub max_length: Option<usize>,
    /// Several sequences per row (`[data] packing`).
    pub packing: Option<bool>,
    /// Score only the completion of prompt/completion rows (TRL's default: on); `false` scores the prompt too.
    pub completion_only_loss: Option<bool>,
    /// Score only the assistant turns of conversations.
    pub assistant_only_loss: bool,
}

impl ConfigSection for SftSection {
    const NAME: &'static str = "sft";

    fn validate(&self) -> std::result::Result<(), InvalidKey> {
        if self.max_length.is_some_and(|n| n < 2) {
            return Err(InvalidKey::new("max_length", "must be at least 2 tokens"));
        }
        if self.assistant_only_loss && self.completion_only_loss == Some(false) {
            return Err(InvalidKey::new(
                "completion_only_loss",
                "false scores every token, which assistant_only_loss = true contradicts",
            ));
        }
        Ok(())
    }
}

impl SftSection {
    /// `config` with this section's settings in its `[data]` section.
    pub fn apply(&self, config: &RunConfig) -> RunConfig {
        let mut config = config.clone();
        let data = &mut config.data;
        if let Some(max_length) = self.max_length {
            data.seq_len = max_length;
        }
        if let Some(packing) = self.packing {
            data.packing = packing;
        }
        data.loss_on = match (self.assistant_only_loss, self.completion_only_loss) {
            (true, _) => LossOn::AssistantOnly,
            (false, Some(false)) => LossOn::All,
            // TRL's default: prompt/completion rows score their completion (text and messages rows score all).
            (false, Some(true) | None) => LossOn::CompletionOnly,
        };
        config
    }
}

/// Runs `[sft]`: the causal-LM job with the section applied and TRL's token metrics logged.
pub fn train<A: AutodiffKernels>(
    config: &RunConfig,
    memopt: &MemoptSection,
    overrides: &TrainOverrides,
    accelerator: &mut Accelerator<A>,
    method: &dyn Finetune<A>,
    device: &A::Device,
) -> Result<TrainSummary> {
    let section = config.section::<SftSection>()?.unwrap_or_default();
    let config = section.apply(config);
    Ok(llmtrain_lightning::train_with(&config, memopt, overrides, accelerator, method, device, true)?)
}
