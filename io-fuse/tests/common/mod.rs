//! Shared fixtures for the FUSE tests: temporary mounts that always unmount, and a sink that
//! turns every captured transaction into an LTX file and applies it to an in-memory copy.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use replite_core::ltx::{self, Encoder, Header, checksum_database};
use replite_core::types::{Checksum, PageSize, Pos, TxId};
use replite_fuse::{CapturedTx, CommitSink, Durability, JournalMode, Mount, MountOptions, Refusal, Role};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("replite-fuse-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One database as a replica would hold it, fed only by captured transactions.
#[derive(Default)]
pub struct Copy {
    pub data: Vec<u8>,
    pub pos: Pos,
    pub ltx: Vec<Vec<u8>>,
    pub modes: Vec<JournalMode>,
    pub durabilities: Vec<Durability>,
    pub wal: Vec<Option<replite_fuse::WalSegment>>,
    /// The database checksum after each commit (and after a seed).
    pub checksums: Vec<Checksum>,
}

/// Records every commit as an LTX file and applies it to an in-memory copy.
#[derive(Default)]
pub struct RecordingSink {
    pub dbs: Mutex<HashMap<String, Copy>>,
    pub refuse: AtomicBool,
    /// Refuse at the commit point only (the lease was lost mid-transaction).
    pub refuse_commit: AtomicBool,
    pub commits: AtomicUsize,
    pub syncs: AtomicUsize,
    pub deletes: Mutex<Vec<String>>,
    /// Holds commits at the commit point while closed.
    pub gate: Gate,
}

/// Holds the threads that reach it while closed, counting them, so a test can keep a commit
/// at its commit point (the FUSE syscall held, SQLite's locks taken) for as long as it likes.
#[derive(Default)]
pub struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

/// Keeps a [`Gate`] closed until dropped, so a failing test releases what it held.
pub struct Held<'a> {
    gate: &'a Gate,
    arrived_before: usize,
}

impl Held<'_> {
    /// Waits until `n` threads have reached the gate since it was closed.
    pub fn wait_arrivals(&self, n: usize) {
        self.gate.wait_arrivals(self.arrived_before + n);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gate.open();
    }
}

