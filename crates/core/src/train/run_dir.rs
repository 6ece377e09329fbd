//! The output directory of a run: what an earlier run left there, and clearing it for `--overwrite`.

use std::path::Path;

use super::checkpoint::list_checkpoints;
use crate::error::{CoreError, Result};

/// What an earlier run left in `out`, by name: its checkpoints and whichever of `outputs` (the names of
/// everything else a run writes there: `final/`, metrics files, the loss curve...) exist, so a run started over
/// it without `--resume` does not delete them unasked. An empty file (a run that failed before its first record)
/// holds nothing to lose.
pub fn earlier_run_contents(out: &Path, outputs: &[&str]) -> Result<Vec<String>> {
    let mut found: Vec<String> =
        list_checkpoints(out)?.into_iter().rev().map(|(step, _)| format!("checkpoint-{step}/")).collect();
    for name in outputs {
        match out.join(name).metadata() {
            Ok(meta) if meta.is_dir() => found.push(format!("{name}/")),
            Ok(meta) if meta.len() > 0 => found.push(name.to_string()),
            _ => {}
        }
    }
    Ok(found)
}

/// Deletes an earlier run's checkpoints and `outputs` (for `--overwrite`, and before a fresh run starts); other
/// files in `out` are left alone.
pub fn clear_previous_run(out: &Path, outputs: &[&str]) -> Result<()> {
    for (_, dir) in list_checkpoints(out)? {
        std::fs::remove_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
    }
    for name in outputs {
        let stale = out.join(name);
        if stale.is_dir() {
            std::fs::remove_dir_all(&stale).map_err(|e| CoreError::io(&stale, e))?;
        } else if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| CoreError::io(&stale, e))?;
        }
    }
    Ok(())
}
