//! Training's building blocks: parameters by path, the gradient buffer and AdamW, clipping, learning-rate
//! schedules, loss scaling, saved training state (checkpoints), metrics, and the causal-LM objective's batch
//! loss and evaluation. What a run is built from is [`crate::setup`]. The loop itself is llmtrain-lightning's `Trainer`.

pub mod accuracy;
pub mod checkpoint;
mod lm;
pub mod loss_scale;
pub mod metrics;
mod optim;
pub mod param_paths;
pub mod plot;
mod run_dir;
mod schedule;

pub use crate::data::IGNORE_INDEX;
pub use crate::model::loss::{causal_lm_loss, causal_lm_loss_parts, token_statistics};
pub use lm::{batch_loss, batch_tensors, eval_mean, loss_from_hidden, sample_text, unigram_entropy};
pub use loss_scale::{LossScaleConfig, LossScaler};
pub use optim::{AdamW, AdamWConfig, BiasCorrection, GradientBuffer, Moments, clip_coefficient, clip_grad_norm};
pub use run_dir::{clear_previous_run, earlier_run_contents, set_aside_after};
pub use schedule::{Schedule, ScheduleKind, WarmupType};
