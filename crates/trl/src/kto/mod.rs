//! KTO (`[kto]`, TRL's KTOTrainer): unpaired completions labelled desirable or not, each scored against a
//! reference, with the policy's KL to the reference estimated on mismatched prompt/completion pairs.

mod data;
mod loss;
mod objective;
mod section;

pub use data::{KtoItem, assign_kl_completions, kto_item_from_row};
pub use loss::{KtoLogps, KtoLoss, KtoLossType};
pub use objective::Kto;
pub use section::KtoSection;
