//! llmtrain-trl — TRL's role: SFT, reward models, DPO and its variants, KTO and ORPO (offline), and the online
//! trainers GRPO, RLOO and PPO, which sample their own completions from the policy.
//!
//! Built so far, each checked against TRL itself (`tests/`, and llmtrain-cli's `trl` end-to-end tests):
//! - [`dpo`]: DPOTrainer's loss types and metrics ([`dpo::DpoLoss`]), its tokenization of text and
//!   conversational rows, batches of pairs and their per-sequence log-probs, and [`dpo::Dpo`] with a reference
//!   ([`reference::Reference`]) that is a frozen copy, another checkpoint, the policy without its LoRA adapters,
//!   or precomputed log-probs.
//! - [`orpo`]: ORPOTrainer's tokenization, odds-ratio loss and metrics; no reference.
//! - [`kto`]: KTOTrainer's unpaired rows, KL pairs, loss types and metrics, with DPO's kinds of reference.
//! - [`reward`]: RewardTrainer's tokenization, Bradley–Terry loss (margins, centering) and metrics on a
//!   sequence classifier read and written as transformers' `*ForSequenceClassification`; [`reward::score_file`]
//!   is `llmtrain score`.
//! - [`sft`]: `[sft]`, the causal-LM job of llmtrain-lightning with SFTConfig's names and SFTTrainer's token
//!   metrics.
//! - [`online`]: GRPOTrainer (`grpo`, `dr_grpo` and `dapo` losses, `scale_rewards`, `num_iterations`, a KL term
//!   to a reference) and RLOOTrainer: each step samples completions with the KV cache (left-padded batches),
//!   scores them with reward functions ([`online::rewards`]) and a reward model, and computes group advantages over
//!   every rank's completions.
//! - [`ppo`]: the last TRL PPOTrainer (0.29): a value head on the policy, the reward model's score at the last
//!   token with a per-token KL penalty, GAE and whitened advantages, `num_ppo_epochs` steps per rollout batch.
//! - [`policy`]: what they share: an [`policy::Objective`] on a policy network, run by the one Trainer as a
//!   [`policy::PolicyModule`] whose files are the causal-LM objective's.
//! - [`rows`]: `[data] files` read in TRL's formats, converted by a trainer and split.
//!
//! [`train`] runs the trainer a run config's section selects (`[sft]`, `[dpo]`, `[orpo]`, `[kto]`, `[reward]`,
//! `[grpo]`, `[rloo]`, `[ppo]`: TRL's config names), which is what `llmtrain train` does for such a config.
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
pub mod kto;
pub mod online;
pub mod orpo;
pub mod policy;
pub mod ppo;
pub mod reference;
pub mod reward;
pub mod rows;
pub mod sft;
mod train;

pub use error::{Result, TrlError};
pub use train::{TRAINER_SECTIONS, TrlSummary, pad_id, train, trainer_section};
