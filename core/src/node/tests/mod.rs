//! Unit tests of the Node's decisions, one input at a time.

use std::collections::BTreeMap;

use super::*;
use crate::ltx::{self, DatabaseChecksum, Encoder, Header, page_checksum};
use crate::stream::{DbName, Extensions, Frame, encode_frame, encode_ltx_message, encode_pos_map};
use crate::types::{Checksum, PageSize, Pgno, TxId};

const PAGE: u32 = 512;

pub(super) fn db() -> DbName {
    DbName::new("t.db").expect("valid")
}

pub(super) fn config(id: u64) -> Config {
    let mut c = Config::new(NodeId(id));
    c.candidates = [NodeId(1), NodeId(2)].into_iter().collect();
    c
}

pub(super) fn drain(node: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

pub(super) fn started(cfg: Config, recovery: Recovery) -> (Node, Vec<Output>) {
    let mut node = Node::new(cfg).expect("valid config");
    node.handle(Millis(0), Input::Start(recovery));
    let out = drain(&mut node);
    (node, out)
}

/// Starts a node and makes it primary at time 0; returns it with its epoch.
fn primary(cfg: Config) -> Node {
    let (mut node, _) = started(cfg, Recovery::default());
    node.handle(Millis(0), Input::Timeout);
    let op = drain(&mut node)
        .into_iter()
        .find_map(|o| match o {
            Output::AcquireLease { op } => Some(op),
            _ => None,
        })
        .expect("a candidate with no known primary asks for the lease");
    node.handle(Millis(5), Input::LeaseAcquired { op, epoch: Epoch(7), lease_id: "session-7".into() });
    drain(&mut node);
    assert_eq!(node.role(), Role::Primary { epoch: Epoch(7) });
    node
}

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE as usize]
}

fn change(pgno: u32, old: Option<&[u8]>, fill: u8) -> PageChange {
    PageChange { pgno: Pgno(pgno), old: old.map(|o| page_checksum(Pgno(pgno), o)), data: page(fill) }
}

fn commit(node: &mut Node, now: u64, id: u64, pages: Vec<PageChange>, commit_pages: u32) -> Vec<Output> {
    let page_size = PageSize::new(PAGE).expect("valid");
    node.handle(
        Millis(now),
        Input::Commit {
            commit: CommitId(id),
            db: db(),
            page_size,
            pages,
            commit_pages,
            removed: Vec::new(),
            durability: Durability::Requested,
            remote: None,
        },
    );
    drain(node)
}

fn flush_op(out: &[Output]) -> Option<(OpId, TxId)> {
    out.iter().find_map(|o| match o {
        Output::FlushLtx { op, through, .. } => Some((*op, *through)),
        _ => None,
    })
}

/// Answers the flush request in `out` (which must hold one) as done.
fn flushed(node: &mut Node, now: u64, out: &[Output]) -> Vec<Output> {
    let (op, _) = flush_op(out).expect("a flush request");
    node.handle(Millis(now), Input::LtxFlushed { op, result: Ok(()) });
    drain(node)
}

/// Runs the node's timers until the flush timer asks for a flush; returns those outputs.
fn flush_timer(node: &mut Node) -> Vec<Output> {
    for _ in 0..8 {
        let Some((at, kind)) = node.poll_timeout() else { break };
        node.handle(at, Input::Timeout);
        let out = drain(node);
        if kind == TimerKind::Flush {
            return out;
        }
    }
    panic!("no flush timer");
}

pub(super) fn persisted(out: &[Output]) -> (OpId, TxId, Vec<u8>) {
    out.iter()
        .find_map(|o| match o {
            Output::PersistLtx { op, min, bytes, .. } => Some((*op, *min, bytes.clone())),
            _ => None,
        })
        .expect("a persist request")
}

/// Commits twice on a fresh primary, finishing both; returns the node, the files and the db.
pub(super) fn primary_with_two_commits() -> (Node, Vec<Vec<u8>>, Vec<u8>) {
    primary_with_two_commits_in(config(1))
}

#[test]
fn a_replica_with_many_files_waiting_asks_for_no_more_stream_bytes_until_it_catches_up() {
    let mut primary_node = primary(config(1));
    let mut files = Vec::new();
    for i in 0..70u32 {
        let out = commit(&mut primary_node, 10 + u64::from(i), u64::from(i), vec![change(i + 1, None, 1)], i + 1);
        let (op, _, bytes) = persisted(&out);
        let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
        primary_node.handle(Millis(11 + u64::from(i)), Input::LtxDone { op, result: Ok(pos) });
        drain(&mut primary_node);
        files.push(bytes);
    }
    let (mut node, conn) = connected_replica();
    assert!(node.accepts_upstream_data());
    // One network read holding every file: the first is persisted, the rest wait.
    let mut bytes = ltx_message(&files[0]);
    for file in &files[1..] {
        encode_ltx_message(&db(), file, TxId(0), &mut bytes);
    }
    node.handle(Millis(100), Input::UpstreamData { conn, bytes });
    let mut out = drain(&mut node);
    assert!(!node.accepts_upstream_data(), "69 files wait");
    // The primary is silent because this replica paused: while a file is being applied, the
    // idle timer does not call that a dead primary.
    let idle_at = Millis(100 + config(2).upstream_idle_ms);
    node.handle(idle_at, Input::Timeout);
    let idle = drain(&mut node);
    assert!(!idle.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))), "{idle:?}");
    for (now, file) in (idle_at.0 + 1..).zip(files.iter()) {
        let (op, _, persisted_bytes) = persisted(&out);
        assert_eq!(&persisted_bytes, file, "files are persisted in order");
        let pos = ltx::verify(file.as_slice()).expect("valid").post_apply_pos();
        node.handle(Millis(now), Input::LtxDone { op, result: Ok(pos) });
        out = drain(&mut node);
        assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))), "{out:?}");
        // After TXID t, file t + 1 is being persisted and 69 - t wait.
        if node.pos(&db()).txid.0 >= 6 {
            assert!(node.accepts_upstream_data(), "fewer than 64 wait after TXID {}", node.pos(&db()).txid);
        } else {
            assert!(!node.accepts_upstream_data(), "still 64 or more wait after TXID {}", node.pos(&db()).txid);
        }
    }
    assert_eq!(node.pos(&db()).txid, TxId(70));
}

fn primary_with_two_commits_in(cfg: Config) -> (Node, Vec<Vec<u8>>, Vec<u8>) {
    let mut node = primary(cfg);
    let mut files = Vec::new();
    let mut file_db: Vec<u8> = Vec::new();
    let first = commit(&mut node, 10, 1, vec![change(1, None, 1), change(2, None, 2)], 2);
    let (op, _, bytes) = persisted(&first);
    let pos = ltx::apply(&mut file_db, Checksum::ZERO, bytes.as_slice()).expect("first file applies");
    node.handle(Millis(11), Input::LtxDone { op, result: Ok(pos) });
    drain(&mut node);
    files.push(bytes);
    let old2 = page(2);
    let second = commit(&mut node, 20, 2, vec![change(2, Some(&old2), 9)], 2);
    let (op, _, bytes) = persisted(&second);
    let pos2 = ltx::apply(&mut file_db, pos.checksum, bytes.as_slice()).expect("second file applies");
    node.handle(Millis(21), Input::LtxDone { op, result: Ok(pos2) });
    drain(&mut node);
    files.push(bytes);
    (node, files, file_db)
}

