//! The durable store on real files: persist → recover round trips, torn and corrupted LTX
//! files, crash leftovers, refused applies, and a full disk (a real 64 KiB tmpfs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use replite::store::{Store, StoreError, recover};
use replite_core::ltx::{self, Encoder, Header, SQLITE_MAGIC};
use replite_core::node::{IoFailure, LtxFileInfo};
use replite_core::stream::DbName;
use replite_core::{Checksum, Epoch, PageSize, Pgno, Pos, TxId};

const PAGE: u32 = 512;

fn page_size() -> PageSize {
    PageSize::new(PAGE).expect("512 is a valid page size")
}

fn name() -> DbName {
    DbName::new("app.db").expect("a plain file name")
}

/// A database in memory and the LTX files that take it from one state to the next.
#[derive(Default)]
struct Model {
    db: Vec<u8>,
    txid: u64,
}

/// One encoded LTX file.
struct Ltx {
    min: TxId,
    max: TxId,
    pre: Checksum,
    post: Checksum,
    bytes: Vec<u8>,
}

impl Model {
    fn checksum(&self) -> Checksum {
        if self.db.is_empty() {
            // Nothing yet, or the empty database a drop left.
            return if self.txid == 0 { Checksum::ZERO } else { Checksum::EMPTY };
        }
        ltx::checksum_database(self.db.as_slice(), page_size()).expect("the model is whole pages")
    }

    fn page(pgno: u32, fill: u8) -> Vec<u8> {
        let mut page = vec![fill; PAGE as usize];
        if pgno == 1 {
            page[..16].copy_from_slice(SQLITE_MAGIC);
            page[16..18].copy_from_slice(&u16::try_from(PAGE).expect("fits").to_be_bytes());
        }
        page
    }

    /// A snapshot of `pages` pages, the next transaction.
    fn snapshot(&mut self, pages: u32, fill: u8) -> Ltx {
        let max = TxId(self.txid + 1);
        let header = Header::new(page_size(), pages, TxId(1), max, Checksum::ZERO);
        let mut enc = Encoder::new(Vec::new(), header).expect("valid header");
        let mut db = Vec::new();
        for pgno in 1..=pages {
            let page = Model::page(pgno, fill);
            enc.encode_page(Pgno(pgno), &page).expect("encode page");
            db.extend_from_slice(&page);
        }
        let post = enc.snapshot_checksum();
        let (bytes, _) = enc.finish(post).expect("finish snapshot");
        self.db = db;
        self.txid = max.0;
        assert_eq!(self.checksum(), post);
        Ltx { min: TxId(1), max, pre: Checksum::ZERO, post, bytes }
    }

    /// One transaction writing `fill` into each of `pgnos`.
    fn tx(&mut self, pgnos: &[u32], fill: u8) -> Ltx {
        let pre = self.checksum();
        let txid = TxId(self.txid + 1);
        let mut db = self.db.clone();
        for &pgno in pgnos {
            let offset = (pgno as usize - 1) * PAGE as usize;
            if db.len() < offset + PAGE as usize {
                db.resize(offset + PAGE as usize, 0);
            }
            db[offset..offset + PAGE as usize].copy_from_slice(&Model::page(pgno, fill));
        }
        let commit = u32::try_from(db.len() / PAGE as usize).expect("small database");
        let header = Header::new(page_size(), commit, txid, txid, pre);
        let mut enc = Encoder::new(Vec::new(), header).expect("valid header");
        let mut sorted = pgnos.to_vec();
        sorted.sort_unstable();
        for pgno in sorted {
            let offset = (pgno as usize - 1) * PAGE as usize;
            enc.encode_page(Pgno(pgno), &db[offset..offset + PAGE as usize]).expect("encode page");
        }
        self.db = db;
        self.txid = txid.0;
        let post = self.checksum();
        let (bytes, _) = enc.finish(post).expect("finish transaction");
        Ltx { min: txid, max: txid, pre, post, bytes }
    }
}

fn info(l: &Ltx) -> LtxFileInfo {
    LtxFileInfo { min: l.min, max: l.max, pre: l.pre, post: l.post, size: l.bytes.len() as u64 }
}

fn persist_and_apply(store: &mut Store, l: &Ltx, base: Checksum) -> Pos {
    store.persist_and_apply(&name(), l.min, l.max, &l.bytes, base).expect("persist and apply")
}

