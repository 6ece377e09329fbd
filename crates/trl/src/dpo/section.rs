//! `[dpo]`: TRL's `DPOConfig` names and defaults for what llmtrain's DPO does; the rest of a run (optimizer,
//! batch, steps) comes from the core sections as for every trainer.

use std::path::PathBuf;

use llmtrain_core::config::{ConfigSection, InvalidKey};
use serde::{Deserialize, Serialize};

use super::loss::{DpoLoss, LossType};

/// One name or a list of them (TRL accepts both for `loss_type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Self::One(name) => vec![name.as_str()],
            Self::Many(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

/// The `[dpo]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSection {
    /// The KL penalty's strength (the implicit reward's scale).
    pub beta: f64,
    /// A loss type or a list of them, summed with `loss_weights` (MPO).
    pub loss_type: OneOrMany,
    /// One weight per loss type (default: all 1).
    pub loss_weights: Option<Vec<f64>>,
    /// The chance that a preference label is flipped (`robust`; conservative DPO for `sigmoid`).
    pub label_smoothing: f64,
    /// Tokens of prompt + completion kept (`keep_start` truncation); pairs whose prompt alone reaches it are
    /// dropped, as TRL drops them.
    pub max_length: usize,
    /// Another HF checkpoint as the reference (relative paths from the config's directory); default: a frozen
    /// copy of the starting weights, or under `[lora]` the policy with its adapters disabled.
    pub ref_model: Option<PathBuf>,
    /// Score every pair with the reference once before training and keep only those log-probs (the reference
    /// then leaves memory).
    pub precompute_ref_log_probs: bool,
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: OneOrMany::One("sigmoid".into()),
            loss_weights: None,
            label_smoothing: 0.0,
            max_length: 1024,
            ref_model: None,
            precompute_ref_log_probs: false,
        }
    }
}

impl DpoSection {
    /// The loss this section describes (it has been validated).
    pub fn loss(&self) -> Result<DpoLoss, InvalidKey> {
        let names = self.loss_type.names();
        let types = names
            .iter()
            .map(|name| name.parse::<LossType>().map_err(|e| InvalidKey::new("loss_type", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let weights = self.loss_weights.clone().unwrap_or_else(|| vec![1.0; types.len()]);
        Ok(DpoLoss::new(self.beta, types.into_iter().zip(weights).collect(), self.label_smoothing))
    }
}

impl ConfigSection for DpoSection {
    const NAME: &'static str = "dpo";

    fn validate(&self) -> Result<(), InvalidKey> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(InvalidKey::new("beta", format!("must be a positive number, got {}", self.beta)));
        }
        let types = self.loss_type.names().len();
        if types == 0 {
            return Err(InvalidKey::new("loss_type", "names no loss type"));
        }
        if let Some(weights) = &self.loss_weights
            && weights.len() != types
        {
            return Err(InvalidKey::new(
                "loss_weights",
                format!("has {} weight(s) for {types} loss type(s): give one per loss_type", weights.len()),
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(InvalidKey::new(
                "label_smoothing",
                format!("must be in [0, 0.5), got {}", self.label_smoothing),
            ));
        }
        if self.max_length < 2 {
            return Err(InvalidKey::new("max_length", "must be at least 2 tokens"));
        }
        self.loss().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DpoSection, String> {
        let section: DpoSection = toml::from_str(text).map_err(|e| e.to_string())?;
        section.validate().map_err(|e| format!("{}: {}", e.key, e.message))?;
        Ok(section)
    }

    #[test]
    fn loss_type_is_a_name_or_a_list_with_weights_and_unknown_names_list_the_valid_ones() {
        let one = parse("loss_type = \"ipo\"").unwrap();
        assert_eq!(one.loss().unwrap().losses, vec![(LossType::Ipo, 1.0)]);
        let many = parse("loss_type = [\"sigmoid\", \"sft\"]\nloss_weights = [0.8, 0.2]").unwrap();
        assert_eq!(many.loss().unwrap().losses, vec![(LossType::Sigmoid, 0.8), (LossType::Sft, 0.2)]);
        let err = parse("loss_type = \"sigmod\"").unwrap_err();
        assert!(err.starts_with("loss_type: unknown DPO loss_type `sigmod`; expected one of: sigmoid, hinge"), "{err}");
        let err = parse("loss_type = [\"sigmoid\"]\nloss_weights = [1.0, 2.0]").unwrap_err();
        assert!(err.starts_with("loss_weights: has 2 weight(s) for 1 loss type(s)"), "{err}");
        assert!(parse("beta = 0.0").unwrap_err().starts_with("beta:"));
        assert!(parse("rpo_alpha = 1.0").is_err(), "unknown keys are refused");
        assert_eq!(parse("").unwrap(), DpoSection::default());
    }
}
