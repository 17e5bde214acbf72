//! A database's commit log: where a small LTX file is made durable by overwriting blocks
//! that are already allocated, instead of by an fsync of the file itself.
//!
//! An LTX file is new at every commit, so its fsync commits a file-system journal
//! transaction (its blocks, its size, its name): ~0.5 ms here, where overwriting written
//! blocks and fdatasyncing them is ~0.2 ms and needs no journal commit. The log is one
//! preallocated, zero-filled file per database (`dbs/<name>/commit-log`). A commit that must be
//! durable writes its LTX file at its final name without an fsync (as a deferred one is) and
//! appends the same bytes here with one fdatasync; a flush of deferred files does the same for
//! all of them at once. When the log is full it is retired: the files it holds are made
//! durable by one `syncfs` and its generation is bumped, which makes every record in it stale.
//! At start, recovery restores from the log every file that a crash left missing or torn,
//! then bumps the generation. See `docs/decisions/0016-commit-log.md`.
//!
//! Layout: a 4 KiB header (magic, generation, the generation's complement), then records, each
//! a 32-byte header (magic, generation, length, a check word) and the LTX bytes, 8-byte
//! aligned, every append padded to 4 KiB. A record counts only if its generation is the
//! header's and its bytes verify as a whole LTX file; the scan stops at the first that does
//! not. Appends are serialised and each is fdatasynced before the next starts, so a valid
//! record never follows an invalid one of the same generation.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use replite_core::stream::DbName;
use replite_core::types::{format_ltx_filename, parse_ltx_filename};
use replite_core::{TxId, ltx};
use tracing::{info, warn};

use crate::store::error::StoreError;
use crate::store::flush::{self, FlushFailed, Unflushed};
use crate::store::fsutil::{self, TEMP_SUFFIX};
use crate::store::layout::{COMMIT_LOG_FILE, LTX_DIR};

/// Size of a log file: room for a few hundred small commits between retirements.
pub const LOG_SIZE: u64 = 2 << 20;

/// Largest LTX file the log takes; larger ones are fsynced as files (their own write
/// dominates, and a second copy would double it).
pub const RECORD_MAX: usize = 256 << 10;

const HEADER_SIZE: u64 = 4096;
const RECORD_HEADER_SIZE: usize = 32;
const BLOCK: u64 = 4096;
const LOG_MAGIC: &[u8; 8] = b"RPLTLOG1";
const RECORD_MAGIC: &[u8; 8] = b"RPLTREC1";

/// One database's commit log, open for appending.
#[derive(Debug)]
pub struct CommitLog {
    path: PathBuf,
    file: File,
    generation: u64,
    /// Where the next append goes.
    end: u64,
    /// Records of this generation: files whose durability rests on the log until the
    /// retirement's `syncfs` (their descriptors are not kept: hundreds per database would
    /// run into the open-file limit and grow the descriptor table mid-run).
    records: usize,
    /// A write to the log failed: what it holds past `end` is unknown (after a failed
    /// fdatasync Linux may mark unwritten pages clean), so it takes no more appends.
    broken: bool,
}

impl CommitLog {
    /// Opens `db_dir`'s log, creating it (zero-filled, through a temp file) if it is missing
    /// or not a log, and starts a new generation: nothing recorded before counts any more
    /// (recovery restored what it needed at start).
    pub fn open(db_dir: &Path) -> Result<CommitLog, StoreError> {
        let path = db_dir.join(COMMIT_LOG_FILE);
        let existing = OpenOptions::new().read(true).write(true).open(&path).ok().and_then(|file| {
            let len = file.metadata().ok()?.len();
            let generation = read_header(&file)?;
            (len == LOG_SIZE).then_some((file, generation))
        });
        let (file, generation) = match existing {
            Some(found) => found,
            None => (create(&path)?, 0),
        };
        let mut log = CommitLog { path, file, generation, end: HEADER_SIZE, records: 0, broken: false };
        log.start_generation(generation + 1)?;
        Ok(log)
    }

