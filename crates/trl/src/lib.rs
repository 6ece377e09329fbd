//! llmtrain-trl — TRL's role: SFT, reward models, DPO and its variants, KTO and ORPO (offline), then PPO and GRPO.
//!
//! Built so far, each checked against TRL itself in `tests/dpo.rs`: [`dpo::DpoLoss`], TRL 1.16 DPOTrainer's loss
//! types and logged metrics over per-sequence completion log-probs; [`dpo::tokenize_pair`], its tokenization of a
//! preference row; [`dpo::PairBatch`] / [`dpo::sequence_logps`], a batch of pairs and the per-sequence log-probs
//! llmtrain's model gives it; and [`dpo::Dpo`], the LightningModule the one Trainer runs (a frozen reference
//! network, or the policy without its adapters, or precomputed log-probs). [`train`] runs it from a run config's
//! `[dpo]` section ([`dpo::DpoSection`], TRL's `DPOConfig` names) on `[data] files` of preference rows
//! ([`rows::read_items`]), which is what `llmtrain train` does for such a config.
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use llmtrain_trl::dpo::{DpoLoss, LossType, SequenceLogps};
//! # type B = burn::backend::Flex;
//! let device = Default::default();
//! let column = |v: &[f32]| Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
//! // The policy equals the reference (step 1): the sigmoid loss is ln 2.
//! let logps = SequenceLogps {
//!     chosen: column(&[-3.0]),
//!     rejected: column(&[-4.0]),
//!     ref_chosen: column(&[-3.0]),
//!     ref_rejected: column(&[-4.0]),
//!     chosen_tokens: column(&[2.0]),
//!     rejected_tokens: column(&[3.0]),
//! };
//! let loss = DpoLoss::new(0.1, vec![(LossType::Sigmoid, 1.0)], 0.0).loss(&logps);
//! assert!((loss.into_scalar() - std::f32::consts::LN_2).abs() < 1e-7);
//! ```

pub mod dpo;
mod error;
pub mod rows;
mod train;

pub use error::{Result, TrlError};
pub use train::{TRAINER_SECTIONS, TrlSummary, train, trainer_section};
