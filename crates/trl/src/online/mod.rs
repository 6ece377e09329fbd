//! TRL's online trainers, GRPO (`[grpo]`, with Dr. GRPO's and DAPO's aggregations) and RLOO (`[rloo]`): each step
//! samples completions of its prompts from the policy with the KV cache ([`rollout`]), scores them with reward
//! functions and a reward model ([`rewards`]), turns the rewards into advantages over each prompt's group
//! ([`advantages`]) and trains on the clipped-ratio loss ([`loss`]). [`Online`] is the objective the one
//! Trainer runs.

pub mod advantages;
pub mod loss;
mod objective;
pub mod rewards;
pub mod rollout;
pub mod section;

pub use objective::{Online, RolloutTimings};
pub use section::{GrpoSection, OnlineSection, OnlineSettings, RlooSection};
