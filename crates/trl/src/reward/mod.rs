//! Reward modelling (`[reward]`, TRL's RewardTrainer): a decoder with a scalar head
//! ([`SequenceClassifier`](llmtrain_core::model::SequenceClassifier)) learns to score the chosen completion of
//! each preference pair above the rejected one (the Bradley–Terry loss), and is written as transformers'
//! `*ForSequenceClassification`.

mod data;
mod loss;
mod module;
mod score;
mod section;

pub use data::{RewardPair, reward_pair_from_row, score_inputs, tokenize_for_score};
pub use loss::{RewardLoss, RewardMetrics};
pub use module::RewardModule;
pub use score::{RowScores, score_file};
pub use section::RewardSection;