#[test]
fn a_candidate_with_no_primary_acquires_the_lease_and_becomes_primary() {
    let node = primary(config(1));
    assert_eq!(node.max_epoch(), Epoch(7));
    assert_eq!(node.accepting_writes(Millis(10)), Some(Epoch(7)));
}

#[test]
fn the_first_commit_is_txid_1_and_is_acknowledged_only_after_it_is_durable() {
    let mut node = primary(config(1));
    let out = commit(&mut node, 10, 42, vec![change(1, None, 1), change(2, None, 2)], 2);
    assert!(!out.iter().any(|o| matches!(o, Output::AckCommit { .. })), "acknowledged before durable: {out:?}");
    let (op, min, bytes) = persisted(&out);
    assert_eq!(min, TxId(1));
    let verified = ltx::verify(bytes.as_slice()).expect("the node writes valid LTX");
    assert_eq!(verified.header().pre_apply_checksum, Checksum::ZERO);
    let mut expected = DatabaseChecksum::new(PageSize::new(PAGE).expect("valid"));
    expected.toggle_page(Pgno(1), &page(1));
    expected.toggle_page(Pgno(2), &page(2));
    assert_eq!(verified.post_apply_pos(), Pos::new(TxId(1), expected.value()));
    node.handle(Millis(11), Input::LtxDone { op, result: Ok(verified.post_apply_pos()) });
    let out = drain(&mut node);
    assert_eq!(out, vec![Output::AckCommit { db: db(), commit: CommitId(42), pos: verified.post_apply_pos() }]);
    assert_eq!(node.pos(&db()), verified.post_apply_pos());
}

#[test]
fn the_post_apply_checksum_is_derived_from_old_and_new_page_checksums() {
    let (node, _, file_db) = primary_with_two_commits();
    let whole = ltx::checksum_database(file_db.as_slice(), PageSize::new(PAGE).expect("valid")).expect("sums");
    assert_eq!(node.pos(&db()), Pos::new(TxId(2), whole));
}

#[test]
fn a_failed_persist_refuses_the_commit_and_keeps_the_position() {
    let mut node = primary(config(1));
    let out = commit(&mut node, 10, 1, vec![change(1, None, 1)], 1);
    let (op, _, _) = persisted(&out);
    node.handle(Millis(11), Input::LtxDone { op, result: Err(IoFailure::NoSpace) });
    let out = drain(&mut node);
    assert!(out.contains(&Output::RefuseCommit { commit: CommitId(1), reason: RefuseReason::NoSpace }), "{out:?}");
    assert_eq!(node.pos(&db()), Pos::ZERO);
    // The next commit, on a disk that failed otherwise, is refused as a disk failure.
    let out = commit(&mut node, 12, 2, vec![change(1, None, 1)], 1);
    let (op, _, _) = persisted(&out);
    node.handle(Millis(13), Input::LtxDone { op, result: Err(IoFailure::Io) });
    let out = drain(&mut node);
    assert!(out.contains(&Output::RefuseCommit { commit: CommitId(2), reason: RefuseReason::Disk }), "{out:?}");
    assert_eq!(node.pos(&db()), Pos::ZERO);
}

#[test]
fn commits_are_refused_once_the_lease_is_inside_its_safety_margin() {
    let mut node = primary(config(1));
    // Acquired by a request sent at 0: expiry 10 000, margin 1 000.
    let out = commit(&mut node, 8_999, 1, vec![change(1, None, 1)], 1);
    assert!(out.iter().any(|o| matches!(o, Output::PersistLtx { .. })));
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(8_999), Input::LtxDone { op, result: Ok(pos) });
    drain(&mut node);
    let out = commit(&mut node, 9_000, 2, vec![change(1, Some(&page(1)), 2)], 1);
    assert_eq!(out, vec![Output::RefuseCommit { commit: CommitId(2), reason: RefuseReason::NotPrimary }]);
}

#[test]
fn the_lease_is_renewed_and_a_renewal_extends_from_when_it_was_sent() {
    let mut node = primary(config(1));
    node.handle(Millis(3_000), Input::Timeout);
    let op = drain(&mut node)
        .into_iter()
        .find_map(|o| match o {
            Output::RenewLease { op, epoch: Epoch(7) } => Some(op),
            _ => None,
        })
        .expect("renews at the renew interval");
    node.handle(Millis(3_500), Input::LeaseRenewed { op });
    assert_eq!(node.accepting_writes(Millis(11_999)), Some(Epoch(7)));
    assert_eq!(node.accepting_writes(Millis(12_000)), None);
}

#[test]
fn a_primary_steps_down_when_its_lease_expires_unrenewed() {
    let mut node = primary(config(1));
    node.handle(Millis(10_000), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::SteppedDown { .. }))), "{out:?}");
    assert_eq!(node.role(), Role::Waiting);
}

#[test]
fn a_replica_refuses_commits() {
    let (mut node, _) = started(config(2), Recovery::default());
    node.handle(Millis(0), Input::LeaseObserved { op: OpId(999), holder: Some((NodeId(1), Epoch(3))) });
    drain(&mut node);
    assert_eq!(node.role(), Role::Replica { primary: NodeId(1), epoch: Epoch(3) });
    let out = commit(&mut node, 1, 1, vec![change(1, None, 1)], 1);
    assert_eq!(out, vec![Output::RefuseCommit { commit: CommitId(1), reason: RefuseReason::NotPrimary }]);
}

#[test]
fn a_node_never_follows_a_primary_older_than_one_it_has_seen() {
    let (mut node, _) = started(config(2), Recovery::default());
    node.handle(Millis(0), Input::LeaseObserved { op: OpId(900), holder: Some((NodeId(1), Epoch(5))) });
    node.handle(Millis(1), Input::LeaseObserved { op: OpId(901), holder: Some((NodeId(3), Epoch(4))) });
    assert_eq!(node.role(), Role::Replica { primary: NodeId(1), epoch: Epoch(5) });
    assert_eq!(node.max_epoch(), Epoch(5));
}

/// A replica connected to primary 1 with every extension.
fn connected_replica() -> (Node, UpstreamId) {
    connected_replica_with(config(2))
}

/// [`connected_replica`] with its own configuration.
pub(super) fn connected_replica_with(cfg: Config) -> (Node, UpstreamId) {
    let (mut node, _) = started(cfg, Recovery::default());
    node.handle(Millis(0), Input::LeaseObserved { op: OpId(900), holder: Some((NodeId(1), Epoch(5))) });
    let conn = drain(&mut node)
        .into_iter()
        .find_map(|o| match o {
            Output::Connect { conn, peer: NodeId(1), body, .. } => {
                // A node that holds no database yet asks for everything.
                assert_eq!(body, encode_pos_map(&BTreeMap::new()));
                Some(conn)
            }
            _ => None,
        })
        .expect("connects to the primary it observed");
    node.handle(Millis(1), Input::UpstreamOpened { conn, ext: Extensions::ALL });
    (node, conn)
}

/// A connected replica (asynchronous mode) that received and applied the two files of
/// [`primary_with_two_commits`]; the second is not durable yet.
pub(super) fn replica_with_two_applied() -> (Node, UpstreamId) {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica();
    for (i, file) in files.iter().enumerate() {
        node.handle(Millis(2 + i as u64), Input::UpstreamData { conn, bytes: ltx_message(file) });
        let (op, _, _) = persisted(&drain(&mut node));
        let pos = ltx::verify(file.as_slice()).expect("valid").post_apply_pos();
        node.handle(Millis(3 + i as u64), Input::LtxDone { op, result: Ok(pos) });
        drain(&mut node);
    }
    (node, conn)
}