/// A snapshot of two pages and the three transactions after it, and a store in `dir` holding
/// the snapshot (applied).
fn store_after_a_snapshot(dir: &Path) -> (Store, Ltx, [Ltx; 3]) {
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let txs = [model.tx(&[2], 0x22), model.tx(&[1], 0x33), model.tx(&[2], 0x44)];
    let (mut store, _) = Store::open(dir).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    (store, snap, txs)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The files of `dir` but the spares the store keeps ready (retired files among them).
fn files_but_spares_in(dir: &Path) -> Vec<String> {
    files_in(dir).into_iter().filter(|n| !n.starts_with(".spare-")).collect()
}

#[test]
fn persisted_ltx_files_database_and_epoch_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(4, 0x11);
    let tx2 = model.tx(&[2, 5], 0x22);
    {
        let (mut store, recovery) = Store::open(dir.path()).expect("open empty store");
        assert!(recovery.dbs.is_empty());
        assert_eq!(recovery.max_epoch, Epoch(0));
        let pos1 = persist_and_apply(&mut store, &snap, Checksum::ZERO);
        assert_eq!(pos1, Pos::new(TxId(1), snap.post));
        let pos2 = persist_and_apply(&mut store, &tx2, pos1.checksum);
        assert_eq!(pos2, Pos::new(TxId(2), tx2.post));
        store.persist_epoch(Epoch(3)).expect("persist epoch");
        store.persist_epoch(Epoch(7)).expect("persist epoch again");
    }

    let db_dir = dir.path().join("dbs/app.db");
    assert_eq!(files_in(&db_dir), ["database", "ltx"]);
    assert_eq!(
        files_in(&db_dir.join("ltx")),
        ["0000000000000001-0000000000000001.ltx", "0000000000000002-0000000000000002.ltx"]
    );
    assert_eq!(fs::read(dir.path().join("epoch")).expect("epoch file"), b"0000000000000007\n");
    assert_eq!(fs::read(db_dir.join("database")).expect("database"), model.db);
    assert_eq!(fs::read(db_dir.join("ltx/0000000000000002-0000000000000002.ltx")).expect("ltx"), tx2.bytes);

    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.max_epoch, Epoch(7));
    let rec = &recovery.dbs[&name()];
    assert_eq!(rec.ltx, [info(&snap), info(&tx2)]);
    assert!(rec.invalid_ltx.is_empty());
    assert_eq!(rec.db_checksum, tx2.post);
}

#[test]
fn torn_and_corrupted_ltx_files_are_reported_invalid_and_never_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(3, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let tx3 = model.tx(&[3], 0x33);
    let tx4 = model.tx(&[1], 0x44);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    let pos1 = persist_and_apply(&mut store, &snap, Checksum::ZERO);
    for l in [&tx2, &tx3, &tx4] {
        store.persist_ltx(&name(), l.min, l.max, &l.bytes).expect("persist");
    }
    drop(store);

    // A torn write of tx2 (half the file), a flipped page byte in tx3, and tx4 stored under
    // another range's name.
    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    let path = |min: u64, max: u64| ltx_dir.join(replite_core::types::format_ltx_filename(TxId(min), TxId(max)));
    fs::write(path(2, 2), &tx2.bytes[..tx2.bytes.len() / 2]).expect("tear tx2");
    let mut corrupt = tx3.bytes.clone();
    corrupt[200] ^= 0xff;
    fs::write(path(3, 3), &corrupt).expect("corrupt tx3");
    fs::rename(path(4, 4), path(5, 5)).expect("misname tx4");

    let recovery = recover(dir.path()).expect("recover");
    let rec = &recovery.dbs[&name()];
    assert_eq!(rec.ltx, [info(&snap)]);
    assert_eq!(rec.invalid_ltx, [(TxId(2), TxId(2)), (TxId(3), TxId(3)), (TxId(5), TxId(5))]);
    assert_eq!(rec.db_checksum, pos1.checksum);

    let (mut store, _) = Store::open(dir.path()).expect("reopen");
    let db_path = store.database_path(&name());
    let before = fs::read(&db_path).expect("database");
    for (min, max) in [(2, 2), (3, 3), (5, 5)] {
        let err = store.apply_ltx(&name(), TxId(min), TxId(max), pos1.checksum).expect_err("invalid file applied");
        assert_eq!(err.failure(), IoFailure::Mismatch, "{err}");
        assert_eq!(fs::read(&db_path).expect("database"), before, "database changed by {min}-{max}");
    }
}

#[test]
fn temp_files_left_by_a_crash_are_removed_at_recovery() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    drop(store);

    // What a crash mid-write leaves: partial temp files next to their final names.
    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    let temps = [
        ltx_dir.join("0000000000000002-0000000000000002.ltx.tmp"),
        dir.path().join("dbs/app.db/database.tmp"),
        dir.path().join("epoch.tmp"),
    ];
    for t in &temps {
        fs::write(t, &tx2.bytes[..100]).expect("write temp file");
    }

    let (_, recovery) = Store::open(dir.path()).expect("reopen");
    for t in &temps {
        assert!(!t.exists(), "{} survived recovery", t.display());
    }
    let rec = &recovery.dbs[&name()];
    assert_eq!(rec.ltx, [info(&snap)]);
    assert!(rec.invalid_ltx.is_empty());
    assert_eq!(recovery.max_epoch, Epoch(0));
}

#[test]
fn apply_onto_a_database_at_another_checksum_is_refused_and_leaves_it_byte_identical() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(3, 0x11);
    let tx2 = model.tx(&[2, 3], 0x22);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    let pos1 = persist_and_apply(&mut store, &snap, Checksum::ZERO);
    store.persist_ltx(&name(), tx2.min, tx2.max, &tx2.bytes).expect("persist");
    let db_path = store.database_path(&name());
    let before = fs::read(&db_path).expect("database");

    // The Node's base is wrong.
    let wrong = Checksum(pos1.checksum.0 ^ 1);
    let err = store.apply_ltx(&name(), tx2.min, tx2.max, wrong).expect_err("applied onto the wrong base");
    assert!(matches!(err, StoreError::BaseMismatch { .. }), "{err}");
    assert_eq!(err.failure(), IoFailure::Mismatch);
    assert_eq!(fs::read(&db_path).expect("database"), before);

    // The Node's base is right about history, but the file on disk changed behind its back:
    // the store checks the real file, not only the Node's belief.
    drop(store);
    let mut changed = before.clone();
    changed[PAGE as usize + 10] ^= 0xff;
    fs::write(&db_path, &changed).expect("change database");
    let (mut store, recovery) = Store::open(dir.path()).expect("reopen");
    assert_ne!(recovery.dbs[&name()].db_checksum, pos1.checksum);
    let err = store.apply_ltx(&name(), tx2.min, tx2.max, pos1.checksum).expect_err("applied onto a changed file");
    assert_eq!(err.failure(), IoFailure::Mismatch, "{err}");
    assert_eq!(fs::read(&db_path).expect("database"), changed);

    // Put back, it applies and the file is what the model says.
    fs::write(&db_path, &before).expect("restore database");
    store.forget_checksum(&name());
    let pos2 = store.apply_ltx(&name(), tx2.min, tx2.max, pos1.checksum).expect("apply");
    assert_eq!(pos2, Pos::new(TxId(2), tx2.post));
    assert_eq!(fs::read(&db_path).expect("database"), model.db);
}