impl Gate {
    /// Closes the gate until the returned guard is dropped.
    pub fn hold(&self) -> Held<'_> {
        let mut state = self.state.lock().unwrap();
        state.0 = true;
        Held { gate: self, arrived_before: state.1 }
    }

    pub fn close(&self) {
        self.state.lock().unwrap().0 = true;
    }

    pub fn open(&self) {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = false;
        self.changed.notify_all();
    }

    /// Waits until `n` threads in all (since the sink was made) have reached the gate.
    pub fn wait_arrivals(&self, n: usize) {
        let mut state = self.state.lock().unwrap();
        while state.1 < n {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn pass(&self) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.1 += 1;
        self.changed.notify_all();
        while state.0 {
            state = self.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// Encodes a captured transaction as the LTX file that moves `copy` to its next position.
/// An error (not a panic: the sink runs on a FUSE worker thread, and a panic there takes the
/// mount down with the test process) when the capture does not fit the copy.
pub fn encode(copy: &Copy, tx: &CapturedTx) -> Result<Vec<u8>, String> {
    let txid = copy.pos.txid.next();
    let snapshot = txid == TxId(1);
    let pre = if snapshot { Checksum::ZERO } else { copy.pos.checksum };
    let mut after = copy.data.clone();
    let page = tx.page_size.bytes();
    for p in &tx.pages {
        let at = (p.pgno.0 as usize - 1) * page;
        if after.len() < at + page {
            after.resize(at + page, 0);
        }
        after[at..at + page].copy_from_slice(&p.data);
    }
    after.resize(tx.commit as usize * page, 0);
    let post = checksum_database(&after[..], tx.page_size).map_err(|e| e.to_string())?;
    let mut header = Header::new(tx.page_size, tx.commit, txid, txid, pre);
    if let Some(wal) = tx.wal {
        header.wal_offset = i64::try_from(wal.offset).expect("WAL offset fits");
        header.wal_size = i64::try_from(wal.size).expect("WAL size fits");
        header.wal_salt1 = wal.salt1;
        header.wal_salt2 = wal.salt2;
    }
    let mut enc = Encoder::new(Vec::new(), header).map_err(|e| e.to_string())?;
    for p in &tx.pages {
        enc.encode_page(p.pgno, &p.data).map_err(|e| format!("captured page {}: {e}", p.pgno.0))?;
    }
    let (bytes, _) = enc.finish(post).map_err(|e| e.to_string())?;
    Ok(bytes)
}

impl RecordingSink {
    /// Starts the copy of `db` from `data` at `pos`, as the daemon's history does for a
    /// replica it promotes (its first capture is not a snapshot).
    pub fn seed(&self, db: &str, data: Vec<u8>, pos: Pos) {
        let mut dbs = self.dbs.lock().unwrap();
        let copy = dbs.entry(db.to_owned()).or_default();
        copy.data = data;
        copy.pos = pos;
        copy.checksums.push(pos.checksum);
    }

    /// Every checksum the copy of `db` has had after a commit, in order.
    pub fn checksums_of(&self, db: &str) -> Vec<Checksum> {
        self.dbs.lock().unwrap().get(db).map(|c| c.checksums.clone()).unwrap_or_default()
    }

    pub fn copy_of(&self, db: &str) -> Vec<u8> {
        self.dbs.lock().unwrap().get(db).map(|c| c.data.clone()).unwrap_or_default()
    }
    pub fn pos_of(&self, db: &str) -> Pos {
        self.dbs.lock().unwrap().get(db).map(|c| c.pos).unwrap_or_default()
    }
    pub fn ltx_of(&self, db: &str) -> Vec<Vec<u8>> {
        self.dbs.lock().unwrap().get(db).map(|c| c.ltx.clone()).unwrap_or_default()
    }
    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }
}

impl CommitSink for RecordingSink {
    fn commit(&self, tx: &CapturedTx) -> Result<(), Refusal> {
        if self.refuse.load(Ordering::SeqCst) || self.refuse_commit.load(Ordering::SeqCst) {
            return Err(Refusal::ReadOnly { reason: "test refuses".into() });
        }
        self.gate.pass();
        let mut dbs = self.dbs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let copy = dbs.entry(tx.db.clone()).or_default();
        let bytes = encode(copy, tx).map_err(|reason| Refusal::Failed { reason })?;
        let pos = ltx::apply(&mut copy.data, copy.pos.checksum, &bytes[..])
            .map_err(|e| Refusal::Failed { reason: e.to_string() })?;
        copy.pos = pos;
        copy.ltx.push(bytes);
        copy.modes.push(tx.mode);
        copy.durabilities.push(tx.durability);
        copy.wal.push(tx.wal);
        copy.checksums.push(pos.checksum);
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn may_write(&self, _db: &str) -> Result<(), Refusal> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Refusal::ReadOnly { reason: "test refuses".into() });
        }
        Ok(())
    }

    fn sync(&self, _db: &str) -> Result<(), Refusal> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn delete(&self, db: &str) -> Result<(), Refusal> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Refusal::ReadOnly { reason: "test refuses".into() });
        }
        self.deletes.lock().unwrap().push(db.to_owned());
        // The drop as the daemon records it: a transaction with commit size zero.
        let mut dbs = self.dbs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(copy) = dbs.get_mut(db).filter(|c| c.pos.txid != TxId(0)) {
            let txid = copy.pos.txid.next();
            let page_size = PageSize::new(4096).expect("valid");
            let header = Header::new(page_size, 0, txid, txid, copy.pos.checksum);
            let enc = Encoder::new(Vec::new(), header).map_err(|e| Refusal::Failed { reason: e.to_string() })?;
            let (bytes, _) = enc.finish(Checksum::EMPTY).map_err(|e| Refusal::Failed { reason: e.to_string() })?;
            copy.data.clear();
            copy.pos = Pos::new(txid, Checksum::EMPTY);
            copy.ltx.push(bytes);
            copy.checksums.push(Checksum::EMPTY);
        }
        Ok(())
    }
}

