//! ORPO (`[orpo]`, TRL's ORPOTrainer): no reference model; the loss is the chosen completions' NLL minus β times
//! the log-sigmoid of the log odds ratio between the chosen and the rejected completion.

mod data;
mod loss;
mod module;
mod section;

pub use data::{OrpoPair, orpo_pair_from_row};
pub use loss::{OrpoLogps, OrpoLoss, OrpoMetrics};
pub use module::Orpo;
pub use section::OrpoSection;