pub(super) fn ltx_message(file: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_frame(&Frame::Epoch { epoch: Epoch(5), node_id: NodeId(1) }, &mut bytes);
    encode_ltx_message(&db(), file, TxId(0), &mut bytes);
    bytes
}

#[test]
fn a_replica_rejects_an_ltx_that_does_not_extend_its_position_and_resyncs() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica();
    node.handle(Millis(2), Input::UpstreamData { conn, bytes: ltx_message(&files[1]) });
    let out = drain(&mut node);
    assert!(!out.iter().any(|o| matches!(o, Output::PersistLtx { .. })), "{out:?}");
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))));
    assert!(out.contains(&Output::CloseUpstream { conn }));
}

#[test]
fn a_replica_applies_a_snapshot_then_the_next_file_and_acknowledges_each() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica();
    for (i, file) in files.iter().enumerate() {
        node.handle(Millis(2 + i as u64), Input::UpstreamData { conn, bytes: ltx_message(file) });
        let out = drain(&mut node);
        let (op, _, _) = persisted(&out);
        let pos = ltx::verify(file.as_slice()).expect("valid").post_apply_pos();
        node.handle(Millis(3 + i as u64), Input::LtxDone { op, result: Ok(pos) });
        let mut out = drain(&mut node);
        if i > 0 {
            // Applied before durable (asynchronous mode): acknowledged once the flush timer's
            // flush is done.
            assert_eq!(node.pos(&db()), pos);
            assert!(!out.iter().any(|o| matches!(o, Output::SendUpstream { .. })), "{out:?}");
            let flush = flush_timer(&mut node);
            out = flushed(&mut node, 40 + i as u64, &flush);
        }
        let mut ack = Vec::new();
        encode_frame(&Frame::Ack { pos, name: db() }, &mut ack);
        assert!(out.contains(&Output::SendUpstream { conn, bytes: ack }), "{out:?}");
        assert_eq!(node.pos(&db()), pos);
    }
}

fn open_downstream(node: &mut Node, conn: u64, pos: Pos) -> Vec<Output> {
    let mut map = BTreeMap::new();
    map.insert(db(), pos);
    node.handle(
        Millis(30),
        Input::DownstreamOpened {
            only: None,
            conn: DownstreamId(conn),
            peer: NodeId(2),
            ext: Extensions::ALL,
            body: encode_pos_map(&map),
        },
    );
    drain(node).into_iter().filter(|o| matches!(o, Output::StreamLtx { .. } | Output::StreamSnapshot { .. })).collect()
}

#[test]
fn a_primary_sends_the_next_file_or_a_snapshot_by_the_replicas_position() {
    let (mut node, files, _) = primary_with_two_commits();
    let p1 = ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos();
    let p2 = node.pos(&db());
    let c = DownstreamId;
    // While the history still starts at TXID 1, its first file is the snapshot.
    let from_history = |conn| {
        vec![
            Output::StreamLtx { db: db(), conn: c(conn), min: TxId(1), max: TxId(1) },
            Output::StreamLtx { db: db(), conn: c(conn), min: TxId(2), max: TxId(2) },
        ]
    };
    assert_eq!(open_downstream(&mut node, 1, Pos::ZERO), from_history(1));
    assert_eq!(
        open_downstream(&mut node, 2, p1),
        vec![Output::StreamLtx { db: db(), conn: c(2), min: TxId(2), max: TxId(2) }]
    );
    assert_eq!(open_downstream(&mut node, 3, p2), vec![]);
    let diverged = Pos::new(TxId(2), Checksum(p2.checksum.0 ^ 1));
    assert_eq!(open_downstream(&mut node, 4, diverged), from_history(4));
    let ahead = Pos::new(TxId(3), p2.checksum);
    assert_eq!(open_downstream(&mut node, 5, ahead), from_history(5));
    let off_lineage = Pos::new(TxId(1), Checksum(p1.checksum.0 ^ 1));
    assert_eq!(open_downstream(&mut node, 6, off_lineage), from_history(6));
}

#[test]
fn once_retention_dropped_the_first_file_a_new_replica_gets_a_copy_of_the_database() {
    let (mut node, _, _) = primary_with_two_commits();
    let p2 = node.pos(&db());
    // Retention by size drops the oldest file but never the newest.
    node.cfg.retention_bytes = 0;
    node.cfg.retention_ms = 0;
    node.handle(Millis(3_000), Input::Timeout);
    drain(&mut node);
    assert_eq!(node.history(&db()).and_then(|h| h.first()).map(|f| f.min), Some(TxId(2)));
    assert_eq!(
        open_downstream(&mut node, 1, Pos::ZERO),
        vec![Output::StreamSnapshot { db: db(), conn: DownstreamId(1), pos: p2 }]
    );
}

/// What a primary sent on stream `conn` and reported, from outputs.
fn copies_and_reports(out: Vec<Output>, conn: u64) -> (bool, Vec<Event>) {
    let copied = out.iter().any(|o| matches!(o, Output::StreamSnapshot { conn: c, .. } if *c == DownstreamId(conn)));
    let events = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(e @ (Event::SnapshotRepeated { .. } | Event::SnapshotHeldOff { .. })) => Some(e),
            _ => None,
        })
        .collect();
    (copied, events)
}

#[test]
fn a_replica_that_keeps_coming_back_without_its_copy_waits_longer_each_time_and_is_reported() {
    let (mut node, _, _) = primary_with_two_commits();
    node.cfg.retention_bytes = 0;
    node.cfg.retention_ms = 0;
    node.handle(Millis(3_000), Input::Timeout);
    drain(&mut node);
    let mut map = BTreeMap::new();
    map.insert(db(), Pos::ZERO);
    let open = |node: &mut Node, at: u64, conn: u64, body: Vec<u8>| {
        node.handle(
            Millis(at),
            Input::DownstreamOpened {
                only: None,
                conn: DownstreamId(conn),
                peer: NodeId(2),
                ext: Extensions::ALL,
                body,
            },
        );
        copies_and_reports(drain(node), conn)
    };
    let held = |failed, wait_ms| Event::SnapshotHeldOff { peer: NodeId(2), db: db(), failed, wait_ms };
    // The first copy, and the second after one failure, go at once.
    assert_eq!(open(&mut node, 3_001, 1, encode_pos_map(&map)), (true, vec![]));
    assert_eq!(open(&mut node, 3_002, 2, encode_pos_map(&map)), (true, vec![]));
    // A commit meanwhile (sent on the streams that got the copies) forgets nothing.
    let out = commit(&mut node, 3_050, 3, vec![change(2, Some(&page(9)), 10)], 2);
    let (op, _, bytes) = persisted(&out);
    let p3 = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(3_051), Input::LtxDone { op, result: Ok(p3) });
    drain(&mut node);
    // After two failed copies the third waits a second from the last one.
    assert_eq!(open(&mut node, 3_100, 3, encode_pos_map(&map)), (false, vec![held(2, 902)]));
    node.handle(Millis(3_500), Input::Timeout);
    assert_eq!(copies_and_reports(drain(&mut node), 3), (false, vec![]));
    assert_eq!(node.timers.get(crate::node::timer::TimerKind::CopyHoldOff), Some(Millis(4_002)));
    node.handle(Millis(4_002), Input::Timeout);
    let repeated = Event::SnapshotRepeated { peer: NodeId(2), db: db(), attempts: 3 };
    assert_eq!(copies_and_reports(drain(&mut node), 3), (true, vec![repeated]));
    // Each further failure doubles the wait.
    assert_eq!(open(&mut node, 4_010, 4, encode_pos_map(&map)), (false, vec![held(3, 1_992)]));
    node.handle(Millis(6_002), Input::Timeout);
    assert!(copies_and_reports(drain(&mut node), 4).0);
    // Once it comes back at the copy's position, the count starts again.
    map.insert(db(), p3);
    assert_eq!(open(&mut node, 6_100, 5, encode_pos_map(&map)), (false, vec![]));
    map.insert(db(), Pos::ZERO);
    assert_eq!(open(&mut node, 6_200, 6, encode_pos_map(&map)), (true, vec![]));
}