#[test]
fn a_snapshot_replaces_older_ltx_files_and_the_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(3, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let snap2 = model.snapshot(2, 0x55);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    let pos1 = persist_and_apply(&mut store, &snap, Checksum::ZERO);
    persist_and_apply(&mut store, &tx2, pos1.checksum);
    let pos3 = persist_and_apply(&mut store, &snap2, Checksum::ZERO);
    assert_eq!(pos3, Pos::new(TxId(3), snap2.post));
    assert_eq!(files_but_spares_in(&dir.path().join("dbs/app.db/ltx")), ["0000000000000001-0000000000000003.ltx"]);
    assert_eq!(fs::read(store.database_path(&name())).expect("database"), model.db);
    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap2)]);
    assert_eq!(recovery.dbs[&name()].db_checksum, snap2.post);
}

#[test]
fn a_spooled_snapshot_becomes_the_stored_file_by_rename_and_a_crash_leftover_spool_is_removed() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(3, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let snap2 = model.snapshot(4, 0x66);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    let pos1 = persist_and_apply(&mut store, &snap, Checksum::ZERO);
    persist_and_apply(&mut store, &tx2, pos1.checksum);
    // What the daemon's spool thread does: write the file into a spool, verify, fsync.
    let mut spool = store.create_spool(&name()).expect("spool");
    spool.write_all(&snap2.bytes).expect("write spool");
    spool.as_file().sync_all().expect("fsync spool");
    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    assert!(files_in(&ltx_dir).iter().any(|n| n.starts_with(".spool-") && n.ends_with(".tmp")));
    let stored = store.persist_spooled(&name(), snap2.min, snap2.max, spool).expect("persist spooled");
    assert_eq!(fs::read(&stored).expect("stored file"), snap2.bytes);
    // The snapshot replaced the older files; nothing else is left in the directory.
    assert_eq!(files_but_spares_in(&ltx_dir), ["0000000000000001-0000000000000003.ltx"]);
    let pos = store.apply_ltx(&name(), snap2.min, snap2.max, Checksum::ZERO).expect("apply");
    assert_eq!(pos, Pos::new(TxId(3), snap2.post));
    assert_eq!(fs::read(store.database_path(&name())).expect("database"), model.db);

    // A crash mid-spool leaves a partial spool: recovery deletes it and sees the history.
    let mut partial = store.create_spool(&name()).expect("spool");
    partial.write_all(&snap2.bytes[..snap2.bytes.len() / 2]).expect("write half");
    let (_, path) = partial.keep().expect("keep it, as a kill -9 would");
    drop(store);
    let recovery = recover(dir.path()).expect("recover");
    assert!(!path.exists(), "recovery removed the partial spool");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap2)]);
    assert_eq!(recovery.dbs[&name()].db_checksum, snap2.post);
}

#[test]
fn a_primary_commit_is_persisted_without_reapplying_pages_the_database_already_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let tx2 = model.tx(&[2, 3], 0x22);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    // What the FUSE layer does on a primary: SQLite's writes land in the database file first.
    fs::write(store.database_path(&name()), &model.db).expect("write through the mount");
    let pos = store.persist_commit(&name(), tx2.min, tx2.max, &tx2.bytes).expect("persist commit");
    assert_eq!(pos, Pos::new(TxId(2), tx2.post));
    assert_eq!(fs::read(store.database_path(&name())).expect("database"), model.db);
    // The next transaction applies on top: the store re-read the file rather than trusting
    // the checksum it had before the commit.
    let tx3 = model.tx(&[1], 0x33);
    let pos3 = persist_and_apply(&mut store, &tx3, tx2.post);
    assert_eq!(pos3, Pos::new(TxId(3), tx3.post));
    assert_eq!(fs::read(store.database_path(&name())).expect("database"), model.db);
}

#[test]
fn malformed_ltx_bytes_are_never_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    let torn = &snap.bytes[..snap.bytes.len() - 1];
    let err = store.persist_ltx(&name(), snap.min, snap.max, torn).expect_err("torn bytes stored");
    assert_eq!(err.failure(), IoFailure::Mismatch);
    let err = store.persist_ltx(&name(), TxId(1), TxId(2), &snap.bytes).expect_err("stored under another range");
    assert!(matches!(err, StoreError::RangeMismatch { .. }), "{err}");
    assert!(files_in(&dir.path().join("dbs/app.db/ltx")).is_empty());
}

#[test]
fn a_malformed_epoch_file_is_an_error_not_epoch_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("epoch"), b"seven\n").expect("write epoch");
    let err = recover(dir.path()).expect_err("malformed epoch accepted");
    assert!(matches!(err, StoreError::InvalidEpochFile { .. }), "{err}");
}

