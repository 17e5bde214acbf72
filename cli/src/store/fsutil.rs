//! Durable file-system steps: atomic replacement of a whole file and directory fsyncs.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::store::error::StoreError;

/// Suffix of a file being written; a crash can leave one, and recovery deletes them all.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The temp file a write of `path` goes through (LiteFS names its temp files the same way).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

/// Makes `contents` the whole of `path`, so that after a crash the path holds either its old
/// contents or all of the new ones: write a temp file in the same directory, fsync it, rename
/// it over `path`, fsync the directory (the rename is durable only once the directory is). On
/// any failure the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let temp = temp_path(path);
    let result =
        write_temp(&temp, contents).and_then(|()| fs::rename(&temp, path).map_err(StoreError::io("rename", &temp)));
    if result.is_err() {
        // Best effort: recovery deletes leftover temp files anyway.
        let _ = fs::remove_file(&temp);
        return result;
    }
    sync_dir(parent(path))
}

fn write_temp(temp: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(StoreError::io("create", temp))?;
    file.write_all(contents).map_err(StoreError::io("write", temp))?;
    file.sync_all().map_err(StoreError::io("fsync", temp))
}

/// Fsyncs a directory, making the creations, renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync", dir))
}

/// Creates `dir` (and missing parents), fsyncing each parent whose entries changed, so that a
/// file later made durable inside it cannot vanish with its directory in a crash.
pub fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let up = parent(dir);
    ensure_dir(up)?;
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(up),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(StoreError::io("mkdir", dir)(e)),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        write_atomic(&path, b"one").expect("first write");
        write_atomic(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn ensure_dir_creates_nested_directories() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nested = dir.path().join("a/b/c");
        ensure_dir(&nested).expect("create");
        ensure_dir(&nested).expect("already there");
        assert!(nested.is_dir());
    }
}