#[test]
fn a_synchronous_commit_waits_for_every_other_candidate_to_acknowledge() {
    let mut cfg = config(1);
    cfg.sync = Some(SyncConfig { timeout_ms: 1_000, policy: SyncPolicy::Block });
    let mut node = primary(cfg);
    open_downstream(&mut node, 1, Pos::ZERO);
    let out = commit(&mut node, 40, 1, vec![change(1, None, 1)], 1);
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(pos) });
    let out = drain(&mut node);
    // Streamed before it is durable here; the local flush overlaps the replicas' round trip.
    assert!(out.iter().any(|o| matches!(o, Output::StreamLtx { .. })), "{out:?}");
    let out = flushed(&mut node, 42, &out);
    assert!(!out.iter().any(|o| matches!(o, Output::AckCommit { .. })), "acknowledged without replicas: {out:?}");
    node.handle(Millis(1_100), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.contains(&Output::Event(Event::SyncStalled { db: db(), txid: TxId(1) })), "{out:?}");
    let mut ack = Vec::new();
    encode_frame(&Frame::Ack { pos, name: db() }, &mut ack);
    node.handle(Millis(1_200), Input::DownstreamData { conn: DownstreamId(1), bytes: ack });
    assert_eq!(drain(&mut node), vec![Output::AckCommit { db: db(), commit: CommitId(1), pos }]);
}

#[test]
fn a_degrading_synchronous_commit_is_acknowledged_at_the_timeout_with_an_event() {
    let mut cfg = config(1);
    cfg.sync = Some(SyncConfig { timeout_ms: 500, policy: SyncPolicy::Degrade });
    let mut node = primary(cfg);
    let out = commit(&mut node, 40, 1, vec![change(1, None, 1)], 1);
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(pos) });
    let out = drain(&mut node);
    flushed(&mut node, 42, &out);
    node.handle(Millis(541), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.contains(&Output::Event(Event::SyncDegraded { db: db(), txid: TxId(1) })));
    assert!(out.contains(&Output::AckCommit { db: db(), commit: CommitId(1), pos }));
}

#[test]
fn the_async_window_refuses_writes_while_a_candidate_lags_too_long() {
    let mut cfg = config(1);
    cfg.async_window_ms = Some(1_000);
    let mut node = primary(cfg);
    let out = commit(&mut node, 40, 1, vec![change(1, None, 1)], 1);
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(pos) });
    assert!(drain(&mut node).contains(&Output::AckCommit { db: db(), commit: CommitId(1), pos }));
    let out = commit(&mut node, 2_000, 2, vec![change(1, Some(&page(1)), 2)], 1);
    assert_eq!(out, vec![Output::RefuseCommit { commit: CommitId(2), reason: RefuseReason::AsyncWindow }]);
}

fn one_db(rec: DbRecovery) -> Recovery {
    Recovery { dbs: [(db(), rec)].into_iter().collect(), max_epoch: Epoch(0) }
}

fn info(file: &[u8]) -> LtxFileInfo {
    let v = ltx::verify(file).expect("valid");
    LtxFileInfo {
        min: v.header().min_txid,
        max: v.header().max_txid,
        pre: v.header().pre_apply_checksum,
        post: v.trailer().post_apply_checksum,
        size: v.size(),
    }
}

#[test]
fn recovery_replays_the_files_the_database_missed() {
    let (_, files, _) = primary_with_two_commits();
    let first = info(&files[0]);
    let second = info(&files[1]);
    let recovery = one_db(DbRecovery {
        ltx: vec![second, first],
        invalid_ltx: vec![],
        db_checksum: first.post,
        rejoin_txid: TxId::ZERO,
    });
    let (node, out) = started(config(2), recovery);
    assert!(
        out.contains(&Output::ReplayLtx { db: db(), op: OpId(2), min: TxId(2), max: TxId(2), base: first.post }),
        "{out:?}"
    );
    assert_eq!(node.role(), Role::Recovering);
}

#[test]
fn recovery_with_a_database_matching_no_file_waits_for_a_snapshot_and_never_acquires() {
    let (_, files, _) = primary_with_two_commits();
    let recovery = one_db(DbRecovery {
        ltx: vec![info(&files[1])],
        invalid_ltx: vec![(TxId(3), TxId(3))],
        db_checksum: Checksum(Checksum::FLAG | 12345),
        rejoin_txid: TxId::ZERO,
    });
    let (mut node, out) = started(config(1), recovery);
    assert!(out.contains(&Output::RemoveLtx { db: db(), min: TxId(3), max: TxId(3) }));
    assert!(out.contains(&Output::RemoveLtx { db: db(), min: TxId(2), max: TxId(2) }));
    assert_eq!(node.pos(&db()), Pos::ZERO);
    node.handle(Millis(0), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.iter().any(|o| matches!(o, Output::ObserveLease { .. })));
    assert!(!out.iter().any(|o| matches!(o, Output::AcquireLease { .. })), "{out:?}");
}

/// Fires the reconnect timer at `now`; the stream the replica opens.
fn reconnect_at(node: &mut Node, now: u64) -> UpstreamId {
    node.handle(Millis(now), Input::Timeout);
    drain(node)
        .into_iter()
        .find_map(|o| match o {
            Output::Connect { conn, .. } => Some(conn),
            _ => None,
        })
        .expect("reconnects when the wait ends")
}

/// A replica that keeps failing to store the snapshot it is sent (a full disk, say) waits
/// longer and longer before fetching it again, although each new stream's `Ready` frame
/// starts the stream backoff over; one file stored and applied ends the hold-off.
#[test]
fn a_replica_that_keeps_failing_to_store_a_file_waits_longer_each_time_and_success_resets_it() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, mut conn) = connected_replica();
    let mut now = 10;
    let mut ready = Vec::new();
    encode_frame(&Frame::Ready, &mut ready);
    let mut waits = Vec::new();
    for attempt in 0..5 {
        node.handle(Millis(now), Input::UpstreamData { conn, bytes: ready.clone() });
        node.handle(Millis(now), Input::UpstreamData { conn, bytes: ltx_message(&files[0]) });
        let (op, min, _) = persisted(&drain(&mut node));
        assert_eq!(min, TxId(1), "a snapshot");
        let last = attempt == 4;
        let result = if last {
            Ok(ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos())
        } else {
            Err(IoFailure::Io)
        };
        node.handle(Millis(now + 1), Input::LtxDone { op, result });
        let out = drain(&mut node);
        if last {
            assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))), "{out:?}");
            break;
        }
        let reason = out
            .iter()
            .find_map(|o| match o {
                Output::Event(Event::Resync { reason }) => Some(reason.clone()),
                _ => None,
            })
            .expect("a failed store resyncs");
        assert_eq!(reason.contains("in a row"), attempt >= 1, "{reason}");
        let at = node.timers.get(TimerKind::Reconnect).expect("a reconnect is scheduled");
        waits.push(at.0 - (now + 1));
        now = at.0;
        conn = reconnect_at(&mut node, now);
        node.handle(Millis(now), Input::UpstreamOpened { conn, ext: Extensions::ALL });
    }
    assert!(waits[0] <= 100, "the first failure may be passing: {waits:?}");
    assert!(waits[1] >= 1_000 && waits[2] >= 2_000 && waits[3] >= 4_000, "{waits:?}");
    assert_eq!(node.pos(&db()), ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos());
    // Stored and applied: the next failure is a first one again.
    node.handle(Millis(now + 10), Input::UpstreamClosed { conn });
    drain(&mut node);
    let at = node.timers.get(TimerKind::Reconnect).expect("a reconnect is scheduled");
    assert!(at.0 - (now + 10) <= 100, "the hold-off outlived a success");
}

