//! Whole daemons on hosts of their own (network namespaces this test makes, see
//! support/netns.rs), with real etcd: the primary's network is cut while it takes writes.
//! It must stop acknowledging writes before any other node becomes primary, another node
//! must take over within the lease's TTL, and once the link is back the old primary follows
//! the new one, with what it wrote alone replaced by the cluster's history. Asynchronous
//! replication loses the rows acknowledged after the cut (as LiteFS does); synchronous
//! replication loses none.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use support::cluster::{Lease, Node, WAIT, assert_refused_commit};
use support::etcd::EtcdServer;
use support::netns::Net;

/// What the writer on the cut-off primary saw.
struct Writes {
    /// Rows acknowledged, with when (wall clock, after the commit returned).
    ok: Vec<(u64, SystemTime)>,
    /// Rows refused.
    refused: Vec<u64>,
}

/// Autocommit inserts into `t` until `stop`, bounded in count and time.
fn write_until(conn: Connection, stop: Arc<AtomicBool>) -> Writes {
    let mut writes = Writes { ok: Vec::new(), refused: Vec::new() };
    let deadline = Instant::now() + WAIT;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && i < 1_000_000 {
        match conn.execute("INSERT INTO t (id, v) VALUES (?1, 'cut')", [i]) {
            Ok(_) => writes.ok.push((i, SystemTime::now())),
            Err(e) => {
                assert_refused_commit(&e);
                writes.refused.push(i);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        i += 1;
    }
    writes
}

/// When the log says this node became primary (the last time).
fn became_primary_at(node: &Node) -> Option<SystemTime> {
    let log = node.log_text();
    let line = log.lines().rfind(|l| l.contains("BecamePrimary"))?;
    // Tests' nodes log with timestamps (`log.timestamp`), and without colours (not a tty).
    let stamp = line.split_whitespace().next()?;
    let ts: jiff::Timestamp = stamp.parse().ok()?;
    let nanos = u64::try_from(ts.as_nanosecond()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

fn rows(conn: &Connection) -> Vec<i64> {
    let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").expect("prepare");
    stmt.query_map([], |r| r.get(0)).expect("query").map(|r| r.expect("row")).collect()
}

fn primary_among(nodes: &[Node], among: &[usize]) -> Option<usize> {
    among.iter().copied().find(|&i| nodes[i].role().as_deref() == Some("primary"))
}

#[test]
fn a_cut_off_primary_stops_writing_before_another_node_takes_over_and_rejoins_as_a_replica() {
    cut_off_primary(false);
}

#[test]
fn in_synchronous_mode_a_cut_off_primary_loses_no_acknowledged_write() {
    cut_off_primary(true);
}

/// Three daemons on hosts of their own, with etcd on the bridge, and which one is primary.
struct Cluster {
    nodes: Vec<Node>,
    first: usize,
    // Kept to the end of the test (bind them, `..` would drop them at once).
    _root: tempfile::TempDir,
    _etcd: EtcdServer,
    net: Net,
}

/// `None` when network namespaces cannot be made (not root).
fn start_cluster(synchronous: bool) -> Option<Cluster> {
    let net = Net::new(3)?;
    let etcd = EtcdServer::start_on(&net.store_ip());
    let root = tempfile::tempdir().expect("tempdir");
    let lease = Lease::Etcd { endpoint: etcd.endpoint.clone(), ttl: "3s" };
    let ids = [0xA1u64, 0xB2, 0xC3];
    let sync_yaml = support::cluster::sync_yaml(&ids);
    let extra = if synchronous { sync_yaml.as_str() } else { "" };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::new_with(root.path(), &format!("n{i}"), &lease, Some(ids[i]), extra)
                .in_netns(&net.netns(i), &net.host_ip(i))
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let deadline = Instant::now() + WAIT;
    let first = loop {
        if let Some(p) = primary_among(&nodes, &[0, 1, 2]) {
            break p;
        }
        assert!(Instant::now() < deadline, "no primary within {WAIT:?}\n{}", nodes[0].log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    Some(Cluster { nodes, first, _root: root, _etcd: etcd, net })
}

/// Waits (bounded) until one of `among` is primary; which, and how long it took from `since`.
fn new_primary(nodes: &[Node], among: &[usize], since: Instant) -> (usize, Duration) {
    loop {
        if let Some(p) = primary_among(nodes, among) {
            return (p, since.elapsed());
        }
        assert!(since.elapsed() < WAIT, "nobody took over within {WAIT:?}\n{}", nodes[among[0]].log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) until every node is at the same position of `db` as `nodes[primary]`.
fn converged(nodes: &[Node], primary: usize, db: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(want) = nodes[primary].pos(db)
            && nodes.iter().all(|n| n.pos(db).as_ref() == Some(&want))
        {
            return want;
        }
        let seen: Vec<_> = nodes.iter().map(|n| n.pos(db)).collect();
        assert!(Instant::now() < deadline, "never converged: {seen:?}\n{}", nodes[primary].log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every node holds `expected` rows and passes `integrity_check`.
fn same_rows_everywhere(nodes: &[Node], expected: &[i64], at: &str) {
    for (i, node) in nodes.iter().enumerate() {
        let conn = Connection::open(node.db_path("app.db")).expect("open");
        assert_eq!(rows(&conn), expected, "node {i} at {at} holds the new primary's rows");
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
        assert_eq!(check, "ok", "node {i}");
    }
}

/// Starts the writer on the primary; the table is created first.
fn start_writer(node: &Node) -> (Arc<AtomicBool>, std::thread::JoinHandle<Writes>) {
    let conn = support::cluster::open_on_primary(node, "app.db");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").expect("create");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || write_until(conn, stop))
    };
    (stop, writer)
}

/// The primary must have stopped acknowledging before `second`'s term began, and refused
/// every write after its last acknowledged one.
fn stopped_in_time(writes: &Writes, nodes: &[Node], second: usize) -> Duration {
    let (last_ok_id, last_ok) = *writes.ok.last().expect("the primary took writes before the cut");
    let taken_over = became_primary_at(&nodes[second]).expect("the new primary's log names the event");
    assert!(
        last_ok < taken_over,
        "the cut-off primary acknowledged a write at {last_ok:?}, after node {second} became primary at {taken_over:?}"
    );
    assert!(!writes.refused.is_empty(), "the cut-off primary refused writes once its lease ran out");
    assert!(writes.refused.iter().all(|&r| r > last_ok_id), "no write succeeded after one was refused");
    taken_over.duration_since(last_ok).unwrap_or_default()
}

/// What [`take_over_under_load`] saw.
struct Takeover {
    second: usize,
    took: Duration,
    writes: Writes,
    /// How long before the new primary's term the old one acknowledged its last write.
    margin: Duration,
}

/// Writes on `first`, then `cut`s it off somehow: another node must take over within the
/// TTL plus the lease poll and the safety margin (support/cluster.rs's etcd config), and the
/// old primary must have stopped acknowledging before that (writes go on 300 ms more, to see
/// them refused).
fn take_over_under_load(nodes: &[Node], first: usize, cut: impl FnOnce()) -> Takeover {
    let others: Vec<usize> = (0..nodes.len()).filter(|&i| i != first).collect();
    let (stop, writer) = start_writer(&nodes[first]);
    std::thread::sleep(Duration::from_millis(500));
    let cut_at = Instant::now();
    cut();
    let (second, took) = new_primary(nodes, &others, cut_at);
    assert!(took < Duration::from_secs(6), "the takeover took {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer");
    let margin = stopped_in_time(&writes, nodes, second);
    Takeover { second, took, writes, margin }
}

fn cut_off_primary(synchronous: bool) {
    let Some(Cluster { mut nodes, first, net, _root, _etcd }) = start_cluster(synchronous) else { return };
    let takeover = take_over_under_load(&nodes, first, || net.cut(first));
    net.heal(first);
    rejoined_under_the_new_primary(&nodes, first, &takeover, synchronous);
    for n in &mut nodes {
        n.stop();
    }
}

/// After the network is whole again: the old primary comes back as the new primary's replica,
/// the new primary takes writes (in synchronous mode only once every candidate, the old
/// primary too, acknowledges), every node ends with the new primary's rows, and of what the
/// old primary acknowledged, synchronous mode kept all and asynchronous mode a prefix.
fn rejoined_under_the_new_primary(nodes: &[Node], first: usize, takeover: &Takeover, synchronous: bool) {
    let Takeover { second, took, ref writes, margin } = *takeover;
    let on_second = Connection::open(nodes[second].db_path("app.db")).expect("open on the new primary");
    on_second.execute("INSERT INTO t (id, v) VALUES (-1, 'after')", []).expect("the new primary writes");
    let want = converged(nodes, second, "app.db");
    assert_eq!(nodes[first].role().as_deref(), Some("replica"), "the old primary follows");
    let expected = rows(&on_second);
    assert!(expected.contains(&-1));
    same_rows_everywhere(nodes, &expected, &want);
    let kept: Vec<i64> = expected.iter().copied().filter(|&id| id >= 0).collect();
    let acked: Vec<i64> = writes.ok.iter().map(|w| i64::try_from(w.0).expect("small")).collect();
    if synchronous {
        let lost: Vec<&i64> = acked.iter().filter(|id| !kept.contains(id)).collect();
        let extra: Vec<&i64> = kept.iter().filter(|id| !acked.contains(id)).collect();
        assert!(lost.is_empty(), "every acknowledged row survives: lost {lost:?}");
        // The commit in flight at the cut waited for acknowledgements that could not come
        // back, and failed when the lease ran out; a replica that had received it may keep it
        // (its outcome was unknown). Nothing the application never attempted, or attempted
        // later, survives.
        let in_flight = writes.refused.first().map(|&id| i64::try_from(id).expect("small"));
        assert!(
            extra.iter().all(|&&id| Some(id) == in_flight),
            "only the commit in flight at the cut may survive unacknowledged: {extra:?}, in flight {in_flight:?}"
        );
    } else {
        // Rows the old primary acknowledged but never sent are gone; the new primary kept a
        // prefix of the old one's acknowledged rows, nothing else of it.
        assert!(acked.starts_with(&kept), "kept rows are a prefix of the acknowledged ones");
    }
    eprintln!(
        "takeover {took:?} after the cut; the cut-off primary acknowledged {} rows ({} kept by the cluster), \
         refused {}; its last acknowledgement came {margin:?} before the new primary's term",
        acked.len(),
        kept.len(),
        writes.refused.len(),
    );
}

#[test]
fn a_partition_that_splits_the_candidates_leaves_the_side_with_etcd_in_charge() {
    split_candidates(false);
}

#[test]
fn in_synchronous_mode_a_partition_that_splits_the_candidates_loses_no_acknowledged_write() {
    split_candidates(true);
}

/// The primary and one replica on one side, the other replica and etcd on the other: only the
/// lone replica can be elected, the primary (which still reaches a replica) must stop before
/// it is, and once the network is whole the two follow it. The replica that stayed with the
/// old primary may have received writes the new primary never saw (asynchronous mode): it
/// must end with the new primary's history, not its own.
fn split_candidates(synchronous: bool) {
    let Some(Cluster { mut nodes, first, net, _root, _etcd }) = start_cluster(synchronous) else { return };
    let (with_first, across) = ((first + 1) % 3, (first + 2) % 3);
    let store = net.store_ip();
    let routes = [
        (first, store.clone()),
        (first, net.host_ip(across)),
        (with_first, store.clone()),
        (with_first, net.host_ip(across)),
        (across, net.host_ip(first)),
        (across, net.host_ip(with_first)),
    ];
    let takeover = take_over_under_load(&nodes, first, || {
        for (i, addr) in &routes {
            net.block(*i, addr);
        }
    });
    assert_eq!(takeover.second, across, "only the side that reaches etcd can elect");
    for (i, addr) in &routes {
        net.unblock(*i, addr);
    }
    rejoined_under_the_new_primary(&nodes, first, &takeover, synchronous);
    if !synchronous {
        // Both went on past what the new primary received: their own history was replaced.
        for i in [first, with_first] {
            assert!(nodes[i].log_text().contains("SnapshotReplaced"), "node {i}:\n{}", nodes[i].log_text());
        }
    }
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_primary_cut_off_from_etcd_alone_steps_down_and_its_replicas_follow_the_new_one() {
    let Some(Cluster { mut nodes, first, net, _root, _etcd }) = start_cluster(false) else { return };
    let others: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    // The primary still reaches its replicas, and they it, but not the lease store.
    let Takeover { second, took, writes, margin } =
        take_over_under_load(&nodes, first, || net.block(first, &net.store_ip()));

    // The third node follows the new primary, not the deposed one it can still reach.
    let third = others.iter().copied().find(|&i| i != second).expect("three nodes");
    let on_second = Connection::open(nodes[second].db_path("app.db")).expect("open on the new primary");
    on_second.execute("INSERT INTO t (id, v) VALUES (-1, 'after')", []).expect("the new primary writes");
    let second_id = nodes[second].info().expect("info")["nodeId"].clone();
    let deadline = Instant::now() + WAIT;
    loop {
        let info = nodes[third].info().expect("the third node answers");
        let at_primary = nodes[second].pos("app.db");
        if info["primary"]["nodeId"] == second_id && info["databases"][0]["pos"].as_str() == at_primary.as_deref() {
            break;
        }
        assert!(Instant::now() < deadline, "node {third} never followed node {second}: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Back in touch with etcd, the old primary follows too.
    net.unblock(first, &net.store_ip());
    let want = converged(&nodes, second, "app.db");
    assert_eq!(nodes[first].role().as_deref(), Some("replica"), "the old primary follows");
    let expected = rows(&on_second);
    same_rows_everywhere(&nodes, &expected, &want);
    let kept: Vec<i64> = expected.iter().copied().filter(|&id| id >= 0).collect();
    let acked: Vec<i64> = writes.ok.iter().map(|w| i64::try_from(w.0).expect("small")).collect();
    assert!(acked.starts_with(&kept), "kept rows are a prefix of the acknowledged ones");
    eprintln!(
        "takeover {took:?} after the cut; the deposed primary acknowledged {} rows ({} kept), its last \
         {margin:?} before the new primary's term",
        acked.len(),
        kept.len()
    );
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn a_replica_cut_off_from_its_primary_alone_stays_a_replica_and_catches_up() {
    let Some(Cluster { mut nodes, first, net, _root, _etcd }) = start_cluster(false) else { return };
    let replica = (first + 1) % 3;
    let conn = support::cluster::open_on_primary(&nodes[first], "app.db");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").expect("create");
    converged(&nodes, first, "app.db");

    // Both still reach etcd and the third node; only the link between them is gone.
    let (primary_ip, replica_ip) = (net.host_ip(first), net.host_ip(replica));
    net.block(replica, &primary_ip);
    net.block(first, &replica_ip);
    for i in 0..200 {
        conn.execute("INSERT INTO t (id, v) VALUES (?1, 'during')", [i]).expect("the primary keeps writing");
    }
    let want = nodes[first].pos("app.db").expect("primary position");
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        // Longer than the lease TTL: the cut-off replica must neither take the lease nor move.
        let info = nodes[replica].info().expect("the replica answers");
        assert_eq!(info["role"], "replica", "node {replica} left its primary: {info}");
        assert_ne!(nodes[replica].pos("app.db").as_deref(), Some(want.as_str()), "nothing reached the cut-off replica");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(nodes[first].role().as_deref(), Some("primary"), "the primary kept its lease");

    net.unblock(replica, &primary_ip);
    net.unblock(first, &replica_ip);
    let at = converged(&nodes, first, "app.db");
    assert_eq!(at, want);
    same_rows_everywhere(&nodes, &rows(&conn), &at);
    drop(conn);
    for n in &mut nodes {
        n.stop();
    }
}

#[test]
fn while_nobody_reaches_etcd_nobody_takes_writes_and_they_resume_after() {
    let Some(Cluster { mut nodes, first, net, _root, _etcd }) = start_cluster(false) else { return };
    let (stop, writer) = start_writer(&nodes[first]);
    std::thread::sleep(Duration::from_millis(500));

    // The lease store goes away for everyone: no node can prove it alone may write.
    let cut_at = Instant::now();
    for i in 0..3 {
        net.block(i, &net.store_ip());
    }
    std::thread::sleep(Duration::from_secs(5));
    for (i, node) in nodes.iter().enumerate() {
        let role = node.role();
        assert_ne!(role.as_deref(), Some("primary"), "node {i} still primary 5 s into the outage");
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer");
    let (last_ok_id, last_ok) = *writes.ok.last().expect("writes before the outage");
    assert!(!writes.refused.is_empty(), "writes were refused during the outage");
    assert!(writes.refused.iter().all(|&r| r > last_ok_id), "no write succeeded after one was refused");
    let stopped_after = last_ok.duration_since(SystemTime::now() - cut_at.elapsed()).unwrap_or_default();
    // The lease runs 3 s from its last renewal; writes stop at its end minus the margin.
    assert!(stopped_after < Duration::from_secs(3), "writes went on {stopped_after:?} into the outage");

    // The store comes back: a primary is elected, writes resume, nothing acknowledged is lost.
    for i in 0..3 {
        net.unblock(i, &net.store_ip());
    }
    let (primary, took) = new_primary(&nodes, &[0, 1, 2], Instant::now());
    let conn = support::cluster::open_on_primary(&nodes[primary], "app.db");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn.execute("INSERT INTO t (id, v) VALUES (-1, 'after')", []).expect("writes resume");
    let want = converged(&nodes, primary, "app.db");
    let expected = rows(&conn);
    same_rows_everywhere(&nodes, &expected, &want);
    let kept: Vec<i64> = expected.iter().copied().filter(|&id| id >= 0).collect();
    let acked: Vec<i64> = writes.ok.iter().map(|w| i64::try_from(w.0).expect("small")).collect();
    assert_eq!(kept, acked, "replication went on through the outage: every acknowledged row is kept");
    eprintln!(
        "writes stopped {stopped_after:?} into the outage ({} acknowledged, {} refused); a primary {took:?} after etcd came back",
        acked.len(),
        writes.refused.len()
    );
    drop(conn);
    for n in &mut nodes {
        n.stop();
    }
}