/// Serialises the tests that mount: `mount`/`umount` are child processes, and a child forked
/// while another test had a file open on its tmpfs holds that file until it execs, which keeps
/// a deleted temp file's space in use (a spurious ENOSPC) or the mount busy.
static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "64k"); `None` when not root (the mount needs it).
    fn mount(size: &str) -> Option<Tmpfs> {
        let serial = MOUNTING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&path).status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Tmpfs { path, _dir: dir, _serial: serial });
        }
        let root = fs::read_to_string("/proc/self/status")
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
        assert!(!root, "running as root but could not mount a tmpfs at {}", path.display());
        eprintln!("SKIP: mounting a tmpfs needs root");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Should umount still find the mount busy, retry, then detach lazily so the mount never
        // outlives the test.
        for _ in 0..20 {
            if Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let lazy = Command::new("umount").arg("-l").arg(&self.path).status();
        eprintln!("umount {} failed 20 times; lazy unmount: {lazy:?}", self.path.display());
    }
}

#[test]
fn a_full_disk_is_reported_as_no_space_and_leaves_no_partial_file() {
    let Some(fs_) = Tmpfs::mount("64k") else { return };
    let mut model = Model::default();
    let small = model.snapshot(4, 0x11);
    let mut big_model = Model::default();
    // 200 pages of 512 bytes: ~100 KiB, more than the whole file system.
    let big = big_model.snapshot(200, 0x22);

    let (mut store, _) = Store::open(&fs_.path).expect("open");
    let err = store.persist_ltx(&name(), big.min, big.max, &big.bytes).expect_err("100 KiB fit in 64 KiB");
    assert_eq!(err.failure(), IoFailure::NoSpace, "{err}");
    let ltx_dir = fs_.path.join("dbs/app.db/ltx");
    assert!(files_in(&ltx_dir).is_empty(), "left behind: {:?}", files_in(&ltx_dir));

    // The failed write freed its space: a small file still fits and the store recovers cleanly.
    persist_and_apply(&mut store, &small, Checksum::ZERO);
    let err = store.persist_and_apply(&name(), big.min, big.max, &big.bytes, Checksum::ZERO).expect_err("fit");
    assert_eq!(err.failure(), IoFailure::NoSpace, "{err}");
    assert_eq!(files_in(&ltx_dir), ["0000000000000001-0000000000000001.ltx"]);
    drop(store);
    let recovery = recover(&fs_.path).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&small)]);
    assert!(recovery.dbs[&name()].invalid_ltx.is_empty());
    assert_eq!(recovery.dbs[&name()].db_checksum, small.post);
}

#[test]
fn a_database_that_cannot_grow_is_reported_as_no_space() {
    let Some(fs_) = Tmpfs::mount("64k") else { return };
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let grow = model.tx(&(3..=20).collect::<Vec<_>>(), 0x22);
    let (mut store, _) = Store::open(&fs_.path).expect("open");
    let pos1 = persist_and_apply(&mut store, &snap, Checksum::ZERO);
    store.persist_ltx(&name(), grow.min, grow.max, &grow.bytes).expect("persist");
    // Fill what is left, so the database cannot grow by 18 pages.
    let filler = fs_.path.join("filler");
    let mut chunk = 4096;
    while chunk >= 1 {
        let mut f = fs::OpenOptions::new().append(true).create(true).open(&filler).expect("filler");
        if std::io::Write::write_all(&mut f, &vec![0u8; chunk]).is_err() {
            chunk /= 2;
        }
    }
    let err = store.apply_ltx(&name(), grow.min, grow.max, pos1.checksum).expect_err("grew on a full disk");
    assert_eq!(err.failure(), IoFailure::NoSpace, "{err}");
}

#[test]
fn recovering_a_data_dir_that_does_not_exist_finds_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let recovery = recover(&dir.path().join("missing")).expect("recover");
    assert!(recovery.dbs.is_empty());
    assert_eq!(recovery.max_epoch, Epoch(0));
}

/// Carries out the Node's storage outputs with the store, feeding results back, until it asks
/// for nothing more; returns the removals seen.
fn run_storage(node: &mut replite_core::node::Node, store: &mut Store) -> Vec<(TxId, TxId)> {
    use replite_core::node::{Input, Millis, Output};
    let mut removed = Vec::new();
    while let Some(out) = node.poll_output() {
        match out {
            Output::ReplayLtx { db, op, min, max, base } => {
                let result = store.apply_ltx(&db, min, max, base).map_err(|e| e.failure());
                node.handle(Millis(0), Input::LtxDone { op, result });
            }
            Output::PersistLtx { db, op, min, max, bytes, base, durable, .. } => {
                let result = store
                    .write_replicated(&db, min, max, &bytes, durable)
                    .and_then(|()| store.apply_ltx(&db, min, max, base))
                    .map_err(|e| e.failure());
                node.handle(Millis(0), Input::LtxDone { op, result });
            }
            Output::FlushLtx { db, op, through } => {
                let files = store.take_unflushed(&db, through);
                let result = replite::store::flush_files(&files).map_err(|e| e.failure());
                node.handle(Millis(0), Input::LtxFlushed { op, result });
            }
            Output::PersistRejoin { db, txid } => store.persist_rejoin(&db, txid).expect("persist rejoin"),
            Output::RemoveLtx { db, min, max } => {
                store.remove_ltx(&db, min, max).expect("remove");
                removed.push((min, max));
            }
            Output::PersistEpoch { epoch } => store.persist_epoch(epoch).expect("persist epoch"),
            _ => {}
        }
    }
    removed
}

