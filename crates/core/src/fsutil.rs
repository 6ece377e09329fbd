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

/// What a command writes into its output directory, and so may replace there without `--overwrite`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// An HF model checkpoint (`convert`, `merge`): config, weights (single or sharded), tokenizer files.
    Model,
    /// A tokenizer (`tokenizer train`): tokenizer.json and its companions only.
    Tokenizer,
}

impl OutputKind {
    /// Whether a file of this name is one the command writes.
    fn writes(self, name: &str) -> bool {
        const TOKENIZER: [&str; 4] =
            ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"];
        const MODEL: [&str; 4] =
            ["config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json"];
        // Shards: model-00001-of-00003.safetensors.
        let shard = name
            .strip_prefix("model-")
            .and_then(|rest| rest.strip_suffix(".safetensors"))
            .and_then(|rest| rest.split_once("-of-"))
            .is_some_and(|(a, b)| [a, b].iter().all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())));
        match self {
            OutputKind::Tokenizer => TOKENIZER.contains(&name),
            OutputKind::Model => TOKENIZER.contains(&name) || MODEL.contains(&name) || shard,
        }
    }
}

/// Checks that `dir` may be replaced as a whole by what a command writes (`kind`): it is missing, empty, or holds
/// only such files; anything else (a user's notes, another model's weights, an adapter, a whole project) needs
/// `overwrite`. `flag` names the option in messages (`--out`).
pub fn check_replaceable_dir(dir: &Path, flag: &str, kind: OutputKind, overwrite: bool) -> Result<()> {
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
        .filter(|name| !kind.writes(name))
        .collect();
    if foreign.is_empty() || overwrite {
        return Ok(());
    }
    foreign.sort();
    let what = match kind {
        OutputKind::Model => "a model checkpoint",
        OutputKind::Tokenizer => "a tokenizer",
    };
    Err(CoreError::Invalid(format!(
        "{flag} {}: holds files that are not part of {what} ({}); choose an empty or new directory, or pass \
         --overwrite to replace it whole",
        dir.display(),
        shorten(&foreign, 3)
    )))
}

/// Refuses an output directory that is one of the command's inputs (`--out` = `--model`): replacing it would
/// destroy the original, which the user did not ask for unless `overwrite`.
pub fn refuse_output_is_input(out: &Path, flag: &str, inputs: &[(&str, &Path)], overwrite: bool) -> Result<()> {
    let Ok(resolved) = fs::canonicalize(out) else {
        return Ok(()); // A new directory is no input.
    };
    for (input_flag, input) in inputs {
        if !overwrite && fs::canonicalize(input).is_ok_and(|i| i == resolved) {
            return Err(CoreError::Invalid(format!(
                "{flag} {} is the {input_flag} directory: write to another directory, or pass --overwrite to \
                 replace it in place",
                out.display()
            )));
        }
    }
    Ok(())
}

/// `a, b, c, and 4 more`.
pub fn shorten(names: &[String], shown: usize) -> String {
    if names.len() > shown {
        format!("{}, and {} more", names[..shown].join(", "), names.len() - shown)
    } else {
        names.join(", ")
    }
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
             directory",
            target.display()
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
    fn only_what_a_command_writes_is_replaceable_without_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let model = OutputKind::Model;
        check_replaceable_dir(&dir, "--out", model, false).unwrap();
        fs::create_dir(&dir).unwrap();
        for name in ["config.json", "model-00001-of-00002.safetensors", "tokenizer.json"] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        check_replaceable_dir(&dir, "--out", model, false).unwrap();
        // A tokenizer must not replace a model, nor a model an adapter.
        let err = check_replaceable_dir(&dir, "--out", OutputKind::Tokenizer, false).unwrap_err().to_string();
        assert!(err.contains("config.json, model-00001-of-00002.safetensors") && err.contains("a tokenizer"), "{err}");
        fs::write(dir.join("adapter_model.safetensors"), b"x").unwrap();
        assert!(check_replaceable_dir(&dir, "--out", model, false).is_err());
        fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let err = check_replaceable_dir(&dir, "--out", model, false).unwrap_err().to_string();
        assert!(err.contains("notes.txt") && err.contains("--overwrite"), "{err}");
        check_replaceable_dir(&dir, "--out", model, true).unwrap();
        assert!(model.writes("model-00002-of-00002.safetensors") && !model.writes("model-x-of-2.safetensors"));
    }
}
