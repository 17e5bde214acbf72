//! kill -9 of a single-node daemon at seeded points of a write load, then restart: the
//! database passes `PRAGMA integrity_check`, its position's checksum is the database file's,
//! and every transaction SQLite was told had committed is there. Seeds: `REPLITE_CRASH_SEEDS`
//! (a count, default 4) from `REPLITE_CRASH_SEED_BASE` (default 0).

mod support;

use std::time::{Duration, Instant};

use rusqlite::Connection;
use support::cluster::{Lease, Node, WAIT};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small PRNG (SplitMix64), so a seed always picks the same kill points.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A single node (static lease) in `root`, primary, and a connection to its `app.db` in
/// `journal_mode`.
fn solo_primary(root: &std::path::Path, journal_mode: &str) -> (Node, Connection) {
    let mut node = Node::new(root, "solo", &Lease::Static { primary_url: None });
    node.start();
    node.wait_for("primary", |i| i["role"] == "primary");
    let conn = Connection::open(node.db_path("app.db")).expect("open");
    conn.pragma_update(None, "journal_mode", journal_mode).expect("journal mode");
    (node, conn)
}

fn crash_and_recover(journal_mode: &str) {
    crash_and_recover_with(journal_mode, "FULL");
}

/// `synchronous`: with NORMAL in WAL mode SQLite asks for no fsync per commit, so every LTX
/// file is written without one and flushed behind the acknowledgement; a kill -9 keeps the
/// page cache, so every acknowledged transaction must still be there.
fn crash_and_recover_with(journal_mode: &str, synchronous: &str) {
    let base = env_u64("REPLITE_CRASH_SEED_BASE", 0);
    let seeds = env_u64("REPLITE_CRASH_SEEDS", 4);
    for seed in base..base + seeds {
        let root = tempfile::tempdir().expect("tempdir");
        let (mut node, conn) = solo_primary(root.path(), journal_mode);
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
        drop(conn);

        let mut rng = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ journal_mode.len() as u64;
        let kill_after = Duration::from_millis(50 + next(&mut rng) % 400);
        let path = node.db_path("app.db");
        let mode = journal_mode.to_owned();
        let sync = synchronous.to_owned();
        let writer = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let Ok(conn) = Connection::open(&path) else { return acked };
            let _ = conn.pragma_update(None, "journal_mode", &mode);
            let _ = conn.pragma_update(None, "synchronous", &sync);
            let mut rng = seed;
            for i in 0..5_000u64 {
                // Rows of varied size, some spanning overflow pages.
                let size = 10 + (next(&mut rng) % 6000) as usize;
                match conn.execute("INSERT INTO t (id, v) VALUES (?1, zeroblob(?2))", rusqlite::params![i, size]) {
                    Ok(_) => acked.push(i),
                    Err(_) => break,
                }
            }
            acked
        });
        let started = Instant::now();
        std::thread::sleep(kill_after);
        node.kill();
        let acked = writer.join().expect("writer");
        assert!(started.elapsed() < WAIT);

        node.start();
        let info = node.wait_for("primary again", |i| i["role"] == "primary");
        let conn = Connection::open(node.db_path("app.db")).expect("reopen");
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity");
        assert_eq!(ok, "ok", "seed {seed} {journal_mode}: integrity after kill at {kill_after:?}");
        for id in &acked {
            let found: i64 = conn.query_row("SELECT count(*) FROM t WHERE id = ?1", [id], |r| r.get(0)).expect("q");
            assert_eq!(found, 1, "seed {seed} {journal_mode}: acknowledged row {id} lost (kill at {kill_after:?})");
        }
        drop(conn);
        // The position the node reports is the database file's checksum.
        let pos = info["databases"][0]["pos"].as_str().expect("pos").to_owned();
        node.stop();
        let db_file = node.dir.join("data/dbs/app.db/database");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_replite"))
            .args(["ltx", "checksum"])
            .arg(&db_file)
            .output()
            .expect("checksum");
        let sum = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(sum.len(), 16, "replite ltx checksum printed {sum:?}");
        assert!(
            pos.ends_with(&sum),
            "seed {seed} {journal_mode}: position {pos} but the database checksums to {sum} ({} acked)",
            acked.len()
        );
    }
}

#[test]
fn kill_9_in_delete_mode_loses_no_acknowledged_transaction() {
    crash_and_recover("delete");
}

