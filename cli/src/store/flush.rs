//! LTX files written without an fsync, and making them durable in groups.
//!
//! A deferred commit (or a file a replica in asynchronous mode applied) is written straight
//! at its final name and left in the page cache; the Node later asks for every such file of a
//! database up to a TXID to be made durable (`Output::FlushLtx`). A torn file at its final
//! name is harmless: recovery verifies every LTX file in full and the Node deletes those that
//! fail (`DbRecovery::invalid_ltx`). See `docs/decisions/0008-commit-durability.md`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use replite_core::TxId;
use replite_core::stream::DbName;
use tracing::warn;

use crate::store::error::StoreError;

/// Up to this many files, a flush fdatasyncs each (after starting write-back of all, so the
/// journal commit of the first covers the others' allocations); past it one `syncfs` of the
/// data directory's file system costs less than one fsync per file.
pub const SYNCFS_ABOVE_FILES: usize = 8;

/// One file waiting for a flush.
#[derive(Debug)]
pub struct Unflushed {
    /// Its range's end.
    pub max: TxId,
    /// Where it is (for errors).
    pub path: PathBuf,
    /// The open file, so the flush needs no lookup and a removed file costs nothing.
    pub file: File,
    /// A flush of this file failed before: its next one rewrites it ([`flush`]).
    pub failed: bool,
    /// Its contents, kept for a small file so a flush can append them to the commit log
    /// (`commit_log`) instead of fsyncing the file, and kept through a failed flush so that
    /// the file can be written again from them if the failure lost what the disk held.
    pub bytes: Option<Vec<u8>>,
}

/// A flush or log append that failed: why, and the files, still waiting.
#[derive(Debug)]
pub struct FlushFailed {
    /// Why.
    pub error: StoreError,
    /// The files it was for.
    pub files: Vec<Unflushed>,
}

impl FlushFailed {
    /// Boxed (the error is large): `Err(FlushFailed::new(error, files))`.
    #[must_use]
    pub fn new(error: StoreError, files: Vec<Unflushed>) -> Box<FlushFailed> {
        Box::new(FlushFailed { error, files })
    }
}

/// Most bytes of a database's files kept in memory through failed flushes (see
/// [`UnflushedFiles::put_back`]).
pub const KEPT_AFTER_FAILURE: usize = 64 << 20;

/// Files waiting for a flush, per database, oldest first.
#[derive(Debug, Default)]
pub struct UnflushedFiles {
    by_db: BTreeMap<DbName, Vec<Unflushed>>,
}

impl UnflushedFiles {
    /// Records a file written without an fsync.
    pub fn push(&mut self, db: &DbName, file: Unflushed) {
        self.by_db.entry(db.clone()).or_default().push(file);
    }

    /// Takes the files of `db` up to `through`, to flush outside the store's lock.
    pub fn take(&mut self, db: &DbName, through: TxId) -> Vec<Unflushed> {
        let Some(files) = self.by_db.get_mut(db) else { return Vec::new() };
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(files).into_iter().partition(|f| f.max <= through);
        *files = kept;
        taken
    }

    /// Puts back files whose flush failed, so the next flush tries them again (by rewriting
    /// them: see [`flush`]).
    pub fn put_back(&mut self, db: &DbName, mut files: Vec<Unflushed>) {
        for f in &mut files {
            f.failed = true;
        }
        let entry = self.by_db.entry(db.clone()).or_default();
        files.append(entry);
        files.sort_by_key(|f| f.max);
        // While flushes keep failing, commits go on: the bytes kept to write files again are
        // bounded, oldest first (past the bound a file is only read back, as a large one is).
        let mut kept = 0usize;
        for f in files.iter_mut().filter(|f| f.failed) {
            if let Some(bytes) = &f.bytes {
                kept += bytes.len();
                if kept > KEPT_AFTER_FAILURE {
                    f.bytes = None;
                }
            }
        }
        *entry = files;
    }

    /// Forgets a removed file.
    pub fn forget(&mut self, db: &DbName, max: TxId) {
        if let Some(files) = self.by_db.get_mut(db) {
            files.retain(|f| f.max != max);
        }
    }

    /// Forgets every file of `db` (a snapshot replaced them).
    pub fn forget_all(&mut self, db: &DbName) {
        self.by_db.remove(db);
    }

    /// Takes every waiting file of every database (clean shutdown).
    pub fn take_all(&mut self) -> Vec<Unflushed> {
        std::mem::take(&mut self.by_db).into_values().flatten().collect()
    }
}