#[test]
fn reconnect_backoff_doubles_with_jitter_inside_its_bounds() {
    let (mut node, mut conn) = connected_replica();
    let mut now = 10;
    let mut delays = Vec::new();
    for _ in 0..10 {
        node.handle(Millis(now), Input::UpstreamClosed { conn });
        drain(&mut node);
        let at = node.timers.get(TimerKind::Reconnect).expect("a reconnect is scheduled");
        delays.push(at.0 - now);
        now = at.0;
        conn = reconnect_at(&mut node, now);
    }
    assert!(delays.iter().all(|&d| (50..=5_000).contains(&d)), "{delays:?}");
    assert!(delays[0] <= 100 && delays[9] >= 2_500, "{delays:?}");
}

#[test]
fn handoff_goes_only_to_a_replica_that_acknowledged_our_position() {
    let (mut node, _, _) = primary_with_two_commits();
    node.handle(Millis(30), Input::Handoff { to: NodeId(2) });
    assert!(drain(&mut node).iter().any(|o| matches!(o, Output::Event(Event::HandoffRefused { .. }))));
    let here = node.pos(&db());
    open_downstream(&mut node, 1, here);
    let mut ack = Vec::new();
    encode_frame(&Frame::Ack { pos: node.pos(&db()), name: db() }, &mut ack);
    node.handle(Millis(31), Input::DownstreamData { conn: DownstreamId(1), bytes: ack });
    node.handle(Millis(32), Input::Handoff { to: NodeId(2) });
    let out = drain(&mut node);
    assert!(out.contains(&Output::HandOverLease { epoch: Epoch(7) }), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::ReleaseLease { .. })), "a handoff never frees the lease: {out:?}");
    // The frame names the lease as the store does (a LiteFS target takes that session over).
    let handoff = out.iter().find_map(|o| match o {
        Output::SendDownstream { bytes, .. } => {
            crate::stream::decode_frame(bytes, 0, Extensions::default()).ok().flatten().map(|(f, _)| f)
        }
        _ => None,
    });
    assert_eq!(handoff, Some(Frame::Handoff { lease_id: "session-7".into() }), "{out:?}");
    assert_eq!(node.accepting_writes(Millis(33)), None);
}

#[test]
fn a_handoff_pauses_writes_until_the_target_catches_up_then_hands_over() {
    let (mut node, _, _) = primary_with_two_commits();
    let here = node.pos(&db());
    // The replica connects one file behind: the handoff waits, refusing new commits.
    let behind = node.history(&db()).and_then(|h| h.first().copied()).expect("first file").post_pos();
    open_downstream(&mut node, 1, behind);
    drain(&mut node);
    node.handle(Millis(30), Input::Handoff { to: NodeId(2) });
    let out = drain(&mut node);
    assert!(!out.iter().any(|o| matches!(o, Output::HandOverLease { .. })), "not caught up yet: {out:?}");
    assert_eq!(node.accepting_writes(Millis(31)), None, "writes pause during a handoff");
    let mut ack = Vec::new();
    encode_frame(&Frame::Ack { pos: here, name: db() }, &mut ack);
    node.handle(Millis(32), Input::DownstreamData { conn: DownstreamId(1), bytes: ack });
    let out = drain(&mut node);
    assert!(out.contains(&Output::HandOverLease { epoch: Epoch(7) }), "{out:?}");
    assert!(matches!(node.role(), crate::node::Role::Waiting), "{:?}", node.role());
    // Should the target never take over, the lease expires: we must not take it back.
    let mut t = 33;
    for _ in 0..50 {
        t += 100;
        node.handle(Millis(t), Input::Timeout);
        for o in drain(&mut node) {
            assert!(!matches!(o, Output::AcquireLease { .. }), "re-acquired {t} ms after handing off");
            if let Output::ObserveLease { op } = o {
                node.handle(Millis(t), Input::LeaseObserved { op, holder: None });
            }
        }
    }
}

#[test]
fn a_handoff_whose_target_never_catches_up_is_given_up_and_writes_resume() {
    let (mut node, _, _) = primary_with_two_commits();
    let behind = node.history(&db()).and_then(|h| h.first().copied()).expect("first file").post_pos();
    open_downstream(&mut node, 1, behind);
    drain(&mut node);
    node.handle(Millis(30), Input::Handoff { to: NodeId(2) });
    drain(&mut node);
    let (at, kind) = node.poll_timeout().expect("a timer");
    assert!(at <= Millis(30 + super::lease::HANDOFF_WAIT_MS), "{kind:?} at {at:?}");
    node.handle(Millis(30 + super::lease::HANDOFF_WAIT_MS), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::HandoffRefused { .. }))), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::HandOverLease { .. })));
    assert!(node.accepting_writes(Millis(30 + super::lease::HANDOFF_WAIT_MS)).is_some(), "writes resume");
}

#[test]
fn invalid_configs_are_rejected() {
    let mut cfg = config(1);
    cfg.lease_safety_margin_ms = cfg.lease_ttl_ms;
    assert!(matches!(Node::new(cfg), Err(ConfigError::LeaseTimes { .. })));
    let mut cfg = config(3);
    cfg.candidate = true;
    assert!(matches!(Node::new(cfg), Err(ConfigError::NotInCandidates { .. })));
    for files in [0, crate::node::MAX_INBOX_FILES] {
        let mut cfg = config(1);
        cfg.inbox_pause_files = files;
        assert!(matches!(Node::new(cfg), Err(ConfigError::InboxPause { .. })), "{files}");
    }
}

fn other_db() -> DbName {
    DbName::new("other.db").expect("valid")
}

