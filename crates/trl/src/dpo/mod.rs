//! DPO (`[dpo]`, TRL's DPOTrainer): so far its loss and metrics, and its tokenization of a preference row.

mod data;
mod loss;

pub use data::{TokenizedPair, tokenize_pair};
pub use loss::{DpoLoss, DpoMetrics, LossType, SequenceLogps, UnknownLossType};
