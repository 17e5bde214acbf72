//! `replite dev`, the README's first command: a local cluster comes up, says where to point
//! sqlite3, replicates a write from node 1 to the others, and stops by itself with
//! `--exit-after`, leaving no mount behind.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::WAIT;

#[test]
fn the_dev_cluster_comes_up_replicates_and_stops_by_itself() {
    let root = tempfile::tempdir().expect("tempdir");
    // Node N listens on PORT + N - 1, and etcd (not used with --static) would take PORT + 100.
    let port = support::cluster::free_consecutive_ports(3);
    let log = root.path().join("dev.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_replite"))
        .args(["dev", "--static", "--nodes", "3", "--exit-after", "8", "--port", &port.to_string(), "--dir"])
        .arg(root.path().join("cluster"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start replite dev");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + WAIT;
    let mut mounts = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(rest) =
            line.trim().strip_prefix("node1: sqlite3 ").or_else(|| line.trim().strip_prefix("node2: sqlite3 "))
        {
            mounts.push(rest.split_whitespace().next().expect("path").to_owned());
        }
        if mounts.len() == 2 || Instant::now() > deadline {
            break;
        }
    }
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(mounts.len(), 2, "dev printed where to point sqlite3; its log:\n{}", stderr());
    let primary = rusqlite::Connection::open(&mounts[0]).expect("open node1");
    primary.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);").expect("write on node1");
    drop(primary);
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = rusqlite::Connection::open_with_flags(&mounts[1], rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0)));
        if seen.as_ref().is_ok_and(|&x| x == 42) {
            break;
        }
        assert!(Instant::now() < deadline, "node2 never saw the write: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The live view keeps printing until --exit-after; then everything stops and unmounts.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.starts_with("NODE")), "live view printed");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let mounts_now = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts_now.contains(root.path().to_str().expect("utf-8")), "a mount was left behind");
}