/// A mount over a temporary data directory; unmounts before the directories go.
pub struct Fixture {
    pub mount: Option<Mount>,
    pub sink: Arc<RecordingSink>,
    pub data: PathBuf,
    pub mnt: PathBuf,
    root: TempDir,
}

impl Fixture {
    pub fn new(role: Role) -> Fixture {
        Fixture::with_passthrough(role, false)
    }

    /// A mount that uses FUSE passthrough for WAL indexes and replica databases.
    pub fn with_passthrough(role: Role, passthrough: bool) -> Fixture {
        init_logs();
        let root = TempDir::new(if role == Role::Primary { "primary" } else { "replica" });
        let data = root.0.join("data");
        let mnt = root.0.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mountpoint");
        let sink = Arc::new(RecordingSink::default());
        let options = MountOptions { role, threads: 2, passthrough, ..MountOptions::default() };
        let mount = Mount::new(&data, &mnt, Arc::clone(&sink) as Arc<dyn CommitSink>, &options).expect("mount");
        Fixture { mount: Some(mount), sink, data: data.canonicalize().expect("data dir"), mnt, root }
    }

    pub fn primary() -> Fixture {
        Fixture::new(Role::Primary)
    }

    pub fn replica() -> Fixture {
        Fixture::new(Role::Replica)
    }

    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    pub fn path(&self, db: &str) -> PathBuf {
        self.mnt.join(db)
    }

    pub fn open(&self, db: &str) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.path(db)).expect("open through the mount");
        conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
        conn
    }

    /// The database file as stored in the data directory.
    pub fn stored(&self, db: &str) -> Vec<u8> {
        std::fs::read(replite_fuse::database_path(&self.data, db)).unwrap_or_default()
    }

    /// A side file of `db` in the data directory, by its LiteFS name (`journal`, `wal`, `shm`).
    /// Spelled out here rather than asked of the crate: the tests pin the layout too.
    pub fn side_file(&self, db: &str, file: &str) -> PathBuf {
        self.data.join("dbs").join(db).join(file)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A test that fails while a commit is held at the gate must not leave that writer (and
        // the mount, and the test process) stuck.
        self.sink.gate.open();
        drop(self.mount.take());
        let _ = &self.root;
    }
}

/// Asserts two database images are identical, naming the first differing page.
pub fn assert_same_pages(real: &[u8], copy: &[u8], page_size: usize, what: &str) {
    assert_eq!(real.len(), copy.len(), "{what}: database sizes differ (real {} vs copy {})", real.len(), copy.len());
    if real == copy {
        return; // memcmp: fast even in a debug build, which matters for gigabyte databases
    }
    if let Some(i) = real.iter().zip(copy).position(|(a, b)| a != b) {
        let start = i / page_size * page_size;
        panic!(
            "{what}: page {} differs at byte {}\nreal {:02x?}\ncopy {:02x?}",
            i / page_size + 1,
            i % page_size,
            &real[start..start + 16],
            &copy[start..start + 16]
        );
    }
}

pub fn checksum(bytes: &[u8], page_size: u32) -> Checksum {
    checksum_database(bytes, PageSize::new(page_size).expect("valid page size")).expect("in-memory read")
}

pub fn integrity_ok(conn: &rusqlite::Connection) {
    let result: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
    assert_eq!(result, "ok");
}

pub fn journal_mode(conn: &rusqlite::Connection, mode: &str) -> String {
    conn.query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0)).expect("journal_mode")
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// How many open-file-description lock requests wait on the file at `path` (as
/// `/proc/locks` shows them): a test can see that a thread is blocked in a lock without
/// sleeping and hoping.
pub fn blocked_ofd_waiters(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).expect("stat");
    let dev = meta.dev();
    let id = format!("{:02x}:{:02x}:{}", libc::major(dev), libc::minor(dev), meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    locks
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&"->") && fields.contains(&"OFDLCK") && fields.contains(&id.as_str())
        })
        .count()
}

/// Polls `condition` until it holds, failing after `what` has not happened for a minute.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends the crate's logs to the test output (`RUST_LOG=replite_fuse=debug`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
