//! Training: the causal-LM loss, AdamW, learning-rate schedules, clipping and accumulation, checkpoints, metrics,
//! and the pieces every training loop shares (the loop itself is `llmtrain-accel`'s `run_training`).

pub mod accuracy;
pub mod checkpoint;
mod loss;
pub mod loss_scale;
pub mod metrics;
mod optim;
pub mod plot;
mod schedule;
mod trainer;

pub use loss::{IGNORE_INDEX, causal_lm_loss, causal_lm_loss_parts};
pub use loss_scale::{LossScaleConfig, LossScaler};
pub use optim::{AdamW, AdamWConfig, GradientBuffer, Moments, clip_grad_norm};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    TrainOverrides, TrainSummary, batch_loss, batch_tensors, build_model, clear_previous_run, data_options,
    earlier_run_contents, eval_mean, evaluate, evaluate_parts, expand_files, resolve_tokenizer, sample_text,
    unigram_entropy,
};
