//! Training's building blocks: parameters by path, the gradient buffer and AdamW, clipping, learning-rate
//! schedules, loss scaling, saved training state (checkpoints), metrics, the causal-LM loss and evaluation, and
//! what a run is built from. The loop itself is llmtrain-lightning's `Trainer`.

pub mod accuracy;
pub mod checkpoint;
mod lm;
mod loss;
pub mod loss_scale;
pub mod metrics;
mod optim;
pub mod param_paths;
pub mod plot;
mod run_dir;
mod schedule;
mod setup;

pub use lm::{
    batch_loss, batch_tensors, eval_mean, evaluate, evaluate_parts, loss_from_hidden, sample_text, unigram_entropy,
};
pub use loss::{IGNORE_INDEX, causal_lm_loss, causal_lm_loss_parts};
pub use loss_scale::{LossScaleConfig, LossScaler};
pub use optim::{AdamW, AdamWConfig, GradientBuffer, Moments, clip_grad_norm};
pub use run_dir::{clear_previous_run, earlier_run_contents};
pub use schedule::{Schedule, ScheduleKind};
pub use setup::{TrainOverrides, build_model, data_options, expand_files, resolve_tokenizer};
