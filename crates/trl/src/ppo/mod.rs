//! PPO (`[ppo]`), as the last TRL `PPOTrainer` (0.29) trains: each rollout batch is sampled from the policy,
//! scored by a reward model at its last token, penalised per token by the KL to a reference, turned into GAE
//! advantages and returns against a value head ([`targets`]), and trained on for `num_ppo_epochs` optimizer steps
//! with the clipped policy and value losses ([`loss`]).

pub mod loss;
mod module;
pub mod section;
pub mod targets;

pub use module::{Ppo, PpoRollout, VALUE_HEAD_FILE};
pub use section::PpoSection;
