//! The driver's errors; each displays as one line naming the file, key, worker or signal.

use std::path::PathBuf;

use crate::config::NumWorkers;
use crate::group::WorkerFailure;

#[derive(Debug, thiserror::Error)]
pub enum RayError {
    #[error("{}", at_line(path, *line, message))]
    Hostfile { path: PathBuf, line: usize, message: String },

    #[error(
        "[scaling] launcher = \"srun\" but the driver is not inside a Slurm allocation (no SLURM_JOB_ID): start it \
         with sbatch or salloc, or use launcher \"mpirun\""
    )]
    NoAllocation,

    #[error("[scaling] num_workers = {asked} needs {needed} worker(s), but {place} places {slots}")]
    TooFewSlots { asked: NumWorkers, needed: usize, slots: usize, place: String },

    #[error(
        "[scaling] num_workers = {asked} with [training] gradient_accumulation_steps = {accumulation}: no group of \
         {min} to {placeable} workers reads the global batch of {max} (the worker count must divide {max} x \
         {accumulation})",
        min = asked.min(), max = asked.max()
    )]
    NoEvenSplit { asked: NumWorkers, accumulation: usize, placeable: usize },

    #[error(
        "{dir} holds an earlier run ({contents}): pass --resume to continue it, or --overwrite to delete it and start \
         over"
    )]
    EarlierRun { dir: PathBuf, contents: String },

    #[error(
        "{path} is locked: another driver, or the workers of a driver that was stopped, still run this run; wait for \
         them to end"
    )]
    Locked { path: PathBuf },

    #[error("{path} is not writable: {source}")]
    Storage { path: PathBuf, source: std::io::Error },

    #[error("{failure}; [failure] max_failures = {max_failures} {}", allowed(*max_failures, *restarts))]
    WorkerFailed { failure: WorkerFailure, max_failures: i64, restarts: usize },

    #[error("{0}")]
    Launch(String),

    #[error(transparent)]
    Core(#[from] llmtrain_core::error::CoreError),

    #[error(transparent)]
    Lightning(#[from] llmtrain_lightning::LightningError),
}

pub type Result<T, E = RayError> = std::result::Result<T, E>;

fn at_line(path: &std::path::Path, line: usize, message: &str) -> String {
    match line {
        0 => format!("{}: {message}", path.display()),
        line => format!("{}:{line}: {message}", path.display()),
    }
}

fn allowed(max_failures: i64, restarts: usize) -> String {
    match (max_failures, restarts) {
        (0, _) => "allows no restart".to_string(),
        (_, n) => format!("allowed {n} restart(s), all used"),
    }
}
