//! The crate's errors: each is one line for the user.

use llmtrain_core::CoreError;
use llmtrain_lightning::LightningError;

#[derive(Debug, thiserror::Error)]
pub enum TrlError {
    #[error(transparent)]
    Core(#[from] CoreError),

    /// From the Trainer (checkpoints, resume, the loop).
    #[error(transparent)]
    Lightning(#[from] LightningError),

    /// Data or settings a trainer cannot use.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TrlError> = std::result::Result<T, E>;