/// Writes `contents` as the new file `path`. With `durable`, fdatasyncs it before returning:
/// one fsync, whose journal commit also carries the new directory entry on the journaling
/// file systems replite runs on (ext4, xfs, btrfs commit a new file's name with its first
/// fsync). Without, returns the open file for a later flush. Fails with `AlreadyExists` if
/// the path is taken (the caller then replaces it atomically instead). On a write error the
/// partial file is removed.
pub fn write_new(path: &Path, contents: &[u8], durable: bool) -> Result<Option<File>, StoreError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).open(path).map_err(StoreError::io("create", path))?;
    let written = file
        .write_all(contents)
        .map_err(StoreError::io("write", path))
        .and_then(|()| if durable { file.sync_data().map_err(StoreError::io("fdatasync", path)) } else { Ok(()) });
    if let Err(e) = written {
        // Best effort: a torn file left behind fails verification at recovery anyway.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(if durable { None } else { Some(file) })
}

/// A file kept ready under a `*.tmp` name in an LTX directory, written into and renamed into
/// place by a commit instead of creating a file.
#[derive(Debug)]
pub struct Spare {
    /// Where it is.
    pub path: PathBuf,
    /// Open for writing (a recycled spare only once taken: thousands may wait).
    pub file: File,
    /// Its current length: a retired LTX file recycled as a spare still holds its old bytes.
    pub len: u64,
}

/// Spare files kept ready in each LTX directory, so that a commit's write renames one into
/// place (~30 µs here) instead of creating a file (30–700 µs on this ext4 under load). Most
/// come from retention: a retired LTX file is renamed to a spare rather than deleted, because
/// creating and deleting a file per commit makes ext4 without a journal scan its inode table
/// for recently deleted inodes (`recently_deleted`: a quarter of the daemon's CPU time at a few
/// thousand commits a second). Named `*.tmp`, so recovery deletes leftovers.
#[derive(Debug, Default)]
pub struct Spares {
    by_dir: BTreeMap<PathBuf, DirSpares>,
    next: u64,
}

#[derive(Debug, Default)]
struct DirSpares {
    /// Created ahead, open.
    created: Vec<Spare>,
    /// Retired LTX files renamed to spares (opened when taken).
    recycled: Vec<(PathBuf, u64)>,
    /// Bytes the recycled ones hold (old contents, disk space not yet reused).
    recycled_bytes: u64,
    /// Names handed out by [`Spares::wanted`] whose files are still being made: counted as
    /// had, so two refills at once do not both fill the directory.
    pending: usize,
}

/// Spares created ahead per LTX directory (open files): a flush (every `flush_ms` under load)
/// refills them, and a busy WAL database commits a few thousand times a second.
pub const SPARES_PER_DIR: usize = 64;

/// Retention by age still retires files in bursts (once a heartbeat; by size it retires one
/// per commit), so recycled spares may have to cover a heartbeat's commits: up to this many
/// bytes of them per directory, files up to [`RECYCLE_MAX_FILE`] each (a large transaction's
/// file is deleted, not kept).
pub const RECYCLED_BYTES_PER_DIR: u64 = 16 << 20;

/// Largest retired file kept as a spare.
pub const RECYCLE_MAX_FILE: u64 = 64 << 10;

impl Spares {
    /// Takes a spare of `dir`, if one is ready, opened for writing.
    pub fn take(&mut self, dir: &Path) -> Option<Spare> {
        let spares = self.by_dir.get_mut(dir)?;
        if let Some(spare) = spares.created.pop() {
            return Some(spare);
        }
        while let Some((path, len)) = spares.recycled.pop() {
            spares.recycled_bytes = spares.recycled_bytes.saturating_sub(len);
            // Gone or unopenable: try the next one (recovery removes what is left).
            if let Ok(file) = OpenOptions::new().write(true).open(&path) {
                return Some(Spare { path, file, len });
            }
        }
        None
    }

    fn next_name(&mut self, dir: &Path) -> PathBuf {
        self.next += 1;
        dir.join(format!(".spare-{}{}", self.next, crate::store::TEMP_SUFFIX))
    }

    /// How many spares `dir` lacks, and names for them.
    pub fn wanted(&mut self, dir: &Path) -> Vec<PathBuf> {
        let have = self.count(dir);
        let names: Vec<PathBuf> = (have..SPARES_PER_DIR).map(|_| self.next_name(dir)).collect();
        self.by_dir.entry(dir.to_path_buf()).or_default().pending += names.len();
        names
    }

    /// Spares `dir` has or is being given.
    pub fn count(&self, dir: &Path) -> usize {
        self.by_dir.get(dir).map_or(0, |s| s.created.len() + s.recycled.len() + s.pending)
    }

    /// Adds spares made outside the store's lock for `asked` names from [`Spares::wanted`].
    pub fn add(&mut self, dir: &Path, files: Vec<Spare>, asked: usize) {
        let spares = self.by_dir.entry(dir.to_path_buf()).or_default();
        spares.pending = spares.pending.saturating_sub(asked);
        spares.created.extend(files);
    }

