//! Crash-safe file and directory writes: nothing a reader can see is ever half-written.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// Writes `bytes` to `path` through a temporary sibling, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| CoreError::io(path, e))
}

/// Fills a fresh temporary directory beside `target` with `fill`, then swaps it into place.
///
/// An existing `target` is replaced only after the new contents are complete and synced; if `fill` fails, the
/// old directory is untouched and the temporary one removed.
pub fn write_dir_atomic<F>(target: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let tmp = sibling(target, "tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| CoreError::io(parent, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| CoreError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp).and_then(|()| sync_dir_files(&tmp)) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = sibling(target, "old");
    if target.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
        }
        fs::rename(target, &old).map_err(|e| CoreError::io(target, e))?;
    }
    fs::rename(&tmp, target).map_err(|e| CoreError::io(target, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Persist the rename itself.
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
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
}
