//! `--model DIR | --params 7B [--family F]`: the model a memory question is about (`estimate-memory`,
//! `recommend`), from a checkpoint's config.json or a parameter count whose standard shape stands for it.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use llmtrain_core::hf::{Head, HfConfig};
use llmtrain_core::model::ModelConfig;
use llmtrain_memopt::estimate::{Family, KnownShape, count_params, parse_param_count, standard_shape};

#[derive(clap::Args)]
pub struct ModelSize {
    /// An HF checkpoint directory (its config.json gives the shape and parameter count).
    #[arg(long, conflicts_with = "params", required_unless_present = "params")]
    pub model: Option<PathBuf>,
    /// A parameter count instead of a model: 7B, 7.5B, 350M, ... A standard size (0.5B, 1B, 1.5B, 3B, 7B, 8B,
    /// 13B, 14B, 32B, 70B, 72B) stands for that model's published shape (7B: Llama 2 7B; see --family); another
    /// count gives full finetuning's model states only.
    #[arg(long)]
    pub params: Option<String>,
    /// The family whose shape of the --params size is assumed; default: the first with one, in this order.
    #[arg(long, requires = "params", conflicts_with = "model", value_parser = Family::NAMES)]
    pub family: Option<String>,
}

/// The model the flags name.
pub struct SizedModel {
    pub params: u64,
    /// The shape, when known.
    pub config: Option<ModelConfig>,
    /// The checkpoint's head (`--model`), a causal LM for a `--params` size.
    pub head: Head,
    /// The standard shape a `--params` size stands for.
    pub assumed: Option<&'static KnownShape>,
}

impl ModelSize {
    pub fn resolve(&self) -> Result<SizedModel> {
        if let Some(dir) = &self.model {
            let config = HfConfig::load(dir)?;
            let params = count_params(&config.model);
            return Ok(SizedModel { params, config: Some(config.model), head: config.head, assumed: None });
        }
        let Some(text) = &self.params else { bail!("give --model DIR or --params N") };
        let count = parse_param_count(text)
            .ok_or_else(|| anyhow!("--params {text}: expected a count such as 7B, 7.5B, 350M or 125000"))?;
        let family = match self.family.as_deref() {
            Some(name) => Some(
                Family::from_name(name)
                    .ok_or_else(|| anyhow!("--family {name}: expected one of {}", Family::NAMES.join(", ")))?,
            ),
            None => None,
        };
        Ok(match standard_shape(count, family, text)? {
            Some(shape) => {
                let config = shape.config();
                SizedModel {
                    params: count_params(&config),
                    config: Some(config),
                    head: Head::CausalLm,
                    assumed: Some(shape),
                }
            }
            None => SizedModel { params: count, config: None, head: Head::CausalLm, assumed: None },
        })
    }
}