    /// Turns the retired file `path` (`len` bytes) of `dir` into a spare if there is room.
    /// `Ok(false)`: not kept, the caller deletes the file. A rename lost in a crash leaves the
    /// file at its old name, which the Node retires again.
    pub fn recycle(&mut self, dir: &Path, path: &Path, len: u64) -> io::Result<bool> {
        let have = self.by_dir.get(dir).map_or(0, |s| s.recycled_bytes);
        if len > RECYCLE_MAX_FILE || have + len > RECYCLED_BYTES_PER_DIR {
            return Ok(false);
        }
        let spare_path = self.next_name(dir);
        std::fs::rename(path, &spare_path)?;
        let spares = self.by_dir.entry(dir.to_path_buf()).or_default();
        spares.recycled_bytes += len;
        spares.recycled.push((spare_path, len));
        Ok(true)
    }
}

/// Creates spare files at `paths` (stopping at the first failure: spares are an optimisation).
pub fn make_spares(paths: Vec<PathBuf>) -> Vec<Spare> {
    let mut made = Vec::new();
    for path in paths {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => made.push(Spare { path, file, len: 0 }),
            Err(_) => break,
        }
    }
    made
}

/// Writes `contents` into a spare file (over whatever a recycled one held, cut to length) and
/// renames it to `path`, replacing whatever was there (the rename is atomic: a reader or a
/// crash sees the old file or the whole new one; a crash before a flush may leave old or
/// mixed bytes under the new name, which recovery's verification rejects: the header names
/// another range, or the checksums fail). With `durable`, fsyncs it (a full fsync: ext4 and
/// xfs then commit the journal transaction holding the rename, as they do a new file's name).
/// Returns the open file when not durable.
pub fn write_into_spare(spare: Spare, path: &Path, contents: &[u8], durable: bool) -> Result<Option<File>, StoreError> {
    let Spare { path: spare_path, file, len } = spare;
    let written = file
        .write_all_at(contents, 0)
        .map_err(StoreError::io("write", &spare_path))
        .and_then(|()| {
            // Only a longer recycled file needs cutting (same-size commits, the common case, don't).
            if len > contents.len() as u64 {
                file.set_len(contents.len() as u64).map_err(StoreError::io("truncate", &spare_path))
            } else {
                Ok(())
            }
        })
        .and_then(|()| std::fs::rename(&spare_path, path).map_err(StoreError::io("rename", &spare_path)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&spare_path);
        return Err(e);
    }
    if durable {
        file.sync_all().map_err(StoreError::io("fsync", path))?;
        return Ok(None);
    }
    Ok(Some(file))
}

