//! DPO (`[dpo]`, TRL's DPOTrainer): so far its loss and metrics, its tokenization of a preference row, and the
//! per-sequence log-probs of a batch of pairs.

mod batch;
mod data;
mod loss;
mod module;

pub use batch::{PairBatch, sequence_logps};
pub use data::{TokenizedPair, tokenize_pair};
pub use loss::{DpoLoss, DpoMetrics, LossType, SequenceLogps, UnknownLossType};
pub use module::Dpo;
