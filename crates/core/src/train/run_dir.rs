//! The output directory of a run: what an earlier run left there, and clearing it for `--overwrite`.

use std::path::Path;

use super::checkpoint::list_checkpoints;
use super::metrics::METRICS_FILE;
use crate::error::{CoreError, Result};

/// What an earlier run left in `out` (checkpoints, `final/`, metrics, loss curve), by name: a run started over it
/// without `--resume` must not delete them unasked.
pub fn earlier_run_contents(out: &Path) -> Result<Vec<String>> {
    let mut found: Vec<String> =
        list_checkpoints(out)?.into_iter().rev().map(|(step, _)| format!("checkpoint-{step}/")).collect();
    if out.join("final").exists() {
        found.push("final/".into());
    }
    for file in [METRICS_FILE, super::plot::LOSS_CURVE_FILE] {
        // A run that failed before its first record leaves an empty metrics file: nothing to lose.
        if out.join(file).metadata().is_ok_and(|m| m.len() > 0) {
            found.push(file.into());
        }
    }
    Ok(found)
}

/// Deletes what [`earlier_run_contents`] finds (for `--overwrite`); other files in `out` are left alone.
pub fn clear_previous_run(out: &Path) -> Result<()> {
    for (_, dir) in list_checkpoints(out)? {
        std::fs::remove_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
    }
    for stale in [out.join("final"), out.join(METRICS_FILE), out.join(super::plot::LOSS_CURVE_FILE)] {
        if stale.is_dir() {
            std::fs::remove_dir_all(&stale).map_err(|e| CoreError::io(&stale, e))?;
        } else if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| CoreError::io(&stale, e))?;
        }
    }
    Ok(())
}