    /// Makes `files` durable by appending `bytes` (their contents, in the same order) as one
    /// write and one fdatasync, then closes them. A full log is retired first. On failure the
    /// files are handed back, not yet durable.
    pub fn append(&mut self, files: Vec<Unflushed>, bytes: &[&[u8]]) -> Result<(), Box<FlushFailed>> {
        let record_len = |b: &&[u8]| (RECORD_HEADER_SIZE + b.len()).next_multiple_of(8) as u64;
        let total = bytes.iter().map(record_len).sum::<u64>().next_multiple_of(BLOCK);
        if self.broken {
            let broken = io::Error::other("an earlier write to the commit log failed");
            return Err(FlushFailed::new(StoreError::io("append to", &self.path)(broken), files));
        }
        if total > LOG_SIZE - HEADER_SIZE {
            let too_big = io::Error::new(io::ErrorKind::FileTooLarge, "larger than the commit log");
            return Err(FlushFailed::new(StoreError::io("append to", &self.path)(too_big), files));
        }
        if self.end + total > LOG_SIZE
            && let Err(e) = self.retire()
        {
            return Err(FlushFailed::new(e, files));
        }
        let mut buf = Vec::with_capacity(total as usize);
        for b in bytes {
            buf.extend_from_slice(RECORD_MAGIC);
            buf.extend_from_slice(&self.generation.to_le_bytes());
            buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
            buf.extend_from_slice(&check_word(self.generation, b.len() as u64).to_le_bytes());
            buf.extend_from_slice(b);
            buf.resize(buf.len().next_multiple_of(8), 0);
        }
        buf.resize(total as usize, 0);
        let written = self
            .file
            .write_all_at(&buf, self.end)
            .and_then(|()| self.file.sync_data())
            .map_err(StoreError::io("append to", &self.path));
        if let Err(e) = written {
            self.broken = true;
            return Err(FlushFailed::new(e, files));
        }
        self.end += total;
        self.records += files.len();
        for file in files {
            writeback::start(file.file);
        }
        Ok(())
    }

    /// Makes the files the log holds durable by themselves (one `syncfs` of the file system
    /// holding the log and the LTX files), then starts a new generation.
    pub fn retire(&mut self) -> Result<(), StoreError> {
        if self.records > 0
            && let Err(e) = flush::sync_filesystem_of(&self.file, &self.path)
        {
            // Their records stay valid: recovery restores them if the files are lost.
            self.broken = true;
            return Err(e);
        }
        self.records = 0;
        self.start_generation(self.generation + 1)
    }

    /// Starts a new generation without making the logged files durable: their history is
    /// being replaced (a snapshot), and a crash must not bring any of them back.
    pub fn discard(&mut self) -> Result<(), StoreError> {
        self.records = 0;
        self.start_generation(self.generation + 1)
    }

    fn start_generation(&mut self, generation: u64) -> Result<(), StoreError> {
        let written = self.file.write_all_at(&header_bytes(generation), 0).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.broken = true;
            return Err(StoreError::io("write the header of", &self.path)(e));
        }
        self.generation = generation;
        self.end = HEADER_SIZE;
        Ok(())
    }
}

/// Starts writing logged files' data to disk, on a thread of its own, so that the
/// retirement's `syncfs` finds little left to write (the log holds their durability until
/// then). The commit that retires the log took 5.5–6.5 ms, 2.4–5 ms with this
/// (`docs/BENCHMARKS.md`, session 12); started on the committing thread instead, the writeback
/// cost every commit a few per cent.
mod writeback {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::OnceLock;
    use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

    /// Files waiting for the thread; past this the caller starts its own.
    const QUEUE: usize = 4096;

    /// Has `file`'s writeback started, then closes it.
    pub(super) fn start(file: File) {
        static SENDER: OnceLock<Option<SyncSender<File>>> = OnceLock::new();
        let sender = SENDER.get_or_init(|| {
            let (send, receive) = sync_channel::<File>(QUEUE);
            std::thread::Builder::new()
                .name("replite-writeback".into())
                .spawn(move || receive.into_iter().for_each(|file| start_now(&file)))
                .ok()
                .map(|_| send)
        });
        match sender.as_ref().map(|sender| sender.try_send(file)) {
            Some(Err(TrySendError::Full(file) | TrySendError::Disconnected(file))) => start_now(&file),
            Some(Ok(())) | None => {}
        }
    }

