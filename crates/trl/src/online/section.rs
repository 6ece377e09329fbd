//! `[grpo]` and `[rloo]`: TRL's `GRPOConfig` and `RLOOConfig` names and defaults for what llmtrain's online
//! trainers do. Both read one table shape ([`OnlineSection`]); the keys only one of them has are refused under the
//! other, and the defaults differ where TRL's do (`num_generations`, `beta`).

use std::path::PathBuf;

use llmtrain_core::config::{ConfigSection, InvalidKey};
use llmtrain_core::generate::SamplingConfig;
use serde::{Deserialize, Serialize};

use super::advantages::ScaleRewards;
use super::loss::GrpoLossType;
use super::rewards::{RewardFunction, RewardSpec};

/// The keys of `[grpo]` and `[rloo]` (unset ones take the trainer's TRL default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnlineSection {
    /// Completions sampled per prompt (a group); GRPO 8, RLOO 2.
    pub num_generations: Option<usize>,
    /// New tokens at most per completion (512).
    pub max_completion_length: Option<usize>,
    /// Sampling temperature (1.0); the log-probs are computed at the same temperature, as TRL does.
    pub temperature: Option<f64>,
    /// Nucleus sampling (1.0 = off).
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: Option<usize>,
    /// The KL coefficient (GRPO 0.0: no reference; RLOO 0.05).
    pub beta: Option<f64>,
    /// GRPO: multiply the KL term by the importance ratio (true, TRL's default).
    pub use_bias_correction_kl: Option<bool>,
    /// The lower clipping bound of the ratio, and the upper one unless `epsilon_high` is set (0.2).
    pub epsilon: Option<f64>,
    pub epsilon_high: Option<f64>,
    /// Optimizer steps taken on each batch of rollouts (1).
    pub num_iterations: Option<usize>,
    /// Completions that reach `max_completion_length` without an EOS are left out of the loss.
    pub mask_truncated_completions: bool,
    /// GRPO: `grpo`, `dr_grpo` or `dapo` (the default).
    pub loss_type: Option<String>,
    /// GRPO: `group` (the default), `batch` or `none`.
    pub scale_rewards: Option<String>,
    /// RLOO: standardise the advantages over the batch.
    pub normalize_advantages: Option<bool>,
    /// RLOO: clip each reward into `[low, high]` before the baselines.
    pub reward_clip_range: Option<[f64; 2]>,
    /// Reward functions by name (see [`RewardFunction`]), combined with `reward_weights`.
    pub reward_funcs: Vec<String>,
    /// One weight per reward function, then one for the reward model (default: all 1).
    pub reward_weights: Option<Vec<f64>>,
    /// A `*ForSequenceClassification` checkpoint (trl's `[reward]` writes one) that scores prompt + completion.
    pub reward_model: Option<PathBuf>,
    /// The dataset column `exact_match` compares completions with ("answer").
    pub answer_column: Option<String>,
    /// The regular expression `format` requires a completion to match whole.
    pub format_pattern: Option<String>,
    /// `soft_overlong_punishment`: the last tokens before `max_completion_length` over which the penalty ramps
    /// from 0 to -1 (TRL's `soft_punish_cache`, default: a quarter of `max_completion_length`).
    pub soft_punish_cache: Option<usize>,
    /// Another HF checkpoint as the reference for the KL term (default: a frozen copy of the starting weights, or
    /// under `[lora]` the policy with its adapters disabled).
    pub ref_model: Option<PathBuf>,
}

/// Which online trainer a section configures, with its own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    Grpo { loss_type: GrpoLossType, scale_rewards: ScaleRewards },
    Rloo { normalize_advantages: bool, reward_clip_range: Option<[f64; 2]> },
}

/// A section with every default filled in and every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineSettings {
    pub algorithm: Algorithm,
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub beta: f64,
    pub use_bias_correction_kl: bool,
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    pub num_iterations: usize,
    pub mask_truncated_completions: bool,
    pub rewards: RewardSpec,
    pub ref_model: Option<PathBuf>,
}

