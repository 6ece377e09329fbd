//! `[ppo]`: the names and defaults of the last TRL `PPOConfig` (0.29, `trl.experimental.ppo`) for what llmtrain's
//! PPO does.

use std::path::PathBuf;

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

/// The `[ppo]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoSection {
    /// Optimizer steps taken on each batch of rollouts (each a pass over it).
    pub num_ppo_epochs: usize,
    /// Mini-batches per rollout batch; this build takes one (a rollout batch is one optimizer step's batch).
    pub num_mini_batches: usize,
    /// New tokens at most per response.
    pub response_length: usize,
    /// Sampling temperature; the log-probs are computed at it.
    pub temperature: f64,
    /// Subtracted from the score of a response without an EOS token.
    pub missing_eos_penalty: Option<f64>,
    /// The per-token KL penalty's coefficient, and its estimator (`k1`: log-ratio, `k3`).
    pub kl_coef: f64,
    pub kl_estimator: String,
    /// Whiten the per-token rewards before GAE.
    pub whiten_rewards: bool,
    /// The policy ratio's and the value's clip ranges, and the value loss's weight.
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    /// GAE's discount and λ.
    pub gamma: f64,
    pub lam: f64,
    /// The reward model: a one-label `*ForSequenceClassification` checkpoint (trl's `[reward]` writes one).
    pub reward_model_path: Option<PathBuf>,
    /// Another HF checkpoint as the reference (default: a frozen copy of the starting weights, or under `[lora]`
    /// the policy with its adapters disabled).
    pub ref_model: Option<PathBuf>,
}

impl Default for PpoSection {
    fn default() -> Self {
        Self {
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            response_length: 53,
            temperature: 0.7,
            missing_eos_penalty: None,
            kl_coef: 0.05,
            kl_estimator: "k1".into(),
            whiten_rewards: false,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            reward_model_path: None,
            ref_model: None,
        }
    }
}

impl PpoSection {
    /// Whether the KL estimator is k3 (`(r.exp() - 1) - r`) rather than k1 (`-r`), r = ref − logπ.
    pub fn k3(&self) -> bool {
        self.kl_estimator == "k3"
    }
}

impl ConfigSection for PpoSection {
    const NAME: &'static str = "ppo";

    fn validate(&self) -> Result<(), InvalidKey> {
        if self.num_ppo_epochs == 0 {
            return Err(InvalidKey::new("num_ppo_epochs", "must be at least 1"));
        }
        if self.num_mini_batches != 1 {
            return Err(InvalidKey::new(
                "num_mini_batches",
                format!(
                    "{}: this build trains each rollout batch as one optimizer step per epoch (num_mini_batches = 1); \
                     split it with gradient_accumulation_steps instead",
                    self.num_mini_batches
                ),
            ));
        }
        if self.response_length == 0 {
            return Err(InvalidKey::new("response_length", "must be at least 1 token"));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(InvalidKey::new("temperature", format!("must be positive, got {}", self.temperature)));
        }
        if !["k1", "k3"].contains(&self.kl_estimator.as_str()) {
            return Err(InvalidKey::new("kl_estimator", format!("unknown `{}`; expected k1 or k3", self.kl_estimator)));
        }
        for (key, value) in [("cliprange", self.cliprange), ("cliprange_value", self.cliprange_value)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(InvalidKey::new(key, format!("must be positive, got {value}")));
            }
        }
        for (key, value) in
            [("kl_coef", self.kl_coef), ("vf_coef", self.vf_coef), ("gamma", self.gamma), ("lam", self.lam)]
        {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(InvalidKey::new(key, format!("must be 0 or more, got {value}")));
            }
        }
        if self.reward_model_path.is_none() {
            return Err(InvalidKey::new(
                "reward_model_path",
                "PPO needs a reward model: a [reward] run's final/ or any one-label *ForSequenceClassification checkpoint",
            ));
        }
        Ok(())
    }
}
