//! Callbacks (Lightning's `Callback`): code the Trainer calls at points of a fit, with state that is part of every
//! checkpoint. Built in: [`EarlyStopping`], [`ModelCheckpoint`] (which the Trainer also asks how to name and prune
//! its checkpoints), [`ProgressBar`] (on by default), [`LearningRateMonitor`] and [`ThroughputMonitor`].

mod early_stopping;
mod lr_monitor;
mod model_checkpoint;
mod progress_bar;
mod throughput;

use serde_json::{Map, Value};

pub use early_stopping::{EarlyStopping, EarlyStoppingSection, Mode};
pub use lr_monitor::LearningRateMonitor;
pub use model_checkpoint::{ModelCheckpoint, ModelCheckpointSection};
pub use progress_bar::ProgressBar;
pub use throughput::ThroughputMonitor;

use crate::error::Result;

/// What a callback asks of the Trainer after it was called.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    Continue,
    /// End the fit after this step (checkpoint and `final/` written), for the reason given.
    Stop(String),
}

/// Code the Trainer runs at points of a fit (rank 0 and every other rank alike, so all stop together).
pub trait Callback {
    /// Unique among a run's callbacks: the key of its state in `trainer_state.json`.
    fn name(&self) -> &'static str;
    /// The metric the callback watches: checked before step 1 against the names the run logs.
    fn monitor(&self) -> Option<&str> {
        None
    }
    /// The metrics it adds to the run's records (in [`on_log`](Self::on_log)).
    fn metric_names(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Before the first step of a fit that starts after `step` completed steps and ends at `max_steps`.
    fn on_train_start(&mut self, _step: u64, _max_steps: u64) -> Result<()> {
        Ok(())
    }
    /// After every optimizer step, with its mean loss and the learning rate it used.
    fn on_train_batch_end(&mut self, _step: u64, _loss: f64, _lr: f64) -> Result<()> {
        Ok(())
    }
    /// A record about to be logged (training figures or a validation): the callback may add metrics to it.
    fn on_log(&mut self, _record: &mut Map<String, Value>) -> Result<()> {
        Ok(())
    }
    /// After a validation (Lightning's `on_validation_end`), with the latest value of every metric logged so far.
    fn on_validation_end(&mut self, _step: u64, _metrics: &Map<String, Value>) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// When the fit ends (finished, stopped early or interrupted).
    fn on_train_end(&mut self) -> Result<()> {
        Ok(())
    }
    /// What a resumed run needs to continue exactly (Lightning's `state_dict`).
    fn state_dict(&self) -> Value {
        Value::Null
    }
    fn load_state_dict(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
}