    fn start_now(file: &File) {
        // SAFETY: a plain system call on a descriptor `file` keeps open. Only a hint: its
        // result is ignored (the retirement's `syncfs` reports what matters).
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

/// Recovery: writes back, durably, every LTX file the log of `db_dir` holds whose file is
/// missing, torn or holds another range, then starts a new generation so that nothing in the
/// log counts any more. Returns how many files it wrote. A file that is whole is left alone,
/// even if its bytes differ (a later write replaced it). A missing log, or one that is not a
/// log, holds nothing.
pub fn restore(db_dir: &Path, name: &DbName) -> Result<usize, StoreError> {
    let path = db_dir.join(COMMIT_LOG_FILE);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io("open", &path)(e)),
    };
    let Some(generation) = read_header(&file) else {
        warn!(db = %name, path = %path.display(), "commit log has no valid header: nothing to restore");
        return Ok(0);
    };
    let bytes = fs::read(&path).map_err(StoreError::io("read", &path))?;
    let ltx_dir = db_dir.join(LTX_DIR);
    let oldest_kept = oldest_whole_file(&ltx_dir)?;
    let mut restored = 0;
    for (min, max, ltx_bytes) in records(&bytes, generation) {
        let target = ltx_dir.join(format_ltx_filename(min, max));
        // A file there but not whole is a crash's doing (retention renames or deletes, it
        // never tears). A missing one older than every whole file is one retention retired
        // (it removes the oldest first; a crash loses the newest): not brought back.
        let missing = !target.exists();
        if missing && oldest_kept.is_some_and(|oldest| max < oldest) {
            continue;
        }
        if missing || !whole_ltx_file(&target, min, max) {
            fsutil::ensure_dir(&ltx_dir)?;
            fsutil::write_atomic(&target, ltx_bytes)?;
            restored += 1;
        }
    }
    if restored > 0 {
        info!(db = %name, restored, "restored LTX files a crash lost from the commit log");
    }
    file.write_all_at(&header_bytes(generation + 1), 0)
        .and_then(|()| file.sync_data())
        .map_err(StoreError::io("write the header of", &path))?;
    Ok(restored)
}

/// The valid records of `generation` in a log's bytes, in order: (min, max, LTX bytes).
fn records(log: &[u8], generation: u64) -> Vec<(TxId, TxId, &[u8])> {
    let mut found = Vec::new();
    let mut at = HEADER_SIZE as usize;
    while let Some(head) = log.get(at..at + RECORD_HEADER_SIZE) {
        let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let (gen_, len) = (word(8), word(16));
        if &head[..8] != RECORD_MAGIC || gen_ != generation || word(24) != check_word(generation, len) {
            break;
        }
        let start = at + RECORD_HEADER_SIZE;
        let Some(body) = usize::try_from(len).ok().and_then(|len| log.get(start..start.checked_add(len)?)) else {
            break;
        };
        let Ok(verified) = ltx::verify(body) else { break };
        found.push((verified.header().min_txid, verified.header().max_txid, body));
        at = (start + body.len()).next_multiple_of(8);
        // An append ends at a block boundary; the next record starts there or right here.
        if log.get(at..at + 8) != Some(RECORD_MAGIC.as_slice()) {
            at = at.next_multiple_of(BLOCK as usize);
        }
    }
    found
}

/// The end of the oldest range in `ltx_dir` whose file is whole, if any.
fn oldest_whole_file(ltx_dir: &Path) -> Result<Option<TxId>, StoreError> {
    let entries = match fs::read_dir(ltx_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read_dir", ltx_dir)(e)),
    };
    let mut ranges = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read_dir", ltx_dir))?;
        if let Some(Ok(range)) = entry.file_name().to_str().map(parse_ltx_filename) {
            ranges.push(range);
        }
    }
    ranges.sort_by_key(|&(min, max)| (max, min));
    Ok(ranges
        .into_iter()
        .find(|&(min, max)| whole_ltx_file(&ltx_dir.join(format_ltx_filename(min, max)), min, max))
        .map(|(_, max)| max))
}

/// Whether `path` holds a whole LTX file of the range `min`-`max`.
fn whole_ltx_file(path: &Path, min: TxId, max: TxId) -> bool {
    fs::read(path).ok().and_then(|b| ltx::verify(b.as_slice()).ok()).is_some_and(|v| {
        let h = v.header();
        h.min_txid == min && h.max_txid == max
    })
}

