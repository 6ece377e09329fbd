//! What a path the user gave turned out to be, and what they probably meant: one line each, instead of the
//! operating system's "No such file or directory".

use std::path::Path;

use crate::error::{CoreError, Result};

/// `{what} {path} does not exist`, with the closest name beside it when one is near (a typo), or the first
/// directory on the way that is missing.
pub fn not_found(path: &Path, what: &str) -> CoreError {
    let mut message = format!("{what} {} does not exist", path.display());
    if let Some(near) = closest_sibling(path) {
        message.push_str(&format!("; did you mean {}?", near.display()));
    } else if let Some(missing) = first_missing_ancestor(path) {
        message.push_str(&format!(" (no directory {})", missing.display()));
    }
    CoreError::Invalid(message)
}

/// Checks that `dir` is an HF checkpoint directory (it has config.json); otherwise says what it is instead: a
/// missing path, a file, a PEFT adapter, or a training run's output directory (whose `final/` was meant).
pub fn expect_model_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Err(not_found(dir, "model directory"));
    }
    if !dir.is_dir() {
        return Err(CoreError::Invalid(format!(
            "{} is a file; a model is a checkpoint directory (config.json + model.safetensors)",
            dir.display()
        )));
    }
    if dir.join("config.json").is_file() {
        return Ok(());
    }
    if dir.join("adapter_config.json").is_file() {
        let base = std::fs::read_to_string(dir.join("adapter_config.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|config| config["base_model_name_or_path"].as_str().map(str::to_string))
            .filter(|base| !base.is_empty())
            .map(|base| format!(" (its base: {base})"))
            .unwrap_or_default();
        return Err(CoreError::Invalid(format!(
            "{} is a PEFT adapter, not a whole model: pass its base model as --model and this directory as \
             --adapter{base}",
            dir.display()
        )));
    }
    Err(CoreError::Invalid(match run_output_hint(dir) {
        Some(hint) => hint,
        None => format!("{} has no config.json: it is not an HF checkpoint directory", dir.display()),
    }))
}

/// For a training run's output directory (checkpoints, `final/`): a message pointing at its `final/`.
pub fn run_output_hint(dir: &Path) -> Option<String> {
    let is_run = dir.join("final").is_dir()
        || std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-") && e.path().is_dir());
    let final_dir = dir.join("final");
    is_run.then(|| {
        format!(
            "{} is a training run's output directory, not a model; did you mean {}?",
            dir.display(),
            final_dir.display()
        )
    })
}

/// The entry beside `path` whose name is closest to its own, if close enough to be a typo.
fn closest_sibling(path: &Path) -> Option<std::path::PathBuf> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (distance, best) = std::fs::read_dir(parent)
        .ok()?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|candidate| !candidate.starts_with('.'))
        .map(|candidate| (strsim::damerau_levenshtein(&name, &candidate), candidate))
        .min()?;
    is_near_miss(&name, &best, distance).then(|| path.with_file_name(best))
}

/// Whether `candidate`, `distance` edits from what the user typed, is close enough to be what they meant: two
/// edits, or a quarter of a longer name.
pub fn is_near_miss(typed: &str, candidate: &str, distance: usize) -> bool {
    distance <= 2.max(typed.chars().count().max(candidate.chars().count()) / 4)
}

/// The first directory on `path`'s way that does not exist (`a/b` for `a/b/c/d` when only `a` exists).
fn first_missing_ancestor(path: &Path) -> Option<&Path> {
    let mut missing = None;
    let mut current = path.parent();
    while let Some(dir) = current.filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            break;
        }
        missing = Some(dir);
        current = dir.parent();
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_closest_sibling_or_the_missing_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("shakespeare")).unwrap();
        let err = not_found(&root.path().join("shakespear"), "data file").to_string();
        assert!(err.starts_with("data file ") && err.ends_with("shakespeare?"), "{err}");
        let err = not_found(&root.path().join("zzz/a/b.txt"), "data file").to_string();
        assert!(err.contains("does not exist (no directory ") && err.ends_with("zzz)"), "{err}");
    }

    #[test]
    fn says_what_a_directory_is_instead_of_a_model() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        std::fs::create_dir_all(run.join("final")).unwrap();
        let err = expect_model_dir(&run).unwrap_err().to_string();
        assert!(err.contains("training run's output directory") && err.contains("run/final?"), "{err}");
        std::fs::write(run.join("final/adapter_config.json"), r#"{"base_model_name_or_path": "base"}"#).unwrap();
        let err = expect_model_dir(&run.join("final")).unwrap_err().to_string();
        assert!(err.contains("PEFT adapter") && err.contains("--adapter (its base: base)"), "{err}");
        let err = expect_model_dir(&run.join("fnal")).unwrap_err().to_string();
        assert!(err.contains("does not exist; did you mean"), "{err}");
    }
}