#[test]
fn databases_commit_independently_and_a_replica_catches_up_on_each() {
    let (mut node, _, _) = primary_with_two_commits();
    // A commit to a second database while the first is idle: TXID 1 of its own history.
    let page_size = PageSize::new(PAGE).expect("valid");
    node.handle(
        Millis(40),
        Input::Commit {
            commit: CommitId(9),
            db: other_db(),
            page_size,
            pages: vec![change(1, None, 5)],
            commit_pages: 1,
            removed: Vec::new(),
            durability: Durability::Requested,
            remote: None,
        },
    );
    let out = drain(&mut node);
    let (op, min, bytes) = persisted(&out);
    assert_eq!(min, TxId(1));
    assert!(out.iter().any(|o| matches!(o, Output::PersistLtx { db, .. } if *db == other_db())));
    let other = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(other) });
    assert!(drain(&mut node).contains(&Output::AckCommit { db: other_db(), commit: CommitId(9), pos: other }));
    assert_eq!(node.pos(&db()).txid, TxId(2));
    assert_eq!(node.pos(&other_db()), other);

    // A replica that has the first database up to date gets only the second.
    let mut map = BTreeMap::new();
    map.insert(db(), node.pos(&db()));
    node.handle(
        Millis(50),
        Input::DownstreamOpened {
            only: None,
            conn: DownstreamId(1),
            peer: NodeId(2),
            ext: Extensions::ALL,
            body: encode_pos_map(&map),
        },
    );
    let sent: Vec<Output> = drain(&mut node)
        .into_iter()
        .filter(|o| matches!(o, Output::StreamLtx { .. } | Output::StreamSnapshot { .. }))
        .collect();
    assert_eq!(sent, vec![Output::StreamLtx { conn: DownstreamId(1), db: other_db(), min: TxId(1), max: TxId(1) }]);
    assert_eq!(node.history(&other_db()).and_then(|h| h.last()).map(|f| f.post_pos()), Some(other));
}

#[test]
fn a_commit_with_a_different_page_size_than_its_database_is_refused() {
    let (mut node, _, _) = primary_with_two_commits();
    let page_size = PageSize::new(1024).expect("valid");
    node.handle(
        Millis(40),
        Input::Commit {
            commit: CommitId(3),
            db: db(),
            page_size,
            pages: vec![PageChange { pgno: Pgno(1), old: None, data: vec![0; 1024] }],
            commit_pages: 1,
            removed: Vec::new(),
            durability: Durability::Requested,
            remote: None,
        },
    );
    assert_eq!(drain(&mut node), vec![Output::RefuseCommit { commit: CommitId(3), reason: RefuseReason::Invalid }]);
}

#[test]
fn a_replica_that_learns_its_primary_during_replay_connects_when_replay_ends() {
    let (_, files, _) = primary_with_two_commits();
    let first = info(&files[0]);
    let second = info(&files[1]);
    let recovery = one_db(DbRecovery {
        ltx: vec![first, second],
        invalid_ltx: vec![],
        db_checksum: first.post,
        rejoin_txid: TxId::ZERO,
    });
    let (mut node, out) = started(config(2), recovery);
    let op = out
        .iter()
        .find_map(|o| match o {
            Output::ReplayLtx { op, .. } => Some(*op),
            _ => None,
        })
        .expect("replays the missed file");
    node.handle(Millis(1), Input::LeaseObserved { op: OpId(900), holder: Some((NodeId(1), Epoch(5))) });
    assert!(!drain(&mut node).iter().any(|o| matches!(o, Output::Connect { .. })), "connected while recovering");
    node.handle(Millis(2), Input::LtxDone { op, result: Ok(Pos::new(second.max, second.post)) });
    let out = drain(&mut node);
    assert!(out.iter().any(|o| matches!(o, Output::Connect { peer: NodeId(1), .. })), "{out:?}");
    assert_eq!(node.role(), Role::Replica { primary: NodeId(1), epoch: Epoch(5) });
}

#[test]
fn a_primary_cuts_off_a_replica_whose_acknowledgements_stop() {
    let mut cfg = config(1);
    cfg.replica_ack_timeout_ms = 2_000;
    let (mut node, _, _) = primary_with_two_commits_in(cfg);
    open_downstream(&mut node, 1, Pos::ZERO);
    // The replica was sent a snapshot at 30 ms and never acknowledges it; the heartbeat
    // (due at 1005 ms, then a second after each run) checks.
    node.handle(Millis(1_500), Input::Timeout);
    assert!(!drain(&mut node).iter().any(|o| matches!(o, Output::CloseDownstream { .. })));
    node.handle(Millis(2_600), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.contains(&Output::CloseDownstream { conn: DownstreamId(1) }), "{out:?}");
    assert!(out.contains(&Output::Event(Event::ReplicaCutOff { peer: NodeId(2) })));
}

#[test]
fn a_reconnecting_replicas_position_map_counts_as_its_acknowledgement() {
    let mut cfg = config(1);
    cfg.sync = Some(SyncConfig { timeout_ms: 1_000, policy: SyncPolicy::Block });
    let mut node = primary(cfg);
    let out = commit(&mut node, 40, 1, vec![change(1, None, 1)], 1);
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(pos) });
    let out = drain(&mut node);
    assert!(!flushed(&mut node, 42, &out).iter().any(|o| matches!(o, Output::AckCommit { .. })));
    // The replica got the file on a stream that broke before its ack arrived; it comes back.
    let mut map = BTreeMap::new();
    map.insert(db(), pos);
    let body = encode_pos_map(&map);
    node.handle(
        Millis(50),
        Input::DownstreamOpened { only: None, conn: DownstreamId(2), peer: NodeId(2), ext: Extensions::ALL, body },
    );
    assert!(drain(&mut node).contains(&Output::AckCommit { db: db(), commit: CommitId(1), pos }));
}

#[test]
fn a_replica_tracks_its_lag_from_hwm_and_heartbeat_frames() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica();
    let mut bytes = Vec::new();
    encode_frame(&Frame::Epoch { epoch: Epoch(5), node_id: NodeId(1) }, &mut bytes);
    encode_ltx_message(&db(), &files[0], TxId(2), &mut bytes);
    encode_frame(&Frame::Heartbeat { timestamp_ms: 1_000 }, &mut bytes);
    node.handle(Millis(2), Input::UpstreamData { conn, bytes });
    let (op, _, _) = persisted(&drain(&mut node));
    assert_eq!(node.lag(&db()).map(|l| l.txids), Some(2));
    let pos = ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(3), Input::LtxDone { op, result: Ok(pos) });
    // The first file was committed at 10 ms on the primary's clock.
    assert_eq!(node.lag(&db()), Some(Lag { txids: 1, ms: 990 }));
    assert_eq!(node.lag(&other_db()), None);
}

#[test]
fn retention_keeps_files_the_backup_has_not_stored_and_drops_old_ones_after() {
    let mut cfg = config(1);
    cfg.backup = true;
    cfg.retention_ms = 100;
    let (mut node, _, _) = primary_with_two_commits_in(cfg);
    node.handle(Millis(900), Input::Timeout);
    drain(&mut node);
    node.handle(Millis(1_200), Input::Timeout);
    assert!(!drain(&mut node).iter().any(|o| matches!(o, Output::RemoveLtx { .. })));
    assert_eq!(node.history(&db()).map(History::len), Some(2));
    node.handle(Millis(1_300), Input::BackedUp { db: db(), txid: TxId(2) });
    node.handle(Millis(2_300), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.contains(&Output::RemoveLtx { db: db(), min: TxId(1), max: TxId(1) }), "{out:?}");
    assert_eq!(node.history(&db()).map(History::len), Some(1), "the newest file always stays");
}

#[test]
fn promotion_asks_the_primary_to_hand_off_and_the_handoff_frame_takes_the_lease() {
    let (mut node, conn) = connected_replica();
    node.handle(Millis(2), Input::Promote);
    assert_eq!(drain(&mut node), vec![Output::RequestHandoff { primary: NodeId(1), to: NodeId(2) }]);
    let mut bytes = Vec::new();
    encode_frame(&Frame::Epoch { epoch: Epoch(5), node_id: NodeId(1) }, &mut bytes);
    encode_frame(&Frame::Handoff { lease_id: "5".into() }, &mut bytes);
    node.handle(Millis(3), Input::UpstreamData { conn, bytes });
    let out = drain(&mut node);
    assert!(out.iter().any(|o| matches!(o, Output::TakeOverLease { epoch: Epoch(5), .. })), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::AcquireLease { .. })), "{out:?}");
}

