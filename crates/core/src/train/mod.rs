//! Training: the causal-LM loss, AdamW, learning-rate schedules, clipping and accumulation, checkpoints, metrics,
//! and the loop that ties them together ([`run_training`]).

pub mod checkpoint;
mod loss;
pub mod metrics;
mod optim;
pub mod plot;
mod schedule;
mod trainer;

pub use loss::{IGNORE_INDEX, causal_lm_loss, causal_lm_loss_parts};
pub use optim::{AdamW, AdamWConfig, GradientBuffer, Moments, clip_grad_norm};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{StepStats, TrainOverrides, TrainSummary, run_training, train_step, unigram_entropy};