#[test]
fn kill_9_in_truncate_mode_loses_no_acknowledged_transaction() {
    crash_and_recover("truncate");
}

#[test]
fn kill_9_in_persist_mode_loses_no_acknowledged_transaction() {
    crash_and_recover("persist");
}

#[test]
fn kill_9_in_wal_mode_loses_no_acknowledged_transaction() {
    crash_and_recover("wal");
}

#[test]
fn kill_9_in_wal_mode_with_synchronous_normal_loses_no_acknowledged_transaction() {
    crash_and_recover_with("wal", "NORMAL");
}

/// A power loss imitated after kill -9: the newest LTX file, which was made durable only
/// through the commit log (decision 0016), is taken from the disk. The restarted node writes
/// it back from the log and is primary again at the same position, with every row.
fn newest_ltx_file_lost_after_a_crash_comes_back_from_the_commit_log(journal_mode: &str) {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut node, conn) = solo_primary(root.path(), journal_mode);
    conn.pragma_update(None, "synchronous", "FULL").expect("synchronous");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    for i in 0..50i64 {
        conn.execute("INSERT INTO t (id, v) VALUES (?1, randomblob(300))", [i]).expect("insert");
    }
    drop(conn);
    let before = node.pos("app.db").expect("position");
    node.kill();

    let ltx_dir = node.dir.join("data/dbs/app.db/ltx");
    let mut names: Vec<String> = std::fs::read_dir(&ltx_dir)
        .expect("ltx dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ltx"))
        .collect();
    names.sort();
    let newest = ltx_dir.join(names.last().expect("an LTX file"));
    let bytes = std::fs::read(&newest).expect("read the newest file");
    std::fs::remove_file(&newest).expect("lose it");

    node.start();
    node.wait_for("primary again", |i| i["role"] == "primary");
    assert_eq!(std::fs::read(&newest).expect("the file is back"), bytes, "{journal_mode}");
    assert_eq!(node.pos("app.db").expect("position"), before, "{journal_mode}");
    assert!(node.log_text().contains("restored LTX files"), "{journal_mode}: no restore logged");
    assert_whole_with_rows(&node, 50, journal_mode);
    node.stop();
}

/// `app.db` on `node` passes `PRAGMA integrity_check` and its table `t` has `rows` rows.
fn assert_whole_with_rows(node: &Node, rows: i64, what: &str) {
    let conn = Connection::open(node.db_path("app.db")).expect("reopen");
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity");
    assert_eq!(ok, "ok", "{what}");
    let found: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
    assert_eq!(found, rows, "{what}");
}

#[test]
fn a_durable_commit_whose_file_a_crash_lost_comes_back_from_the_commit_log_in_delete_mode() {
    newest_ltx_file_lost_after_a_crash_comes_back_from_the_commit_log("delete");
}

#[test]
fn a_flushed_commit_whose_file_a_crash_lost_comes_back_from_the_commit_log_in_wal_mode() {
    newest_ltx_file_lost_after_a_crash_comes_back_from_the_commit_log("wal");
}

/// A power loss imitated after kill -9 in WAL/FULL mode (decision 0017): the WAL's fsyncs were
/// answered from the LTX history without syncing the WAL, so a power loss may take any frame
/// written since the WAL was last synced (here, with checkpoints off, since its header). The
/// restarted node folds what is left of the WAL and replays the LTX files past it: every
/// acknowledged row is there.
#[test]
fn a_wal_tail_a_power_loss_took_is_replayed_from_the_ltx_history() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut node, conn) = solo_primary(root.path(), "wal");
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)",
    )
    .expect("create");
    for i in 0..50i64 {
        conn.execute("INSERT INTO t (id, v) VALUES (?1, randomblob(300))", [i]).expect("insert");
    }
    let before = node.pos("app.db").expect("position");
    // Killed with the connection open: closing it would checkpoint and delete the WAL.
    node.kill();
    drop(conn);

    let wal = node.dir.join("data/dbs/app.db/wal");
    let frames = (std::fs::metadata(&wal).expect("the WAL outlived the crash").len() - 32) / 4120;
    assert!(frames > 10, "{frames} frames");
    let file = std::fs::OpenOptions::new().write(true).open(&wal).expect("open the WAL");
    file.set_len(32 + 3 * 4120 + 1000).expect("lose the WAL's tail, tearing a frame");
    drop(file);

    node.start();
    node.wait_for("primary again", |i| i["role"] == "primary");
    assert_eq!(node.pos("app.db").expect("position"), before);
    assert_whole_with_rows(&node, 50, "after the WAL lost all but 3 frames and a torn one");
    node.stop();
}

