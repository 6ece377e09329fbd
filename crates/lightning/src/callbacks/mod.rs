//! Callbacks (Lightning's `Callback`): code the Trainer calls at points of a fit, with state that is part of every
//! checkpoint. Built in: [`EarlyStopping`] and [`ModelCheckpoint`] (which the Trainer also asks how to name and
//! prune its checkpoints).

mod early_stopping;
mod model_checkpoint;

use serde_json::{Map, Value};

pub use early_stopping::{EarlyStopping, EarlyStoppingSection, Mode};
pub use model_checkpoint::{ModelCheckpoint, ModelCheckpointSection};

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
    /// After a validation (Lightning's `on_validation_end`), with the latest value of every metric logged so far.
    fn on_validation_end(&mut self, _step: u64, _metrics: &Map<String, Value>) -> Result<Control> {
        Ok(Control::Continue)
    }
    /// What a resumed run needs to continue exactly (Lightning's `state_dict`).
    fn state_dict(&self) -> Value {
        Value::Null
    }
    fn load_state_dict(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
}