impl OnlineSettings {
    /// How completions are sampled (`seed` is set per row by the trainer).
    pub fn sampling(&self, stop_tokens: Vec<u32>) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature as f32,
            top_k: self.top_k,
            top_p: self.top_p as f32,
            seed: 0,
            max_new_tokens: self.max_completion_length,
            stop_tokens,
        }
    }
}

impl OnlineSection {
    /// The settings for the trainer `name` (`grpo` or `rloo`), or the first key that cannot work.
    pub fn settings(&self, name: &str) -> Result<OnlineSettings, InvalidKey> {
        let grpo = name == GrpoSection::NAME;
        let only = |key: &str, set: bool, owner: &str| -> Result<(), InvalidKey> {
            if set {
                return Err(InvalidKey::new(
                    key,
                    format!("is a [{owner}] key (TRL's {}Config), not a [{name}] one", owner.to_uppercase()),
                ));
            }
            Ok(())
        };
        let algorithm = if grpo {
            only("normalize_advantages", self.normalize_advantages.is_some(), "rloo")?;
            only("reward_clip_range", self.reward_clip_range.is_some(), "rloo")?;
            let loss_type = self.loss_type.as_deref().unwrap_or("dapo");
            let loss_type = loss_type.parse().map_err(|e: String| InvalidKey::new("loss_type", e))?;
            let scale = self.scale_rewards.as_deref().unwrap_or("group");
            let scale_rewards = scale.parse().map_err(|e: String| InvalidKey::new("scale_rewards", e))?;
            Algorithm::Grpo { loss_type, scale_rewards }
        } else {
            only("loss_type", self.loss_type.is_some(), "grpo")?;
            only("scale_rewards", self.scale_rewards.is_some(), "grpo")?;
            only("use_bias_correction_kl", self.use_bias_correction_kl.is_some(), "grpo")?;
            if let Some([low, high]) = self.reward_clip_range
                && low >= high
            {
                return Err(InvalidKey::new(
                    "reward_clip_range",
                    format!("[{low}, {high}]: the low end must be below the high one"),
                ));
            }
            Algorithm::Rloo {
                normalize_advantages: self.normalize_advantages.unwrap_or(false),
                reward_clip_range: self.reward_clip_range,
            }
        };
        let num_generations = self.num_generations.unwrap_or(if grpo { 8 } else { 2 });
        if num_generations < 2 {
            return Err(InvalidKey::new(
                "num_generations",
                format!("must be at least 2 (a group's baseline needs another completion), got {num_generations}"),
            ));
        }
        let max_completion_length = self.max_completion_length.unwrap_or(512);
        if max_completion_length == 0 {
            return Err(InvalidKey::new("max_completion_length", "must be at least 1 token"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(InvalidKey::new("temperature", format!("must be positive, got {temperature}")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(InvalidKey::new("top_p", format!("must be in (0, 1], got {top_p}")));
        }
        let beta = self.beta.unwrap_or(if grpo { 0.0 } else { 0.05 });
        if !(beta >= 0.0 && beta.is_finite()) {
            return Err(InvalidKey::new("beta", format!("must be 0 or more, got {beta}")));
        }
        let epsilon_low = self.epsilon.unwrap_or(0.2);
        let epsilon_high = self.epsilon_high.unwrap_or(epsilon_low);
        for (key, value) in [("epsilon", epsilon_low), ("epsilon_high", epsilon_high)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(InvalidKey::new(key, format!("must be positive, got {value}")));
            }
        }
        if epsilon_low >= 1.0 {
            return Err(InvalidKey::new(
                "epsilon",
                format!("must be below 1 (the ratio's floor is 1 - epsilon), got {epsilon_low}"),
            ));
        }
        let num_iterations = self.num_iterations.unwrap_or(1);
        if num_iterations == 0 {
            return Err(InvalidKey::new("num_iterations", "must be at least 1"));
        }
        let rewards = self.reward_spec(max_completion_length)?;
        Ok(OnlineSettings {
            algorithm,
            num_generations,
            max_completion_length,
            temperature,
            top_p,
            top_k: self.top_k.unwrap_or(0),
            beta,
            use_bias_correction_kl: self.use_bias_correction_kl.unwrap_or(true),
            epsilon_low,
            epsilon_high,
            num_iterations,
            mask_truncated_completions: self.mask_truncated_completions,
            rewards,
            ref_model: self.ref_model.clone(),
        })
    }

    fn reward_spec(&self, max_completion_length: usize) -> Result<RewardSpec, InvalidKey> {
        let functions = self
            .reward_funcs
            .iter()
            .map(|name| {
                RewardFunction::from_name(
                    name,
                    self.answer_column.as_deref().unwrap_or("answer"),
                    self.format_pattern.as_deref(),
                    max_completion_length,
                    self.soft_punish_cache,
                )
                .map_err(|message| InvalidKey::new("reward_funcs", message))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let count = functions.len() + usize::from(self.reward_model.is_some());
        if count == 0 {
            return Err(InvalidKey::new(
                "reward_funcs",
                format!("no reward: name reward functions ({}) or set reward_model", RewardFunction::NAMES.join(", ")),
            ));
        }
        let weights = self.reward_weights.clone().unwrap_or_else(|| vec![1.0; count]);
        if weights.len() != count {
            return Err(InvalidKey::new(
                "reward_weights",
                format!(
                    "has {} weight(s) for {count} reward(s) (the functions, then the reward model): give one each",
                    weights.len()
                ),
            ));
        }
        Ok(RewardSpec { functions, reward_model: self.reward_model.clone(), weights })
    }
}

/// The `[grpo]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GrpoSection(pub OnlineSection);

/// The `[rloo]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RlooSection(pub OnlineSection);

impl ConfigSection for GrpoSection {
    const NAME: &'static str = "grpo";

    fn validate(&self) -> Result<(), InvalidKey> {
        self.0.settings(Self::NAME).map(|_| ())
    }
}

impl ConfigSection for RlooSection {
    const NAME: &'static str = "rloo";

    fn validate(&self) -> Result<(), InvalidKey> {
        self.0.settings(Self::NAME).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str, text: &str) -> Result<OnlineSettings, String> {
        let section: OnlineSection = toml::from_str(text).map_err(|e| e.to_string())?;
        section.settings(name).map_err(|e| format!("{}: {}", e.key, e.message))
    }

    #[test]
    fn defaults_are_trl_s_and_keys_of_the_other_trainer_are_refused() {
        let grpo = settings("grpo", "reward_funcs = [\"exact_match\"]").unwrap();
        assert_eq!(
            grpo.algorithm,
            Algorithm::Grpo { loss_type: GrpoLossType::Dapo, scale_rewards: ScaleRewards::Group }
        );
        assert_eq!((grpo.num_generations, grpo.beta, grpo.epsilon_low, grpo.epsilon_high), (8, 0.0, 0.2, 0.2));
        let rloo = settings("rloo", "reward_funcs = [\"exact_match\"]").unwrap();
        assert_eq!((rloo.num_generations, rloo.beta), (2, 0.05));
        let err = settings("rloo", "reward_funcs = [\"exact_match\"]\nloss_type = \"grpo\"").unwrap_err();
        assert!(err.starts_with("loss_type: is a [grpo] key"), "{err}");
        let err = settings("grpo", "reward_funcs = [\"exact_mtch\"]").unwrap_err();
        assert!(
            err.starts_with("reward_funcs: unknown reward function `exact_mtch`; expected one of: exact_match"),
            "{err}"
        );
        let err = settings(
            "grpo",
            "reward_funcs = [\"exact_match\", \"format\"]\nformat_pattern = \"^a$\"\nreward_weights = [1.0]",
        )
        .unwrap_err();
        assert!(err.starts_with("reward_weights: has 1 weight(s) for 2 reward(s)"), "{err}");
        assert!(settings("grpo", "").unwrap_err().starts_with("reward_funcs: no reward"));
        assert!(
            settings("grpo", "reward_funcs = [\"exact_match\"]\nloss_type = \"bnpo\"")
                .unwrap_err()
                .starts_with("loss_type:")
        );
        assert!(
            settings("grpo", "reward_funcs = [\"exact_match\"]\nnum_generations = 1")
                .unwrap_err()
                .starts_with("num_generations:")
        );
        assert!(settings("grpo", "reward_funcs = [\"exact_match\"]\nbogus = 1").is_err(), "unknown keys are refused");
    }
}
