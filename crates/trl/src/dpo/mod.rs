//! DPO (`[dpo]`, TRL's DPOTrainer): so far its loss and metrics.

mod loss;

pub use loss::{DpoLoss, DpoMetrics, LossType, SequenceLogps, UnknownLossType};
