//! The driver with a real Node, the static lease and an in-memory store: commits captured by
//! the FUSE layer are answered only after their LTX is durable, form a valid chain of LTX
//! files, and rebuild the database; a node that is not primary refuses them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replite::driver::{CommitBridge, DatabaseImage, DiskStorage, Driver, SnapshotImage, Status, Storage};
use replite::lease::{LeaseRecord, Leaser, StaticLeaser};
use replite_core::node::{Config, Input, IoFailure, Node, Recovery};
use replite_core::stream::DbName;
use replite_core::{Checksum, Epoch, NodeId, PageSize, Pgno, Pos, TxId, ltx};
use replite_fuse::{CapturedPage, CapturedTx, CommitSink, Durability, JournalMode, Refusal};

#[derive(Default)]
struct MemStorage {
    files: Mutex<BTreeMap<(String, u64), Vec<u8>>>,
    /// The `through` of every flush, in order.
    flushed: Mutex<Vec<TxId>>,
    /// The thread each flush ran on, in the same order.
    flushed_on: Mutex<Vec<std::thread::ThreadId>>,
}

impl Storage for MemStorage {
    fn persist_ltx(&self, db: &DbName, min: TxId, _max: TxId, bytes: &[u8], _: bool) -> Result<Pos, IoFailure> {
        let verified = ltx::verify(bytes).map_err(|_| IoFailure::Mismatch)?;
        self.files.lock().expect("lock").insert((db.as_str().to_owned(), min.0), bytes.to_vec());
        Ok(verified.post_apply_pos())
    }
    fn persist_and_apply(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        bytes: &[u8],
        _: Checksum,
        durable: bool,
    ) -> Result<Pos, IoFailure> {
        self.persist_ltx(db, min, max, bytes, durable)
    }
    fn flush_ltx(&self, _: &DbName, through: TxId) -> Result<(), IoFailure> {
        self.flushed.lock().expect("lock").push(through);
        self.flushed_on.lock().expect("lock").push(std::thread::current().id());
        Ok(())
    }
    fn create_spool(&self, _: &DbName) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new()
    }
    fn persist_spooled_and_apply(
        &self,
        db: &DbName,
        min: TxId,
        max: TxId,
        spool: tempfile::NamedTempFile,
        _: Option<SnapshotImage>,
        _: Checksum,
    ) -> Result<Pos, IoFailure> {
        let bytes = std::fs::read(spool.path()).map_err(|_| IoFailure::Io)?;
        self.persist_ltx(db, min, max, &bytes, true)
    }
    fn replay_ltx(&self, _: &DbName, _: TxId, _: TxId, _: Checksum) -> Result<Pos, IoFailure> {
        Err(IoFailure::Io)
    }
    fn read_ltx(&self, db: &DbName, min: TxId, _: TxId) -> std::io::Result<Vec<u8>> {
        let files = self.files.lock().expect("lock");
        files.get(&(db.as_str().to_owned(), min.0)).cloned().ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
    fn copy_committed(&self, _: &DbName) -> std::io::Result<DatabaseImage> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
    fn remove_ltx(&self, db: &DbName, min: TxId, _max: TxId) -> Result<(), IoFailure> {
        self.files.lock().expect("lock").remove(&(db.as_str().to_owned(), min.0));
        Ok(())
    }
    fn persist_rejoin(&self, _: &DbName, _: TxId) -> Result<(), IoFailure> {
        Ok(())
    }
    fn persist_epoch(&self, _epoch: Epoch) -> Result<(), IoFailure> {
        Ok(())
    }
}

fn record() -> LeaseRecord {
    LeaseRecord { hostname: "n1".into(), advertise_url: "http://127.0.0.1:20202".into(), node_id: Some(NodeId(1)) }
}

fn tx(pages: &[(u32, u8)], commit: u32) -> CapturedTx {
    CapturedTx {
        db: "app.db".into(),
        page_size: PageSize::new(512).expect("valid"),
        commit,
        pages: pages.iter().map(|&(pgno, fill)| CapturedPage { pgno: Pgno(pgno), data: vec![fill; 512] }).collect(),
        mode: JournalMode::Delete,
        durability: Durability::Requested,
        wal: None,
    }
}

/// How the FUSE side reaches the driver in a test.
#[derive(Clone, Copy, Debug)]
enum Lane {
    /// Requests queue for the driver's task, which answers them.
    Queued,
    /// The calling thread steps the driver itself, as in the daemon (`DirectLane`).
    Direct,
}