#[test]
fn a_restarted_node_replays_missed_applies_and_removes_a_torn_file_through_the_store() {
    use replite_core::NodeId;
    use replite_core::node::{Config, Input, Millis, Node};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(3, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let tx3 = model.tx(&[1, 4], 0x33);
    let expected_db = model.db.clone();
    let tx4 = model.tx(&[3], 0x44);
    {
        // The crash came after tx2 and tx3 were durable but before they were applied, and
        // in the middle of writing tx4.
        let (mut store, _) = Store::open(dir.path()).expect("open");
        persist_and_apply(&mut store, &snap, Checksum::ZERO);
        for l in [&tx2, &tx3, &tx4] {
            store.persist_ltx(&name(), l.min, l.max, &l.bytes).expect("persist");
        }
    }
    let torn = dir.path().join("dbs/app.db/ltx/0000000000000004-0000000000000004.ltx");
    fs::write(&torn, &tx4.bytes[..tx4.bytes.len() - 8]).expect("tear tx4");

    let (mut store, recovery) = Store::open(dir.path()).expect("reopen");
    let mut cfg = Config::new(NodeId(1));
    cfg.candidates = [NodeId(1)].into_iter().collect();
    let mut node = Node::new(cfg).expect("valid config");
    node.handle(Millis(0), Input::Start(recovery));
    let removed = run_storage(&mut node, &mut store);

    assert_eq!(removed, [(TxId(4), TxId(4))]);
    assert!(!torn.exists());
    assert_eq!(node.pos(&name()), Pos::new(TxId(3), tx3.post));
    assert_eq!(fs::read(store.database_path(&name())).expect("database"), expected_db);
    let again = recover(dir.path()).expect("recover again");
    assert_eq!(again.dbs[&name()].ltx, [info(&snap), info(&tx2), info(&tx3)]);
    assert_eq!(again.dbs[&name()].db_checksum, tx3.post);
}

impl Model {
    /// The drop of the database (LiteFS's form): commit size zero, no pages.
    fn drop_db(&mut self) -> Ltx {
        let pre = self.checksum();
        let txid = TxId(self.txid + 1);
        let header = Header::new(page_size(), 0, txid, txid, pre);
        let (bytes, _) = Encoder::new(Vec::new(), header).expect("valid header").finish(Checksum::EMPTY).expect("drop");
        self.db.clear();
        self.txid = txid.0;
        Ltx { min: txid, max: txid, pre, post: Checksum::EMPTY, bytes }
    }
}

#[test]
fn a_drop_removes_the_database_and_side_files_keeps_the_history_and_a_new_database_follows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(3, 0x11);
    let dropped = model.drop_db();
    let again = model.tx(&[1, 2], 0x33);
    let db_dir = dir.path().join("dbs/app.db");
    {
        let (mut store, _) = Store::open(dir.path()).expect("open");
        let pos = persist_and_apply(&mut store, &snap, Checksum::ZERO);
        for side in ["journal", "wal", "shm"] {
            fs::write(db_dir.join(side), b"left by SQLite").expect("side file");
        }
        let pos = persist_and_apply(&mut store, &dropped, pos.checksum);
        assert_eq!(pos, Pos::new(dropped.max, Checksum::EMPTY));
        assert_eq!(files_in(&db_dir), ["ltx"], "the database and its side files are gone");
    }
    // Recovery: a missing file is the empty database the drop left.
    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap), info(&dropped)]);
    let (mut store, _) = Store::open(dir.path()).expect("reopen");
    let pos = persist_and_apply(&mut store, &again, Checksum::EMPTY);
    assert_eq!(pos, Pos::new(again.max, again.post));
    assert_eq!(fs::read(db_dir.join("database")).expect("database"), model.db);
}

#[test]
fn replaying_a_drop_the_database_file_missed_removes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let dropped = model.drop_db();
    let (mut store, _) = Store::open(dir.path()).expect("open");
    let pos = persist_and_apply(&mut store, &snap, Checksum::ZERO);
    // A crash after the drop was made durable, before the files went.
    store.persist_ltx(&name(), dropped.min, dropped.max, &dropped.bytes).expect("persist the drop");
    drop(store);
    let (mut store, recovery) = Store::open(dir.path()).expect("reopen");
    assert_eq!(recovery.dbs[&name()].db_checksum, pos.checksum);
    let replayed = store.apply_ltx(&name(), dropped.min, dropped.max, pos.checksum).expect("replay");
    assert_eq!(replayed, Pos::new(dropped.max, Checksum::EMPTY));
    assert!(!dir.path().join("dbs/app.db/database").exists());
}

