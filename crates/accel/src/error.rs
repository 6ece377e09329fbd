//! Errors of the accelerator, the data-parallel loop and the launcher.

use std::path::PathBuf;

use llmtrain_core::dist::DistError;
use llmtrain_core::error::CoreError;

#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error("{0}")]
    Config(String),
    #[error("{dir}: written by a run of {saved} rank(s); this run has {current} (resume with --num-processes {saved})")]
    WorldSizeMismatch { dir: PathBuf, saved: usize, current: usize },
    #[error(
        "{dir}: written by a run of {saved} rank(s) reading {saved_rows} rows per micro-batch in all; this run has \
         {current} reading {current_rows} (resume with --num-processes {saved}, or make batch_size × ranks {saved_rows})"
    )]
    GlobalBatchMismatch { dir: PathBuf, saved: usize, saved_rows: u64, current: usize, current_rows: u64 },
    #[error("reading a tensor back: {0}")]
    Tensor(String),
    #[error("{0}")]
    Launch(String),
    #[error("{0}")]
    Finetune(String),
}

impl AccelError {
    pub(crate) fn tensor(err: impl std::fmt::Debug) -> Self {
        AccelError::Tensor(format!("{err:?}"))
    }
}

pub type Result<T, E = AccelError> = std::result::Result<T, E>;