/// Starts a driver on its own runtime thread; returns the FUSE-side bridge and the store.
fn start(primary: bool, lane: Lane) -> (CommitBridge, Arc<MemStorage>, std::thread::JoinHandle<()>) {
    let (bridge, storage, thread, _) = start_watched(primary, lane, |_| {});
    (bridge, storage, thread)
}

/// [`start`], with the driver's published status.
fn start_watched(
    primary: bool,
    lane: Lane,
    tune: impl FnOnce(&mut Config),
) -> (CommitBridge, Arc<MemStorage>, std::thread::JoinHandle<()>, tokio::sync::watch::Receiver<Status>) {
    let mut cfg = Config::new(NodeId(1));
    cfg.candidate = primary;
    if !primary {
        cfg.candidates.clear();
    }
    tune(&mut cfg);
    let mut node = Node::new(cfg).expect("valid config");
    let storage = Arc::new(MemStorage::default());
    let (bridge, fs) = CommitBridge::new();
    let direct = bridge.lane();
    let store: Arc<dyn Storage> = storage.clone();
    let (status_tx, status_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let clock = replite::driver::Clock::start();
            node.handle(clock.now(), Input::Start(Recovery::default()));
            let leaser = Leaser::Static(StaticLeaser::new(primary, record()));
            let mut driver = Driver::new(node, fs, leaser, store, Box::new(|_| Ok(None)));
            if matches!(lane, Lane::Direct) {
                driver = driver.with_direct_lane(direct);
            }
            status_tx.send(driver.status()).expect("hand over the status");
            driver.run(std::future::pending()).await;
        });
    });
    let status = status_rx.recv().expect("the driver starts");
    (bridge, storage, thread, status)
}

/// Waits (bounded) until the node says it may write.
fn wait_for_primary(bridge: &CommitBridge) -> Result<(), Refusal> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match bridge.may_write("app.db") {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn commits_are_answered_after_their_ltx_is_durable_and_chain_into_the_database() {
    for lane in [Lane::Queued, Lane::Direct] {
        commits_chain_into_the_database(lane);
    }
}

fn commits_chain_into_the_database(lane: Lane) {
    let (bridge, storage, driver) = start(true, lane);
    wait_for_primary(&bridge).expect("a static primary takes the lease");

    bridge.commit(&tx(&[(1, 1), (2, 2)], 2)).expect("first commit");
    bridge.commit(&tx(&[(2, 3), (3, 4)], 3)).expect("second commit");
    bridge.commit(&tx(&[(1, 5)], 2)).expect("a commit that shrinks the database");

    let files = storage.files.lock().expect("lock").clone();
    assert_eq!(files.keys().map(|(_, min)| *min).collect::<Vec<_>>(), vec![1, 2, 3], "one LTX per commit");
    let mut db = Vec::new();
    let mut pos = Pos::ZERO;
    for bytes in files.values() {
        pos = ltx::apply(&mut db, pos.checksum, &bytes[..]).expect("each file continues the last");
    }
    let mut expected = vec![5u8; 512];
    expected.extend_from_slice(&[3u8; 512]);
    assert_eq!(db, expected);
    assert_eq!(pos.txid, TxId(3));
    assert_eq!(ltx::checksum_database(&db[..], PageSize::new(512).expect("valid")).expect("sums"), pos.checksum);
    assert_ne!(pos.checksum, Checksum::ZERO);

    drop(bridge);
    driver.join().expect("driver stops when the FUSE side hangs up");
}

#[test]
fn a_node_that_is_not_primary_refuses_commits_as_read_only() {
    for lane in [Lane::Queued, Lane::Direct] {
        a_replica_refuses_commits(lane);
    }
}

fn a_replica_refuses_commits(lane: Lane) {
    let (bridge, storage, driver) = start(false, lane);
    std::thread::sleep(Duration::from_millis(200));
    let refused = bridge.commit(&tx(&[(1, 1)], 1));
    assert!(matches!(refused, Err(Refusal::ReadOnly { .. })), "{refused:?}");
    assert!(matches!(bridge.may_write("app.db"), Err(Refusal::ReadOnly { .. })));
    assert!(storage.files.lock().expect("lock").is_empty(), "nothing persisted");
    drop(bridge);
    driver.join().expect("driver stops");
}

#[test]
fn the_primary_store_makes_each_commit_durable_in_the_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, recovery) = replite::store::Store::open(dir.path()).expect("opens an empty data dir");
    assert!(recovery.dbs.is_empty());
    let mut cfg = Config::new(NodeId(1));
    cfg.candidate = true;
    let mut node = Node::new(cfg).expect("valid config");
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::new(store, None));
    let (bridge, fs) = CommitBridge::new();
    let driver = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let clock = replite::driver::Clock::start();
            node.handle(clock.now(), Input::Start(recovery));
            let leaser = Leaser::Static(StaticLeaser::new(true, record()));
            Driver::new(node, fs, leaser, storage, Box::new(|_| Ok(None))).run(std::future::pending()).await;
        });
    });
    wait_for_primary(&bridge).expect("primary");
    bridge.commit(&tx(&[(1, 1), (2, 2)], 2)).expect("commit 1");
    bridge.commit(&tx(&[(2, 9)], 2)).expect("commit 2");
    drop(bridge);
    driver.join().expect("driver stops");

    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    let mut names: Vec<String> = std::fs::read_dir(&ltx_dir)
        .expect("ltx dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["0000000000000001-0000000000000001.ltx", "0000000000000002-0000000000000002.ltx"]);
    let (_, recovered) = replite::store::Store::open(dir.path()).expect("reopens");
    let files = &recovered.dbs[&DbName::new("app.db").expect("name")].ltx;
    assert_eq!(files.len(), 2, "both files verify on recovery");
}