#[test]
fn an_own_commit_written_without_an_fsync_waits_for_a_flush_and_a_torn_one_is_dropped_at_recovery() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let tx3 = model.tx(&[1], 0x33);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    // The primary's own commits: written at their final names, one durably, one not.
    let pos2 = store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, false).expect("write tx2");
    assert_eq!(pos2, Pos::new(tx2.max, tx2.post));
    assert_eq!(store.write_commit(&name(), tx3.min, tx3.max, &tx3.bytes, false).expect("tx3").txid, tx3.max);
    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    assert_eq!(files_in(&ltx_dir).len(), 3, "no temp file, no rename: {:?}", files_in(&ltx_dir));
    let waiting = store.take_unflushed(&name(), tx2.max);
    assert_eq!(waiting.iter().map(|f| f.max).collect::<Vec<_>>(), [tx2.max]);
    replite::store::flush_files(&waiting).expect("flush");
    assert_eq!(store.take_unflushed(&name(), TxId(99)).iter().map(|f| f.max).collect::<Vec<_>>(), [tx3.max]);
    drop(store);
    // A crash tore tx3 (written, never flushed, never promised): recovery reports it invalid.
    let torn = ltx_dir.join("0000000000000003-0000000000000003.ltx");
    fs::write(&torn, &tx3.bytes[..tx3.bytes.len() / 2]).expect("tear");
    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap), info(&tx2)]);
    assert_eq!(recovery.dbs[&name()].invalid_ltx, [(tx3.min, tx3.max)]);
}

#[test]
fn an_own_commit_is_checked_only_for_its_range_and_a_stale_file_of_that_range_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    let err = store.write_commit(&name(), TxId(5), TxId(5), &tx2.bytes, true).expect_err("wrong range");
    assert!(matches!(err, StoreError::RangeMismatch { .. }), "{err}");
    let err = store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes[..50], true).expect_err("too short");
    assert!(matches!(err, StoreError::ShortLtx { .. }), "{err}");
    // A file of that range left by an older history (say, before a snapshot moved us back).
    let path = store.ltx_path(&name(), tx2.min, tx2.max);
    fs::write(&path, b"stale").expect("stale file");
    store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, true).expect("replaces it");
    assert_eq!(fs::read(&path).expect("read"), tx2.bytes);
}

#[test]
fn a_full_disk_fails_an_own_commit_as_no_space_and_leaves_no_partial_file() {
    let Some(fs_) = Tmpfs::mount("64k") else { return };
    let mut small_model = Model::default();
    let small = small_model.snapshot(2, 0x11);
    let mut model = Model::default();
    model.snapshot(2, 0x11);
    // One transaction of 200 pages: ~100 KiB.
    let big = model.tx(&(1..=200).collect::<Vec<_>>(), 0x22);
    let (mut store, _) = Store::open(&fs_.path).expect("open");
    persist_and_apply(&mut store, &small, Checksum::ZERO);
    let err = store.write_commit(&name(), big.min, big.max, &big.bytes, false).expect_err("no room");
    assert_eq!(err.failure(), IoFailure::NoSpace, "{err}");
    assert_eq!(files_in(&fs_.path.join("dbs/app.db/ltx")), ["0000000000000001-0000000000000001.ltx"]);
    assert!(store.take_unflushed(&name(), big.max).is_empty());
}

#[test]
fn the_rejoin_record_survives_a_restart_and_zero_removes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    store.persist_rejoin(&name(), TxId(42)).expect("persist");
    assert_eq!(recover(dir.path()).expect("recover").dbs[&name()].rejoin_txid, TxId(42));
    store.persist_rejoin(&name(), TxId::ZERO).expect("clear");
    store.persist_rejoin(&name(), TxId::ZERO).expect("clearing twice is fine");
    assert_eq!(recover(dir.path()).expect("recover").dbs[&name()].rejoin_txid, TxId::ZERO);
}

#[test]
fn a_retired_file_is_recycled_as_a_spare_and_the_next_commit_written_over_it_is_exact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    // A long file (three pages) retired, then shorter and longer commits written over spares.
    let tx2 = model.tx(&[1, 2, 3], 0x22);
    let tx3 = model.tx(&[2], 0x33);
    let tx4 = model.tx(&[1, 2, 3, 4], 0x44);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, true).expect("tx2");
    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    store.remove_ltx(&name(), snap.min, snap.max).expect("retire the snapshot");
    store.remove_ltx(&name(), tx2.min, tx2.max).expect("retire tx2");
    let names = files_in(&ltx_dir);
    assert_eq!(names.len(), 2, "both retired files kept as spares: {names:?}");
    assert!(names.iter().all(|n| n.starts_with(".spare-") && n.ends_with(".tmp")), "{names:?}");
    store.write_commit(&name(), tx3.min, tx3.max, &tx3.bytes, false).expect("tx3 over the longer tx2");
    store.write_commit(&name(), tx4.min, tx4.max, &tx4.bytes, true).expect("tx4 over the snapshot");
    assert_eq!(fs::read(store.ltx_path(&name(), tx3.min, tx3.max)).expect("read tx3"), tx3.bytes);
    assert_eq!(fs::read(store.ltx_path(&name(), tx4.min, tx4.max)).expect("read tx4"), tx4.bytes);
    assert_eq!(files_in(&ltx_dir).len(), 2, "spares were used, no file created: {:?}", files_in(&ltx_dir));
    replite::store::flush_files(&store.take_unflushed(&name(), tx3.max)).expect("flush");
    drop(store);
    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&tx3), info(&tx4)]);
    assert!(recovery.dbs[&name()].invalid_ltx.is_empty());
}

