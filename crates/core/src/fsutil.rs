//! Crash-safe file and directory writes: nothing a reader can see is ever half-written.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};
use crate::interrupt::TempGuard;

/// Writes `bytes` to `path` through a temporary sibling, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let guard = TempGuard::new(&tmp);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_ok() {
        guard.keep();
    }
    result.map_err(|e| CoreError::io(path, e))
}

/// Fills a fresh temporary directory beside `target` with `fill`, then swaps it into place.
///
/// An existing `target` is replaced only after the new contents are complete and synced; if `fill` fails, the
/// old directory is untouched and the temporary one removed (on an error, a panic, or a signal once
/// [`crate::interrupt::install`] listens). A `target` that is the current directory or holds it is refused: it
/// cannot be swapped out from under the process.
pub fn write_dir_atomic<F>(target: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    refuse_current_dir(target)?;
    let tmp = sibling(target, "tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| CoreError::io(parent, e))?;
    }
    let tmp_guard = TempGuard::new(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    fill(&tmp).and_then(|()| sync_dir_files(&tmp))?;
    // A signal now waits for the swap to finish: it must never find the old directory moved away and the new
    // one not yet in place.
    crate::interrupt::critical(|| {
        let old = sibling(target, "old");
        if target.exists() {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
            }
            fs::rename(target, &old).map_err(|e| CoreError::io(target, e))?;
        }
        if let Err(e) = fs::rename(&tmp, target) {
            // Put the old directory back rather than leave nothing at `target`.
            if old.exists() {
                let _ = fs::rename(&old, target);
            }
            return Err(CoreError::io(target, e));
        }
        tmp_guard.keep();
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
        }
        Ok(())
    })?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Persist the rename itself.
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Files an HF checkpoint or PEFT adapter directory holds, which replacing one as a whole may delete.
fn is_checkpoint_file(name: &str) -> bool {
    const NAMES: [&str; 10] = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "adapter_config.json",
        "adapter_model.safetensors",
    ];
    // Shards: model-00001-of-00003.safetensors.
    let shard = name
        .strip_prefix("model-")
        .and_then(|rest| rest.strip_suffix(".safetensors"))
        .and_then(|rest| rest.split_once("-of-"))
        .is_some_and(|(a, b)| [a, b].iter().all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())));
    NAMES.contains(&name) || shard
}

/// Checks that `dir` may be replaced as a whole by a checkpoint: it is missing, empty, or holds only the files
/// of a checkpoint; anything else (a user's notes, a tokenizer cache, a whole project) needs `overwrite`. `flag`
/// names the option in messages (`--out`).
pub fn check_replaceable_dir(dir: &Path, flag: &str, overwrite: bool) -> Result<()> {
    refuse_current_dir(dir)?;
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(CoreError::Invalid(format!("{flag} {}: exists and is not a directory", dir.display())));
    }
    let mut foreign: Vec<String> = fs::read_dir(dir)
        .map_err(|e| CoreError::io(dir, e))?
        .filter_map(|entry| entry.ok())
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() { format!("{name}/") } else { name }
        })
        .filter(|name| !is_checkpoint_file(name))
        .collect();
    if foreign.is_empty() || overwrite {
        return Ok(());
    }
    foreign.sort();
    let shown = if foreign.len() > 3 {
        format!("{}, and {} more", foreign[..3].join(", "), foreign.len() - 3)
    } else {
        foreign.join(", ")
    };
    Err(CoreError::Invalid(format!(
        "{flag} {}: holds files that are not part of a checkpoint ({shown}); choose an empty or new directory, \
         or pass --overwrite to replace it whole",
        dir.display()
    )))
}

/// Refuses `target` when it is the current directory or one of its parents (renaming it away would pull the
/// directory out from under the process and the user's shell).
fn refuse_current_dir(target: &Path) -> Result<()> {
    let Ok(cwd) = std::env::current_dir().and_then(fs::canonicalize) else {
        return Ok(());
    };
    let Ok(resolved) = fs::canonicalize(target) else {
        return Ok(()); // Does not exist yet: it cannot hold the current directory.
    };
    if cwd.starts_with(&resolved) {
        return Err(CoreError::Invalid(format!(
            "{}: is the current directory or contains it, which cannot be replaced while in use; write to another \
             directory (for example {})",
            target.display(),
            resolved.join("converted").display()
        )));
    }
    Ok(())
}

fn sync_dir_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| CoreError::io(dir, e))? {
        let path = entry.map_err(|e| CoreError::io(dir, e))?.path();
        if path.is_file() {
            fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| CoreError::io(&path, e))?;
        }
    }
    Ok(())
}

fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_the_old_directory_alone() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        write_dir_atomic(&target, |d| write_atomic(&d.join("a"), b"old")).unwrap();
        let err = write_dir_atomic(&target, |d| {
            write_atomic(&d.join("a"), b"new")?;
            Err(CoreError::Invalid("boom".into()))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(target.join("a")).unwrap(), b"old");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1, "temporary directory left behind");
    }

    #[test]
    fn a_panicking_fill_leaves_no_temporary_directory() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let result = std::panic::catch_unwind(|| {
            write_dir_atomic(&target, |d| {
                write_atomic(&d.join("a"), b"half")?;
                panic!("boom")
            })
        });
        assert!(result.is_err());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "temporary directory left behind");
    }

    #[test]
    fn only_checkpoint_directories_are_replaceable_without_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        check_replaceable_dir(&dir, "--out", false).unwrap();
        fs::create_dir(&dir).unwrap();
        for name in ["config.json", "model-00001-of-00002.safetensors", "tokenizer.json"] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        check_replaceable_dir(&dir, "--out", false).unwrap();
        fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let err = check_replaceable_dir(&dir, "--out", false).unwrap_err().to_string();
        assert!(err.contains("notes.txt") && err.contains("--overwrite"), "{err}");
        check_replaceable_dir(&dir, "--out", true).unwrap();
        assert!(
            is_checkpoint_file("model-00002-of-00002.safetensors") && !is_checkpoint_file("model-x-of-2.safetensors")
        );
    }
}
