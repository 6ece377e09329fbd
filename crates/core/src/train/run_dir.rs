//! The output directory of a run: what an earlier run left there, and clearing it for `--overwrite`.

use std::path::{Path, PathBuf};

use super::checkpoint::{SHARD_STAGING_PREFIX, list_checkpoints};
use crate::error::{CoreError, Result};

/// What an earlier run left in `out`, by name: its checkpoints and whichever of `outputs` (the names of
/// everything else a run writes there: `final/`, metrics files, the loss curve...) exist, so a run started over
/// it without `--resume` does not delete them unasked. An empty file (a run that failed before its first record)
/// holds nothing to lose.
pub fn earlier_run_contents(out: &Path, outputs: &[&str]) -> Result<Vec<String>> {
    let mut found: Vec<String> = list_checkpoints(out)?
        .into_iter()
        .rev()
        .map(|(_, dir)| format!("{}/", dir.file_name().unwrap_or_default().to_string_lossy()))
        .collect();
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
    // Optimizer parts a save that did not finish left behind.
    if out.is_dir() {
        for entry in std::fs::read_dir(out).map_err(|e| CoreError::io(out, e))? {
            let path = entry.map_err(|e| CoreError::io(out, e))?.path();
            let staged = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(SHARD_STAGING_PREFIX));
            if staged && path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(|e| CoreError::io(&path, e))?;
            }
        }
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

/// A run resumed from an earlier checkpoint than its newest abandons what came after it: the later checkpoints
/// (any but `resumed`, at `step` or after) and `final/` move into `out/superseded-<unix seconds>/`, with a copy of
/// `copied` (the metrics files the resumed run cuts back to `step`). Returns that directory and what moved there,
/// or `None` when nothing came after `step` (`final/` alone stays: the run goes on to replace it, as a resumed
/// finished run does).
pub fn set_aside_after(
    out: &Path,
    step: u64,
    resumed: &Path,
    copied: &[&str],
) -> Result<Option<(PathBuf, Vec<String>)>> {
    let resumed = std::fs::canonicalize(resumed).map_err(|e| CoreError::io(resumed, e))?;
    let later: Vec<PathBuf> = list_checkpoints(out)?
        .into_iter()
        .filter(|(s, dir)| *s >= step && std::fs::canonicalize(dir).ok().as_ref() != Some(&resumed))
        .map(|(_, dir)| dir)
        .collect();
    if later.is_empty() {
        return Ok(None);
    }
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut aside = out.join(format!("superseded-{secs}"));
    for n in 1.. {
        if !aside.exists() {
            break;
        }
        aside = out.join(format!("superseded-{secs}-{n}"));
    }
    std::fs::create_dir_all(&aside).map_err(|e| CoreError::io(&aside, e))?;
    let mut moved = Vec::new();
    let final_dir = out.join("final");
    for from in later.iter().chain(final_dir.is_dir().then_some(&final_dir)) {
        let name = from.file_name().unwrap_or_default();
        std::fs::rename(from, aside.join(name)).map_err(|e| CoreError::io(from, e))?;
        moved.push(format!("{}/", name.to_string_lossy()));
    }
    for name in copied {
        let from = out.join(name);
        if from.is_file() {
            std::fs::copy(&from, aside.join(name)).map_err(|e| CoreError::io(&from, e))?;
            moved.push(format!("a copy of {name}"));
        }
    }
    Ok(Some((aside, moved)))
}