#[test]
fn a_spare_renamed_into_place_before_its_new_bytes_were_durable_is_not_trusted_at_recovery() {
    // What a power loss may leave when a recycled spare held an older file: the new name with
    // the old bytes (the write was lost), or the new bytes cut short over the old tail.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let tx2 = model.tx(&[1, 2, 3], 0x22);
    let tx3 = model.tx(&[2], 0x33);
    let (mut store, _) = Store::open(dir.path()).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    drop(store);
    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    let tx2_path = ltx_dir.join("0000000000000002-0000000000000002.ltx");
    let tx3_path = ltx_dir.join("0000000000000003-0000000000000003.ltx");
    fs::write(&tx2_path, &tx2.bytes).expect("old bytes under a newer name");
    let mut mixed = tx2.bytes.clone();
    mixed[..tx3.bytes.len()].copy_from_slice(&tx3.bytes);
    fs::write(&tx3_path, &mixed).expect("new bytes over an old tail");
    fs::rename(&tx2_path, ltx_dir.join("0000000000000004-0000000000000004.ltx")).expect("rename");
    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap)]);
    assert_eq!(recovery.dbs[&name()].invalid_ltx, [(tx3.min, tx3.max), (TxId(4), TxId(4))]);
}

#[test]
fn a_file_whose_flush_failed_is_rewritten_from_a_verified_read_never_fsynced_again() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _, [tx2, tx3, tx4]) = store_after_a_snapshot(dir.path());
    for tx in [&tx2, &tx3, &tx4] {
        store.write_commit(&name(), tx.min, tx.max, &tx.bytes, false).expect("deferred commit");
    }
    // As after a failed fsync: the driver puts the files back.
    let taken = store.take_unflushed(&name(), tx4.max);
    assert!(taken.iter().all(|f| !f.failed));
    store.put_back_unflushed(&name(), taken);
    let retry = store.take_unflushed(&name(), tx4.max);
    assert!(retry.iter().all(|f| f.failed), "a put-back file is marked");
    let inode = |tx: &Ltx| fs::metadata(store.ltx_path(&name(), tx.min, tx.max)).expect("stat").ino();
    let before = inode(&tx2);
    // tx4 was retired meanwhile: nothing of it is needed.
    fs::remove_file(store.ltx_path(&name(), tx4.min, tx4.max)).expect("retire tx4");
    replite::store::flush_files(&retry).expect("rewritten and durable");
    assert_ne!(inode(&tx2), before, "a new file replaced the one whose fsync failed");
    assert_eq!(fs::read(store.ltx_path(&name(), tx2.min, tx2.max)).expect("read"), tx2.bytes);

    // What the failed write-back lost on disk comes back from the bytes kept in memory.
    store.put_back_unflushed(&name(), retry);
    let again = store.take_unflushed(&name(), tx4.max);
    assert!(again.iter().all(|f| f.bytes.is_some()), "small files keep their bytes through a failure");
    let tx3_path = store.ltx_path(&name(), tx3.min, tx3.max);
    let mut damaged = tx3.bytes.clone();
    damaged[200] ^= 0xff;
    fs::write(&tx3_path, &damaged).expect("damage tx3");
    replite::store::flush_files(&again).expect("tx3 written again from memory");
    assert_eq!(fs::read(&tx3_path).expect("read"), tx3.bytes, "tx3 as it was committed");

    // A file whose bytes were not kept (one too large for the commit log) cannot be made
    // durable once the disk lost it: reported, never flushed.
    store.put_back_unflushed(&name(), again);
    let mut last = store.take_unflushed(&name(), tx4.max);
    for f in &mut last {
        f.bytes = None;
    }
    fs::write(&tx3_path, &damaged).expect("damage tx3 again");
    let err = replite::store::flush_files(&last).expect_err("tx3 is lost");
    assert!(matches!(err, StoreError::LostUnflushed { .. }), "{err}");
    assert_eq!(err.failure(), IoFailure::Mismatch, "the Node resyncs a replica on this");
    assert_eq!(fs::read(&tx3_path).expect("read"), damaged, "a file that does not verify is left for recovery");
}

#[test]
fn a_file_that_a_newer_history_wrote_at_the_same_name_is_not_overwritten_by_kept_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _, [tx2, _, _]) = store_after_a_snapshot(dir.path());
    store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, false).expect("deferred commit");
    let taken = store.take_unflushed(&name(), tx2.max);
    store.put_back_unflushed(&name(), taken);
    let retry = store.take_unflushed(&name(), tx2.max);
    // A snapshot replaced the history meanwhile and a different transaction 2 was stored.
    let mut other = Model::default();
    other.snapshot(2, 0x44);
    let other_tx2 = other.tx(&[1], 0x55);
    assert_eq!((other_tx2.min, other_tx2.max), (tx2.min, tx2.max));
    let path = store.ltx_path(&name(), tx2.min, tx2.max);
    fs::write(&path, &other_tx2.bytes).expect("the newer history's file");
    replite::store::flush_files(&retry).expect("flush");
    assert_eq!(fs::read(&path).expect("read"), other_tx2.bytes, "the newer file stays");
}

#[test]
fn files_whose_log_append_failed_keep_their_bytes_for_a_retry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _, [tx2, _, _]) = store_after_a_snapshot(dir.path());
    store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, false).expect("deferred commit");
    let log = store.commit_log(&name()).expect("a commit log");
    let waiting = store.take_unflushed(&name(), tx2.max);
    // The log refuses records larger than itself, and then the file's own fsync fails too
    // (`sync_file_range` refuses anything but a regular file).
    let mut failing = waiting;
    let record = vec![7u8; replite::store::COMMIT_LOG_SIZE as usize];
    failing[0].bytes = Some(record.clone());
    failing[0].file = fs::File::open("/dev/null").expect("/dev/null");
    let failed = replite::store::flush_files_logged(failing, Some(&*log)).expect_err("neither log nor fsync");
    assert_eq!(failed.files.len(), 1);
    assert_eq!(failed.files[0].bytes.as_deref(), Some(record.as_slice()), "the bytes come back with the file");
}