/// A replica of node 1 (epoch 5) handed the lease, with its take-over request outstanding
/// and the timers already due at 4 ms run.
fn handed_the_lease() -> (Node, OpId) {
    let (mut node, conn) = connected_replica();
    let mut bytes = Vec::new();
    encode_frame(&Frame::Epoch { epoch: Epoch(5), node_id: NodeId(1) }, &mut bytes);
    encode_frame(&Frame::Handoff { lease_id: "5".into() }, &mut bytes);
    node.handle(Millis(3), Input::UpstreamData { conn, bytes });
    let op = take_over_op(&drain(&mut node)).expect("the handoff frame asks for the lease");
    // Timers already due run first, so only what the answer arms is left early.
    node.handle(Millis(4), Input::Timeout);
    drain(&mut node);
    (node, op)
}

#[test]
fn a_handoff_target_that_finds_the_lease_still_held_asks_again_at_once() {
    let (mut node, op) = handed_the_lease();
    // The store has not seen the handed term's end yet (the request raced it).
    node.handle(Millis(5), Input::LeaseHeld { op, holder: NodeId(1), epoch: Epoch(5) });
    drain(&mut node);
    let (at, kind) = node.poll_timeout().expect("a timer");
    assert_eq!(kind, TimerKind::LeasePoll);
    assert!(
        at >= Millis(5) && at <= Millis(5 + super::lease::TAKEOVER_RETRY_MS),
        "asks again at {at:?}, not at the next regular poll"
    );
    node.handle(at, Input::Timeout);
    assert!(take_over_op(&drain(&mut node)).is_some(), "the retry is a take-over of the same term");
}

fn take_over_op(out: &[Output]) -> Option<OpId> {
    out.iter().find_map(|o| match o {
        Output::TakeOverLease { op, epoch: Epoch(5) } => Some(*op),
        _ => None,
    })
}

#[test]
fn a_handoff_target_gives_up_once_another_term_holds_the_lease() {
    let (mut node, op) = handed_the_lease();
    // The handed term expired and another node won a new one: follow it, do not keep asking.
    node.handle(Millis(5), Input::LeaseHeld { op, holder: NodeId(3), epoch: Epoch(9) });
    drain(&mut node);
    let (at, _) = node.poll_timeout().expect("a timer");
    assert!(at > Millis(5 + super::lease::TAKEOVER_RETRY_MS), "asked again at {at:?}");
    assert!(matches!(node.role(), crate::node::Role::Replica { primary: NodeId(3), .. }), "{:?}", node.role());
}

#[test]
fn a_non_candidate_refuses_promotion() {
    let mut cfg = config(3);
    cfg.candidate = false;
    let (mut node, _) = started(cfg, Recovery::default());
    node.handle(Millis(1), Input::Promote);
    assert_eq!(drain(&mut node), vec![Output::Event(Event::PromoteRefused { reason: "not a candidate" })]);
}

#[test]
fn a_commit_whose_write_ends_after_step_down_is_refused_and_frees_the_database() {
    let mut cfg = config(1);
    cfg.sync = Some(SyncConfig { timeout_ms: 1_000, policy: SyncPolicy::Block });
    let mut node = primary(cfg);
    let out = commit(&mut node, 40, 1, vec![change(1, None, 1)], 1);
    let (op, _, bytes) = persisted(&out);
    node.handle(Millis(10_000), Input::Timeout);
    assert!(drain(&mut node).iter().any(|o| matches!(o, Output::Event(Event::SteppedDown { .. }))));
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(10_001), Input::LtxDone { op, result: Ok(pos) });
    let out = drain(&mut node);
    assert!(out.contains(&Output::RefuseCommit { commit: CommitId(1), reason: RefuseReason::NotPrimary }), "{out:?}");
    assert_eq!(node.pos(&db()), pos, "the file is durable, so it is part of this node's history");
    assert!(node.dbs.get(&db()).is_some_and(|d| d.commit.is_none()), "the database must not stay busy");
}

#[test]
fn retention_keeps_files_sent_to_a_replica_until_it_acknowledges_them() {
    let mut cfg = config(1);
    cfg.retention_ms = 100;
    let (mut node, files, _) = primary_with_two_commits_in(cfg);
    let p1 = ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos();
    let sent = open_downstream(&mut node, 1, p1);
    assert_eq!(sent, vec![Output::StreamLtx { db: db(), conn: DownstreamId(1), min: TxId(2), max: TxId(2) }]);
    let out = commit(&mut node, 100, 3, vec![change(2, Some(&page(9)), 7)], 2);
    let (op, _, bytes) = persisted(&out);
    let p3 = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(101), Input::LtxDone { op, result: Ok(p3) });
    drain(&mut node);
    node.handle(Millis(2_000), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.contains(&Output::RemoveLtx { db: db(), min: TxId(1), max: TxId(1) }), "{out:?}");
    assert!(
        !out.contains(&Output::RemoveLtx { db: db(), min: TxId(2), max: TxId(2) }),
        "dropped an unacknowledged file"
    );
    let mut ack = Vec::new();
    encode_frame(&Frame::Ack { pos: p3, name: db() }, &mut ack);
    node.handle(Millis(2_001), Input::DownstreamData { conn: DownstreamId(1), bytes: ack });
    node.handle(Millis(4_000), Input::Timeout);
    assert!(drain(&mut node).contains(&Output::RemoveLtx { db: db(), min: TxId(2), max: TxId(2) }));
}

#[test]
fn the_highest_epoch_seen_survives_a_restart() {
    let (mut node, _) = started(config(2), Recovery::default());
    node.handle(Millis(0), Input::LeaseObserved { op: OpId(900), holder: Some((NodeId(1), Epoch(5))) });
    assert!(drain(&mut node).contains(&Output::PersistEpoch { epoch: Epoch(5) }));
    let recovery = Recovery { max_epoch: Epoch(5), ..Recovery::default() };
    let (mut restarted, out) = started(config(2), recovery);
    assert!(!out.iter().any(|o| matches!(o, Output::PersistEpoch { .. })), "nothing new to persist");
    restarted.handle(Millis(1), Input::LeaseObserved { op: OpId(901), holder: Some((NodeId(3), Epoch(4))) });
    assert_eq!(restarted.role(), Role::Waiting, "followed an epoch older than one seen before the restart");
}

#[test]
fn a_slow_answer_to_an_observation_sent_before_taking_the_lease_does_not_depose_the_primary() {
    let (mut node, _) = started(config(2), Recovery::default());
    node.handle(Millis(0), Input::LeaseObserved { op: OpId(900), holder: Some((NodeId(1), Epoch(5))) });
    drain(&mut node);
    // The next poll asks again; that answer will be slow.
    node.handle(Millis(1_000), Input::Timeout);
    let slow = drain(&mut node)
        .into_iter()
        .find_map(|o| match o {
            Output::ObserveLease { op } => Some(op),
            _ => None,
        })
        .expect("polls the lease store");
    // Meanwhile the primary's lease lapses and this node takes it.
    node.handle(Millis(1_500), Input::LeaseObserved { op: OpId(901), holder: None });
    let acquire = drain(&mut node)
        .into_iter()
        .find_map(|o| match o {
            Output::AcquireLease { op } => Some(op),
            _ => None,
        })
        .expect("a free lease is taken");
    node.handle(Millis(1_510), Input::LeaseAcquired { op: acquire, epoch: Epoch(6), lease_id: "6".into() });
    assert_eq!(node.role(), Role::Primary { epoch: Epoch(6) });
    node.handle(Millis(1_600), Input::LeaseObserved { op: slow, holder: None });
    assert_eq!(node.role(), Role::Primary { epoch: Epoch(6) }, "deposed by a stale answer");
}