/// SQLite's journal record checksum: the nonce plus every 200th byte of the page, from the end.
fn journal_record_checksum(nonce: u32, page: &[u8]) -> u32 {
    let mut sum = nonce;
    let mut i = page.len() - 200;
    while i > 0 {
        sum = sum.wrapping_add(u32::from(page[i]));
        i = i.saturating_sub(200);
    }
    sum
}

/// Decision 0018: a power loss imitated after kill -9 in DELETE mode. The last commit's
/// journal was kept with its header zeroed; here the zeroing "did not reach the disk": the
/// header SQLite wrote is put back (rebuilt from the records it heads), so the journal is hot
/// again. The start rolls the commit back and the Node replays it from its LTX file: same
/// position, same rows, the last update included.
#[test]
fn a_kept_journal_whose_zeroing_a_power_loss_took_is_rolled_back_and_the_commit_replayed() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut node, conn) = solo_primary(root.path(), "delete");
    conn.execute_batch("PRAGMA synchronous=FULL; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").expect("create");
    for i in 0..50i64 {
        conn.execute("INSERT INTO t (id, v) VALUES (?1, randomblob(300))", [i]).expect("insert");
    }
    conn.execute("UPDATE t SET v = randomblob(300) WHERE id = 7", []).expect("the last commit");
    let last: Vec<u8> = conn.query_row("SELECT v FROM t WHERE id = 7", [], |r| r.get(0)).expect("read");
    let before = node.pos("app.db").expect("position");
    node.kill();
    drop(conn);

    let page = 4096usize;
    let journal_path = node.dir.join("data/dbs/app.db/journal");
    let mut journal = std::fs::read(&journal_path).expect("the journal was kept");
    assert!(journal[..28].iter().all(|&b| b == 0), "its header was zeroed");
    // The records start one sector in; the first one's checksum gives the nonce, and the
    // records that verify with it are this transaction's (a stale tail would not).
    let sector = [512usize, 1024, 2048, 4096]
        .into_iter()
        .find(|&s| {
            journal.len() >= s + page + 8
                && (1..=64).contains(&u32::from_be_bytes(journal[s..s + 4].try_into().unwrap()))
        })
        .expect("a first record at a sector boundary");
    let record = |i: usize| {
        let at = sector + i * (page + 8);
        journal.get(at..at + page + 8)
    };
    let first = record(0).expect("a record");
    let nonce = u32::from_be_bytes(first[4 + page..].try_into().unwrap())
        .wrapping_sub(journal_record_checksum(0, &first[4..4 + page]));
    let nrec = (0..)
        .take_while(|&i| {
            record(i).is_some_and(|r| {
                u32::from_be_bytes(r[4 + page..].try_into().unwrap()) == journal_record_checksum(nonce, &r[4..4 + page])
            })
        })
        .count();
    assert!(nrec >= 1, "the last commit journaled its page");
    let db_pages = std::fs::metadata(node.dir.join("data/dbs/app.db/database")).expect("database").len() / page as u64;
    let mut header = Vec::new();
    header.extend_from_slice(&[0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7]);
    for field in [nrec as u32, nonce, db_pages as u32, sector as u32, page as u32] {
        header.extend_from_slice(&field.to_be_bytes());
    }
    journal[..28].copy_from_slice(&header);
    std::fs::write(&journal_path, &journal).expect("the zeroing is lost");

    node.start();
    node.wait_for("primary again", |i| i["role"] == "primary");
    assert!(node.log_text().contains("rolled back a hot journal"), "the start rolled the journal back");
    assert_eq!(node.pos("app.db").expect("position"), before, "the commit was replayed");
    assert_whole_with_rows(&node, 50, "after the rollback and the replay");
    let conn = Connection::open(node.db_path("app.db")).expect("reopen");
    let now: Vec<u8> = conn.query_row("SELECT v FROM t WHERE id = 7", [], |r| r.get(0)).expect("read");
    assert_eq!(now, last, "the last update is there");
    drop(conn);
    node.stop();
}