fn check_word(generation: u64, len: u64) -> u64 {
    !(generation ^ len.rotate_left(32))
}

fn header_bytes(generation: u64) -> [u8; 24] {
    let mut head = [0u8; 24];
    head[..8].copy_from_slice(LOG_MAGIC);
    head[8..16].copy_from_slice(&generation.to_le_bytes());
    head[16..].copy_from_slice(&(!generation).to_le_bytes());
    head
}

/// The generation a log file's header names, if it is a valid header.
fn read_header(file: &File) -> Option<u64> {
    let mut head = [0u8; 24];
    file.read_exact_at(&mut head, 0).ok()?;
    let generation = u64::from_le_bytes(head[8..16].try_into().ok()?);
    let complement = u64::from_le_bytes(head[16..].try_into().ok()?);
    (&head[..8] == LOG_MAGIC && complement == !generation).then_some(generation)
}

/// Writes a zero-filled log (its blocks allocated and written, so later appends overwrite
/// them) under a temp name, fsyncs it and renames it into place.
fn create(path: &Path) -> Result<File, StoreError> {
    let mut temp = path.as_os_str().to_os_string();
    temp.push(TEMP_SUFFIX);
    let temp = PathBuf::from(temp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(StoreError::io("create", &temp))?;
    let zeros = vec![0u8; 256 << 10];
    let filled = (0..LOG_SIZE / zeros.len() as u64)
        .try_for_each(|i| file.write_all_at(&zeros, i * zeros.len() as u64))
        .and_then(|()| file.write_all_at(&header_bytes(0), 0))
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("fill", &temp))
        .and_then(|()| fs::rename(&temp, path).map_err(StoreError::io("rename", &temp)));
    if let Err(e) = filled {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use replite_core::ltx::{Encoder, Header};
    use replite_core::{Checksum, PageSize, Pgno};

    fn ltx_file(txid: u64, fill: u8) -> Vec<u8> {
        let page_size = PageSize::new(4096).expect("page size");
        let pre = if txid == 1 { Checksum::ZERO } else { Checksum(0x8000_0000_0000_0001) };
        let header = Header::new(page_size, 1, TxId(txid), TxId(txid), pre);
        let mut enc = Encoder::new(Vec::new(), header).expect("encoder");
        enc.encode_page(Pgno(1), &[fill; 4096]).expect("page");
        let post = if txid == 1 { enc.snapshot_checksum() } else { Checksum(0x8000_0000_0000_0002) };
        enc.finish(post).expect("finish").0
    }

    fn unflushed(dir: &Path, txid: u64, bytes: &[u8]) -> Unflushed {
        let path = dir.join(LTX_DIR).join(format_ltx_filename(TxId(txid), TxId(txid)));
        fsutil::ensure_dir(path.parent().expect("parent")).expect("ltx dir");
        let file = flush::write_new(&path, bytes, false).expect("write").expect("open file");
        Unflushed { max: TxId(txid), path, file, failed: false, bytes: None }
    }

    fn name() -> DbName {
        DbName::new("a.db").expect("name")
    }

    #[test]
    fn a_crash_that_lost_logged_files_gets_them_back_and_nothing_older() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = CommitLog::open(dir.path()).expect("open");
        let (one, two, three) = (ltx_file(1, 1), ltx_file(2, 2), ltx_file(3, 3));
        let f1 = unflushed(dir.path(), 1, &one);
        log.append(vec![f1], &[&one]).expect("append 1");
        // Retirement makes file 1 durable by itself: its record no longer counts.
        log.retire().expect("retire");
        let (f2, f3) = (unflushed(dir.path(), 2, &two), unflushed(dir.path(), 3, &three));
        log.append(vec![f2, f3], &[&two, &three]).expect("append 2 and 3");
        drop(log);
        // The crash: file 1 was removed by retention, file 2 never reached the disk, file 3
        // is torn.
        let ltx = dir.path().join(LTX_DIR);
        for f in ["0000000000000001-0000000000000001.ltx", "0000000000000002-0000000000000002.ltx"] {
            fs::remove_file(ltx.join(f)).expect("remove");
        }
        let torn = ltx.join("0000000000000003-0000000000000003.ltx");
        fs::write(&torn, &three[..100]).expect("tear");

        assert_eq!(restore(dir.path(), &name()).expect("restore"), 2);
        assert_eq!(fs::read(ltx.join("0000000000000002-0000000000000002.ltx")).expect("2"), two);
        assert_eq!(fs::read(&torn).expect("3"), three);
        assert!(!ltx.join("0000000000000001-0000000000000001.ltx").exists(), "a retired record came back");
        // Restoring started a new generation: a second start restores nothing.
        fs::remove_file(&torn).expect("remove");
        assert_eq!(restore(dir.path(), &name()).expect("restore again"), 0);
    }

    #[test]
    fn a_logged_file_retention_removed_stays_removed_and_an_older_torn_one_is_mended() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = CommitLog::open(dir.path()).expect("open");
        let files: Vec<Vec<u8>> = (1..=4).map(|t| ltx_file(t, t as u8)).collect();
        for (i, bytes) in files.iter().enumerate() {
            log.append(vec![unflushed(dir.path(), i as u64 + 1, bytes)], &[bytes]).expect("append");
        }
        drop(log);
        let ltx = dir.path().join(LTX_DIR);
        let path = |t: u64| ltx.join(format_ltx_filename(TxId(t), TxId(t)));
        // Retention removed 1; the crash tore 2 (older than the oldest whole file, 3) and
        // lost 4.
        for t in [1, 4] {
            fs::remove_file(path(t)).expect("remove");
        }
        fs::write(path(2), &files[1][..40]).expect("tear");
        assert_eq!(restore(dir.path(), &name()).expect("restore"), 2);
        assert_eq!(fs::read(path(2)).expect("2 is whole again"), files[1]);
        assert_eq!(fs::read(path(4)).expect("4 is back"), files[3]);
        assert!(!path(1).exists(), "a file retention removed came back");
    }

    #[test]
    fn a_torn_record_ends_the_log_and_a_discarded_generation_restores_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = CommitLog::open(dir.path()).expect("open");
        let (one, two) = (ltx_file(1, 1), ltx_file(2, 2));
        log.append(vec![unflushed(dir.path(), 1, &one)], &[&one]).expect("append 1");
        let second_at = log.end;
        log.append(vec![unflushed(dir.path(), 2, &two)], &[&two]).expect("append 2");
        let generation = log.generation;
        // Tear the second record's bytes: only the first counts.
        log.file.write_all_at(&[0xff; 64], second_at + 200).expect("tear");
        let bytes = fs::read(dir.path().join(COMMIT_LOG_FILE)).expect("read log");
        let found: Vec<TxId> = records(&bytes, generation).into_iter().map(|(_, max, _)| max).collect();
        assert_eq!(found, [TxId(1)]);
        assert!(records(&bytes, generation + 1).is_empty(), "records of another generation counted");

        log.discard().expect("discard");
        drop(log);
        fs::remove_dir_all(dir.path().join(LTX_DIR)).expect("remove the files");
        assert_eq!(restore(dir.path(), &name()).expect("restore"), 0);
    }

    #[test]
    fn a_full_log_retires_itself_and_keeps_taking_appends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = CommitLog::open(dir.path()).expect("open");
        let first_generation = log.generation;
        let appends = (LOG_SIZE / (2 * BLOCK)) + 3;
        for txid in 1..=appends {
            let bytes = ltx_file(txid, txid as u8);
            log.append(vec![unflushed(dir.path(), txid, &bytes)], &[&bytes]).expect("append");
        }
        assert!(log.generation > first_generation, "never retired");
        assert!(log.records < appends as usize);
        let too_big = vec![0u8; LOG_SIZE as usize];
        assert!(log.append(Vec::new(), &[&too_big]).is_err(), "a record larger than the log was taken");
    }

    #[test]
    fn a_file_that_is_not_a_log_is_replaced_and_restores_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join(COMMIT_LOG_FILE), b"not a log").expect("write");
        assert_eq!(restore(dir.path(), &name()).expect("restore"), 0);
        let log = CommitLog::open(dir.path()).expect("open");
        assert_eq!(fs::metadata(&log.path).expect("stat").len(), LOG_SIZE);
    }
}
