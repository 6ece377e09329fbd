//! `result.json`, Ray's `Result`: how the run ended, its last metrics, its best and kept checkpoints, its restarts
//! and, if it failed, the error.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llmtrain_core::fsutil::write_atomic;
use llmtrain_core::train::checkpoint::{latest_valid_checkpoint, list_checkpoints};
use llmtrain_lightning::ModelCheckpoint;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::driver::Restart;
use crate::error::{RayError, Result};

pub use llmtrain_core::train::metrics::METRICS_FILE;

/// The result's file, in the run directory.
pub const RESULT_FILE: &str = "result.json";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Finished,
    Failed,
    /// Stopped by SIGINT/SIGTERM after checkpointing: a driver started again continues it.
    Interrupted,
}

/// A run's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub path: PathBuf,
    pub status: Status,
    /// The last training record rank 0 logged, with the latest value of every other metric (evaluations).
    pub metrics: Map<String, Value>,
    /// The best checkpoint by the monitored metric (`[model_checkpoint] monitor`), else the newest.
    pub best_checkpoint: Option<PathBuf>,
    /// The checkpoints kept, oldest first.
    pub checkpoints: Vec<PathBuf>,
    pub restarts: Vec<Restart>,
    pub error: Option<String>,
    /// This driver's wall time.
    pub elapsed_secs: f64,
    #[serde(skip)]
    pub signal: Option<i32>,
}

impl RunResult {
    pub fn finished(run_dir: &Path, restarts: Vec<Restart>, started: Instant) -> Result<Self> {
        Self::read(run_dir, Status::Finished, restarts, None, started)
    }

    pub fn failed(run_dir: &Path, restarts: Vec<Restart>, error: &str, started: Instant) -> Result<Self> {
        Self::read(run_dir, Status::Failed, restarts, Some(error.to_string()), started)
    }

    /// A run stopped by `signal`; nothing is read or written (the next driver continues it).
    pub fn interrupted(run_dir: &Path, restarts: Vec<Restart>, signal: i32) -> Self {
        RunResult {
            path: run_dir.to_path_buf(),
            status: Status::Interrupted,
            metrics: Map::new(),
            best_checkpoint: None,
            checkpoints: Vec::new(),
            restarts,
            error: None,
            elapsed_secs: 0.0,
            signal: Some(signal),
        }
    }

    fn read(
        run_dir: &Path,
        status: Status,
        restarts: Vec<Restart>,
        error: Option<String>,
        started: Instant,
    ) -> Result<Self> {
        let mut checkpoints = list_checkpoints(run_dir)?;
        checkpoints.sort();
        let checkpoints = checkpoints.into_iter().map(|(_, dir)| dir).collect();
        let best = match ModelCheckpoint::best_checkpoint(run_dir) {
            Ok(Some((dir, _))) => Some(dir),
            // No monitored metric ranks them: the newest is the best there is.
            _ => latest_valid_checkpoint(run_dir)?.map(|(dir, _)| dir),
        };
        Ok(RunResult {
            path: run_dir.to_path_buf(),
            status,
            metrics: last_metrics(&run_dir.join(METRICS_FILE)),
            best_checkpoint: best,
            checkpoints,
            restarts,
            error,
            elapsed_secs: started.elapsed().as_secs_f64(),
            signal: None,
        })
    }

    /// Writes `result.json` into the run directory (atomically).
    pub fn write(&self) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| RayError::Launch(e.to_string()))?;
        Ok(write_atomic(&self.path.join(RESULT_FILE), &text)?)
    }
}

/// The records of a metrics file that parse.
fn records(path: &Path) -> Vec<Map<String, Value>> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    std::io::BufReader::new(file)
        .lines()
        .map_while(std::io::Result::ok)
        .filter_map(|line| serde_json::from_str::<Map<String, Value>>(&line).ok())
        .collect()
}

/// Every metric's latest value, the last training record's over the rest.
fn last_metrics(path: &Path) -> Map<String, Value> {
    let mut latest = Map::new();
    for record in records(path) {
        latest.extend(record);
    }
    latest
}

/// The step of the last record of a metrics file.
pub fn last_step(path: &Path) -> Option<u64> {
    records(path).last().and_then(|record| record.get("step")?.as_u64())
}
