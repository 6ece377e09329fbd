//! The engine's errors: each is one line for the user.

use llmtrain_accel::AccelError;
use llmtrain_core::CoreError;

#[derive(Debug, thiserror::Error)]
pub enum LightningError {
    #[error(transparent)]
    Core(#[from] CoreError),

    #[error(transparent)]
    Accel(#[from] AccelError),

    /// A run that cannot go on as configured (a module's or the trainer's own check).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = LightningError> = std::result::Result<T, E>;