/// Makes `files` durable: few files one fdatasync each, many one `syncfs`. A file whose flush
/// failed before is rewritten instead: after a failed fsync Linux may have dropped its dirty
/// pages or marked them clean, so fsyncing it again can succeed with the data never written
/// (PostgreSQL's "fsyncgate"). It is read back, verified whole and written to a new file that
/// replaces it durably; one that no longer verifies is written again from the bytes kept in
/// memory (a small file), else reported lost, never flushed.
pub fn flush(files: &[Unflushed]) -> Result<(), StoreError> {
    for f in files.iter().filter(|f| f.failed) {
        rewrite(f)?;
    }
    let files: Vec<&Unflushed> = files.iter().filter(|f| !f.failed).collect();
    if files.is_empty() {
        return Ok(());
    }
    if files.len() > SYNCFS_ABOVE_FILES {
        return sync_filesystem_of(&files[0].file, &files[0].path);
    }
    // Start write-back of every file first, so they go to the disk together and the first
    // fdatasync's journal commit finds the others' blocks already allocated.
    for f in &files {
        // SAFETY: a plain syscall on a file descriptor this `File` owns for the whole call.
        let rc = unsafe { libc::sync_file_range(f.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(StoreError::io("sync_file_range", &f.path)(io::Error::last_os_error()));
        }
    }
    for f in files {
        // A full fsync: a file renamed into place needs its name committed too.
        f.file.sync_all().map_err(StoreError::io("fsync", &f.path))?;
    }
    Ok(())
}

/// Writes a file whose flush failed again: from what reading it back gives if that is the
/// whole LTX file it should be, else from the bytes kept in memory.
///
/// What is on disk comes first: a file at this name that verifies whole with the expected
/// range is either this one or one a newer history wrote since (a snapshot replaced the
/// files), which the kept bytes must not overwrite.
fn rewrite(f: &Unflushed) -> Result<(), StoreError> {
    let read_back = match std::fs::read(&f.path) {
        Ok(bytes) => bytes,
        // Retention removed (or recycled) it meanwhile: nothing of it is needed any more.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return rewrite_from_memory(f, format!("reading it back: {e}")),
    };
    match replite_core::ltx::verify(read_back.as_slice()) {
        Ok(verified) if verified.header().max_txid == f.max => crate::store::write_atomic(&f.path, &read_back),
        Ok(verified) => rewrite_from_memory(f, format!("it now holds TXID {}", verified.header().max_txid)),
        Err(e) => rewrite_from_memory(f, e.to_string()),
    }
}

/// The disk no longer holds `f` as written (`damage` says how): writes it again from the
/// bytes kept in memory, or reports it lost when none were kept (a file too large for the
/// commit log).
fn rewrite_from_memory(f: &Unflushed, damage: String) -> Result<(), StoreError> {
    let Some(bytes) = &f.bytes else {
        return Err(StoreError::LostUnflushed { path: f.path.clone(), reason: damage });
    };
    warn!(path = %f.path.display(), damage, "an LTX file whose flush failed was damaged on disk; writing it again from memory");
    crate::store::write_atomic(&f.path, bytes)
}

/// `syncfs` on the file system holding `file`: everything written to it so far is durable.
pub fn sync_filesystem_of(file: &File, path: &Path) -> Result<(), StoreError> {
    // SAFETY: a plain syscall on a file descriptor this `File` owns for the whole call.
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc != 0 {
        return Err(StoreError::io("syncfs", path)(io::Error::last_os_error()));
    }
    Ok(())
}

/// `syncfs` on the file system holding directory `dir`.
pub fn sync_filesystem(dir: &Path) -> Result<(), StoreError> {
    let handle = File::open(dir).map_err(StoreError::io("open", dir))?;
    sync_filesystem_of(&handle, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unflushed_file(dir: &Path, max: u64) -> Unflushed {
        let path = dir.join(format!("{max}.ltx"));
        let file = write_new(&path, b"bytes", false).expect("write").expect("an open file");
        Unflushed { max: TxId(max), path, file, failed: false, bytes: None }
    }

    #[test]
    fn take_hands_out_files_up_to_the_txid_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = DbName::new("a.db").expect("name");
        let mut set = UnflushedFiles::default();
        for max in 1..=4 {
            set.push(&db, unflushed_file(dir.path(), max));
        }
        let taken = set.take(&db, TxId(2));
        assert_eq!(taken.iter().map(|f| f.max.0).collect::<Vec<_>>(), vec![1, 2]);
        flush(&taken).expect("flush");
        set.forget(&db, TxId(3));
        set.put_back(&db, taken);
        assert_eq!(set.take(&db, TxId(9)).iter().map(|f| f.max.0).collect::<Vec<_>>(), vec![1, 2, 4]);
    }

    #[test]
    fn bytes_kept_through_failed_flushes_are_bounded_oldest_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = DbName::new("a.db").expect("name");
        let third = KEPT_AFTER_FAILURE / 3 + 1;
        let mut unflushed = UnflushedFiles::default();
        let files: Vec<Unflushed> =
            (1..=3).map(|m| Unflushed { bytes: Some(vec![0u8; third]), ..unflushed_file(dir.path(), m) }).collect();
        unflushed.put_back(&db, files);
        let kept: Vec<bool> = unflushed.take(&db, TxId(3)).iter().map(|f| f.bytes.is_some()).collect();
        assert_eq!(kept, [true, true, false]);
    }

    #[test]
    fn spares_being_made_count_as_had_so_two_refills_do_not_both_fill_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spares = Spares::default();
        let first = spares.wanted(dir.path());
        assert_eq!(first.len(), SPARES_PER_DIR);
        assert!(spares.wanted(dir.path()).is_empty(), "a second refill asked for more while the first ran");
        let asked = first.len();
        let made = make_spares(first);
        spares.add(dir.path(), made, asked);
        assert_eq!(spares.count(dir.path()), SPARES_PER_DIR);
        for _ in 0..SPARES_PER_DIR / 2 + 1 {
            spares.take(dir.path()).expect("a spare");
        }
        assert_eq!(spares.wanted(dir.path()).len(), SPARES_PER_DIR / 2 + 1);
    }

    #[test]
    fn write_new_refuses_an_existing_path_and_flush_handles_many_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files: Vec<Unflushed> =
            (1..=SYNCFS_ABOVE_FILES as u64 + 2).map(|m| unflushed_file(dir.path(), m)).collect();
        flush(&files).expect("syncfs flush");
        let err = write_new(&files[0].path, b"again", true).expect_err("path taken");
        assert!(matches!(err, StoreError::Io { op: "create", .. }), "{err}");
        assert_eq!(std::fs::read(&files[0].path).expect("read"), b"bytes");
    }
}