mod drop;
mod durability;
mod halt;

#[test]
fn a_filtered_stream_carries_only_the_databases_it_asked_for() {
    let (mut node, _, _) = primary_with_two_commits();
    let open = |node: &mut Node, conn: u64, only: &str| {
        let mut map = BTreeMap::new();
        map.insert(db(), Pos::ZERO);
        let only = Some(std::iter::once(DbName::new(only).expect("name")).collect());
        node.handle(
            Millis(30),
            Input::DownstreamOpened {
                only,
                conn: DownstreamId(conn),
                peer: NodeId(2),
                ext: Extensions::ALL,
                body: encode_pos_map(&map),
            },
        );
        drain(node)
            .into_iter()
            .filter(|o| matches!(o, Output::StreamLtx { .. } | Output::StreamSnapshot { .. }))
            .count()
    };
    assert_eq!(open(&mut node, 1, "other.db"), 0, "a database outside the filter is not sent");
    assert!(open(&mut node, 2, db().as_str()) > 0, "the database it asked for is");
    // Later commits follow the same rule.
    let out = commit(&mut node, 40, 3, vec![change(1, Some(&page(1)), 9)], 1);
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(pos) });
    let streams: Vec<DownstreamId> = drain(&mut node)
        .into_iter()
        .filter_map(|o| if let Output::StreamLtx { conn, .. } = o { Some(conn) } else { None })
        .collect();
    assert_eq!(streams, vec![DownstreamId(2)], "only the stream that asked for it gets the commit");
}

#[test]
fn files_received_before_the_stream_closed_are_still_applied_before_reconnecting_or_acquiring() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica();
    // Both files arrive; the first is being written when the primary's stream dies.
    let mut bytes = ltx_message(&files[0]);
    encode_ltx_message(&db(), &files[1], TxId(0), &mut bytes);
    node.handle(Millis(2), Input::UpstreamData { conn, bytes });
    let (op, _, _) = persisted(&drain(&mut node));
    node.handle(Millis(3), Input::UpstreamClosed { conn });
    drain(&mut node);

    // The lease is free: this candidate still holds a file to apply, so it waits.
    node.handle(Millis(4), Input::LeaseObserved { op: OpId(901), holder: None });
    let out = drain(&mut node);
    assert!(!out.iter().any(|o| matches!(o, Output::AcquireLease { .. })), "acquired with a file unapplied: {out:?}");

    let first = ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(5), Input::LtxDone { op, result: Ok(first) });
    let (op, _, _) = persisted(&drain(&mut node));
    let second = ltx::verify(files[1].as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(6), Input::LtxDone { op, result: Ok(second) });
    drain(&mut node);
    assert_eq!(node.pos(&db()), second, "the second file, received whole, was applied too");

    // Everything it held is applied (and, after the flush, durable): now it competes.
    let mut acquired = false;
    for t in 7..400 {
        node.handle(Millis(t), Input::Timeout);
        for o in drain(&mut node) {
            match o {
                Output::FlushLtx { op, .. } => node.handle(Millis(t), Input::LtxFlushed { op, result: Ok(()) }),
                Output::ObserveLease { op } => node.handle(Millis(t), Input::LeaseObserved { op, holder: None }),
                Output::AcquireLease { .. } => acquired = true,
                _ => {}
            }
        }
    }
    assert!(acquired, "a caught-up candidate asks for the free lease");
}

#[test]
fn files_received_before_the_primary_ended_its_stream_are_still_applied() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica();
    // Both files, then the end of the stream (the primary stepped down), in one read.
    let mut bytes = ltx_message(&files[0]);
    encode_ltx_message(&db(), &files[1], TxId(0), &mut bytes);
    encode_frame(&Frame::End, &mut bytes);
    node.handle(Millis(2), Input::UpstreamData { conn, bytes });
    let out = drain(&mut node);
    assert!(out.contains(&Output::CloseUpstream { conn }), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))), "{out:?}");
    let (op, _, _) = persisted(&out);
    let first = ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(3), Input::LtxDone { op, result: Ok(first) });
    let (op, _, _) = persisted(&drain(&mut node));
    let second = ltx::verify(files[1].as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(4), Input::LtxDone { op, result: Ok(second) });
    drain(&mut node);
    assert_eq!(node.pos(&db()), second);
}

/// A replica's transaction under a halt lock, on `base`, claiming to reach `post`.
fn remote_commit(node: &mut Node, id: u64, pages: Vec<PageChange>, base: Pos, post: Checksum) -> Vec<Output> {
    node.handle(
        Millis(3_000 + id),
        Input::Commit {
            commit: CommitId(id),
            db: db(),
            page_size: PageSize::new(PAGE).expect("valid"),
            pages,
            commit_pages: 2,
            removed: Vec::new(),
            durability: Durability::Requested,
            remote: Some(RemoteCommit { origin: Some(NodeId(0x0f0f)), base, post }),
        },
    );
    drain(node)
}

#[test]
fn a_replicas_transaction_commits_only_where_it_was_made_and_where_its_file_says_it_leads() {
    let (mut node, files, file_db) = primary_with_two_commits();
    let p2 = node.pos(&db());
    let p1 = ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos();
    let pages = || vec![change(1, Some(&page(1)), 7)];
    let refused = |reason| vec![Output::RefuseCommit { commit: CommitId(3), reason }];
    // Made on an older position: the database moved on.
    assert_eq!(remote_commit(&mut node, 3, pages(), p1, p2.checksum), refused(RefuseReason::Moved));
    // On the right position but claiming a checksum its pages do not reach.
    assert_eq!(
        remote_commit(&mut node, 3, pages(), p2, Checksum(0x8000_0000_0000_0001)),
        refused(RefuseReason::Invalid)
    );
    assert_eq!(node.pos(&db()), p2, "nothing committed");
    // Where the pages really lead, found by applying them to the database itself.
    let mut replica_db = file_db.clone();
    let mut probe =
        Encoder::new(Vec::new(), Header::new(PageSize::new(PAGE).expect("valid"), 2, TxId(3), TxId(3), p2.checksum))
            .expect("encoder");
    probe.encode_page(Pgno(1), &page(7)).expect("page");
    let mut sum = DatabaseChecksum::from_checksum(PageSize::new(PAGE).expect("valid"), p2.checksum);
    sum.toggle(Pgno(1), page_checksum(Pgno(1), &page(1)));
    sum.toggle(Pgno(1), page_checksum(Pgno(1), &page(7)));
    let (probe, _) = probe.finish(sum.value()).expect("finish");
    let post = ltx::apply(&mut replica_db, p2.checksum, probe.as_slice()).expect("the replica's file applies");
    let out = remote_commit(&mut node, 3, pages(), p2, post.checksum);
    let (_, txid, bytes) = persisted(&out);
    assert_eq!(txid, TxId(3));
    let verified = ltx::verify(bytes.as_slice()).expect("valid");
    assert_eq!(verified.post_apply_pos(), post, "the primary reaches the replica's position");
    assert_eq!(verified.header().node_id, NodeId(0x0f0f), "the file carries the replica's id");
}