/// A power loss after durable commits, imitated: their files at their final names lost or
/// torn (never fsynced by themselves), the commit log intact.
#[test]
fn durable_commits_a_crash_took_from_their_files_come_back_from_the_commit_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, snap, [tx2, tx3, tx4]) = store_after_a_snapshot(dir.path());
    store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, true).expect("tx2, durable");
    store.write_commit(&name(), tx3.min, tx3.max, &tx3.bytes, false).expect("tx3, deferred");
    store.write_commit(&name(), tx4.min, tx4.max, &tx4.bytes, false).expect("tx4, deferred");
    // The flush of tx3 goes through the log too; tx4 is never flushed (never promised).
    let waiting = store.take_unflushed(&name(), tx3.max);
    let log = store.commit_log(&name());
    assert!(log.is_some(), "no commit log");
    replite::store::flush_files_logged(waiting, log.as_deref()).map_err(|f| f.error).expect("flush tx3");
    drop((store, log));
    let ltx_dir = dir.path().join("dbs/app.db/ltx");
    let path = |l: &Ltx| ltx_dir.join(replite_core::types::format_ltx_filename(l.min, l.max));
    fs::remove_file(path(&tx2)).expect("tx2 lost");
    fs::write(path(&tx3), &tx3.bytes[..tx3.bytes.len() / 3]).expect("tx3 torn");
    fs::remove_file(path(&tx4)).expect("tx4 lost");

    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap), info(&tx2), info(&tx3)]);
    assert!(recovery.dbs[&name()].invalid_ltx.is_empty());
    assert_eq!(fs::read(path(&tx3)).expect("tx3"), tx3.bytes);
    // Recovery started a new generation: a second crash with the files gone again brings
    // nothing back (they were made durable by themselves at the first recovery).
    fs::remove_file(path(&tx2)).expect("remove tx2");
    let again = recover(dir.path()).expect("recover again");
    assert_eq!(again.dbs[&name()].ltx, [info(&snap), info(&tx3)]);
}

/// A snapshot replaces the history: no commit of the old one may come back from the log.
#[test]
fn a_snapshot_discards_the_commit_log_of_the_history_it_replaces() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, _, [tx2, tx3, _]) = store_after_a_snapshot(dir.path());
    let new_snap = Model::default().snapshot(2, 0x66);
    store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, true).expect("tx2");
    store.write_commit(&name(), tx3.min, tx3.max, &tx3.bytes, true).expect("tx3");
    let pos = persist_and_apply(&mut store, &new_snap, Checksum::ZERO);
    assert_eq!(pos, Pos::new(TxId(1), new_snap.post));
    drop(store);
    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&new_snap)], "the old history came back");
}

/// Synchronous replication: a replica's durable file goes through the commit log too.
#[test]
fn a_durable_replicated_file_a_crash_took_comes_back_from_the_commit_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut store, snap, [tx2, tx3, _]) = store_after_a_snapshot(dir.path());
    store.write_replicated(&name(), tx2.min, tx2.max, &tx2.bytes, true).expect("durable replicated file");
    assert!(store.take_unflushed(&name(), TxId(99)).is_empty(), "a durable file waits for a flush");
    drop(store);
    let path = dir.path().join("dbs/app.db/ltx").join(replite_core::types::format_ltx_filename(tx2.min, tx2.max));
    fs::remove_file(&path).expect("lost");
    let recovery = recover(dir.path()).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap), info(&tx2)]);
    // A malformed replicated file is still refused before anything is written.
    let (mut store, _) = Store::open(dir.path()).expect("reopen");
    let mut bad = tx3.bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(store.write_replicated(&name(), tx3.min, tx3.max, &bad, true).is_err());
    assert!(
        !dir.path().join("dbs/app.db/ltx").join(replite_core::types::format_ltx_filename(tx3.min, tx3.max)).exists()
    );
}

/// A disk with no room for the 2 MiB commit log: durable commits are fsynced one by one, and
/// no partial log is left behind.
#[test]
fn without_room_for_a_commit_log_durable_commits_are_fsynced_by_themselves() {
    let Some(fs_) = Tmpfs::mount("64k") else { return };
    let mut model = Model::default();
    let snap = model.snapshot(2, 0x11);
    let tx2 = model.tx(&[2], 0x22);
    let tx3 = model.tx(&[1], 0x33);
    let (mut store, _) = Store::open(&fs_.path).expect("open");
    persist_and_apply(&mut store, &snap, Checksum::ZERO);
    store.write_commit(&name(), tx2.min, tx2.max, &tx2.bytes, true).expect("tx2 without a log");
    assert!(store.commit_log(&name()).is_none(), "a 2 MiB log on a 64 KiB file system");
    store.write_commit(&name(), tx3.min, tx3.max, &tx3.bytes, false).expect("tx3, deferred");
    let waiting = store.take_unflushed(&name(), tx3.max);
    replite::store::flush_files_logged(waiting, None).map_err(|f| f.error).expect("flushed by fsync");
    let db_dir = fs_.path.join("dbs/app.db");
    assert!(files_in(&db_dir).iter().all(|n| !n.starts_with("commit-log")), "{:?}", files_in(&db_dir));
    drop(store);
    let recovery = recover(&fs_.path).expect("recover");
    assert_eq!(recovery.dbs[&name()].ltx, [info(&snap), info(&tx2), info(&tx3)]);
}
