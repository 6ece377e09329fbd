//! `metrics.jsonl`: one JSON object per logged step or evaluation, appended and flushed as the run goes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{CoreError, Result};
use crate::fsutil::write_atomic;

pub const METRICS_FILE: &str = "metrics.jsonl";

/// The metrics file of a run.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Starts the file afresh, or, resuming after `resume_step`, keeps only the records up to that step (a killed
    /// run may have logged steps the resumed run will redo).
    pub fn open(output_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = output_dir.join(METRICS_FILE);
        let kept = match resume_step {
            Some(step) if path.exists() => records_up_to(&path, step)?,
            _ => String::new(),
        };
        write_atomic(&path, kept.as_bytes())?;
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| CoreError::io(&path, e))?;
        Ok(Self { path, file })
    }

    pub fn write(&mut self, record: &Value) -> Result<()> {
        let line = format!("{record}\n");
        self.file.write_all(line.as_bytes()).and_then(|()| self.file.flush()).map_err(|e| CoreError::io(&self.path, e))
    }

    /// All records written so far (for the loss curve).
    pub fn read_all(&self) -> Result<Vec<Value>> {
        let file = File::open(&self.path).map_err(|e| CoreError::io(&self.path, e))?;
        Ok(BufReader::new(file).lines().map_while(|l| l.ok()).filter_map(|l| serde_json::from_str(&l).ok()).collect())
    }
}

fn records_up_to(path: &Path, step: u64) -> Result<String> {
    let file = File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut kept = String::new();
    for line in BufReader::new(file).lines().map_while(|l| l.ok()) {
        let record: Option<Value> = serde_json::from_str(&line).ok();
        if record.and_then(|r| r["step"].as_u64()).is_some_and(|s| s <= step) {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    Ok(kept)
}
