//! DPO (`[dpo]`, TRL's DPOTrainer): its loss and metrics, its tokenization of a preference row, the per-sequence
//! log-probs of a batch of pairs, the LightningModule, and the config section.

mod batch;
mod data;
mod loss;
mod module;
mod section;

pub use batch::{
    PAIR_TOKEN_METRICS, PairBatch, RowStats, TokenForward, pair_token_ratios, sequence_logps, sequence_logps_with_stats,
};
pub use data::{TokenizedPair, pair_from_row, tokenize_conversation_pair, tokenize_pair};
pub use loss::{DpoLoss, DpoMetrics, LossType, SequenceLogps, UnknownLossType};
pub use module::Dpo;
pub use section::{DpoSection, OneOrMany};