#[test]
fn the_status_shows_a_commit_by_the_time_the_commit_is_answered() {
    for lane in [Lane::Queued, Lane::Direct] {
        let (bridge, _, driver, status) = start_watched(true, lane, |_| {});
        wait_for_primary(&bridge).expect("primary");
        for txid in 1..=200u64 {
            let fill = u8::try_from(txid % 250).expect("small");
            bridge.commit(&tx(&[(1, fill)], 1)).expect("commit");
            // Read at once, from this thread: the driver may not have run again since answering.
            let shown = status.borrow().databases.iter().find(|d| d.name == "app.db").map(|d| d.txid);
            assert_eq!(shown, Some(txid), "{lane:?}: the status lags the answered commit");
        }
        drop(bridge);
        driver.join().expect("driver stops");
    }
}

/// A deferred commit stepped on the FUSE thread arms the flush timer (10 ms) there; the loop,
/// asleep on an older deadline, must be woken to keep it, or the commit's file is flushed only
/// when something else wakes the loop (the next heartbeat, up to a second later). The bound
/// is fifty times the flush interval: it fails only when the timer is missed.
#[test]
fn a_deferred_commit_made_on_the_fuse_thread_is_flushed_by_the_loops_timer() {
    let (bridge, storage, driver) = start(true, Lane::Direct);
    wait_for_primary(&bridge).expect("primary");
    for txid in 1..=3u64 {
        let mut deferred = tx(&[(1, u8::try_from(txid).expect("small"))], 1);
        deferred.durability = Durability::Deferred;
        bridge.commit(&deferred).expect("a deferred commit is answered once written");
        let deadline = Instant::now() + Duration::from_millis(500);
        while !storage.flushed.lock().expect("lock").contains(&TxId(txid)) {
            assert!(Instant::now() < deadline, "commit {txid} was not flushed when its timer was due");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(bridge);
    driver.join().expect("driver stops");
}

/// SQLite's WAL fsync waits for a flush of the commits before it: stepped on the calling
/// thread, that thread fsyncs them itself (decision 0012) rather than waiting for a blocking
/// task to report to the loop, which would then answer it.
#[test]
fn an_fsync_stepped_on_the_calling_thread_flushes_there_and_is_answered() {
    // No timer flush gets in first: only the fsync asks for one.
    let (bridge, storage, driver, _) = start_watched(true, Lane::Direct, |cfg| cfg.flush_ms = 600_000);
    wait_for_primary(&bridge).expect("primary");
    for txid in 1..=5u64 {
        let mut deferred = tx(&[(1, u8::try_from(txid).expect("small"))], 1);
        deferred.durability = Durability::Deferred;
        bridge.commit(&deferred).expect("a deferred commit is answered once written");
        bridge.sync("app.db").expect("the fsync is answered once the commit is durable");
        let flushed = storage.flushed.lock().expect("lock").clone();
        let on = storage.flushed_on.lock().expect("lock").clone();
        let last = flushed.iter().rposition(|&through| through >= TxId(txid));
        let last = last.unwrap_or_else(|| panic!("fsync after commit {txid} answered before a flush covered it"));
        assert_eq!(on[last], std::thread::current().id(), "the flush for commit {txid} ran on another thread");
    }
    drop(bridge);
    driver.join().expect("driver stops");
}
