//! Dropping a database: the drop is a transaction with commit size zero (LiteFS's form).

use super::*;
use crate::stream::{StreamDecoder, StreamEvent};

fn drop_db(node: &mut Node, now: u64, id: u64) -> Vec<Output> {
    node.handle(Millis(now), Input::DropDb { commit: CommitId(id), db: db() });
    drain(node)
}

/// A primary with two commits and a finished drop on top; returns the node, the three files
/// and the database file after them (empty).
fn primary_after_drop() -> (Node, Vec<Vec<u8>>, Vec<u8>) {
    let (mut node, mut files, mut file_db) = primary_with_two_commits();
    let before = node.pos(&db());
    let out = drop_db(&mut node, 30, 9);
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::apply(&mut file_db, before.checksum, bytes.as_slice()).expect("a drop applies");
    node.handle(Millis(31), Input::LtxDone { op, result: Ok(pos) });
    drain(&mut node);
    files.push(bytes);
    (node, files, file_db)
}

fn frames(bytes: &[u8]) -> Vec<StreamEvent> {
    let mut decoder = StreamDecoder::new(Extensions::ALL);
    decoder.feed(bytes);
    std::iter::from_fn(|| decoder.next_event().expect("well-formed stream")).collect()
}

#[test]
fn a_drop_is_a_transaction_with_commit_size_zero_acknowledged_only_once_durable() {
    let (mut node, _, mut file_db) = primary_with_two_commits();
    let before = node.pos(&db());
    let out = drop_db(&mut node, 30, 9);
    assert!(!out.iter().any(|o| matches!(o, Output::AckCommit { .. })), "acknowledged before durable: {out:?}");
    let (op, min, bytes) = persisted(&out);
    assert_eq!(min, TxId(3));
    let verified = ltx::verify(bytes.as_slice()).expect("the drop is a valid LTX file");
    assert_eq!(verified.header().commit, 0);
    assert_eq!(verified.header().pre_apply_checksum, before.checksum);
    assert_eq!(verified.post_apply_pos(), Pos::new(TxId(3), Checksum::EMPTY));
    let pos = ltx::apply(&mut file_db, before.checksum, bytes.as_slice()).expect("applies to the database");
    assert!(file_db.is_empty());
    node.handle(Millis(31), Input::LtxDone { op, result: Ok(pos) });
    assert_eq!(drain(&mut node), vec![Output::AckCommit { db: db(), commit: CommitId(9), pos }]);
    assert_eq!(node.pos(&db()), Pos::new(TxId(3), Checksum::EMPTY));
}

#[test]
fn a_replica_refuses_a_drop_as_read_only() {
    let (mut node, _) = started(config(2), Recovery::default());
    node.handle(Millis(0), Input::LeaseObserved { op: OpId(999), holder: Some((NodeId(1), Epoch(3))) });
    drain(&mut node);
    let out = drop_db(&mut node, 1, 4);
    assert_eq!(out, vec![Output::RefuseCommit { commit: CommitId(4), reason: RefuseReason::NotPrimary }]);
}

#[test]
fn a_drop_of_a_database_never_committed_is_acknowledged_without_a_file() {
    let mut node = primary(config(1));
    assert_eq!(drop_db(&mut node, 10, 4), vec![Output::AckCommit { db: db(), commit: CommitId(4), pos: Pos::ZERO }]);
}

#[test]
fn a_drop_waits_for_a_commit_in_flight_to_finish() {
    let (mut node, _, _) = primary_with_two_commits();
    let out = commit(&mut node, 30, 3, vec![change(1, Some(&page(1)), 5)], 2);
    persisted(&out);
    assert_eq!(
        drop_db(&mut node, 31, 4),
        vec![Output::RefuseCommit { commit: CommitId(4), reason: RefuseReason::Busy }]
    );
}

#[test]
fn a_synchronous_drop_waits_for_every_other_candidate_like_a_commit() {
    let mut cfg = config(1);
    cfg.sync = Some(SyncConfig { timeout_ms: 1_000, policy: SyncPolicy::Block });
    let mut node = primary(cfg);
    open_downstream(&mut node, 1, Pos::ZERO);
    let out = commit(&mut node, 40, 1, vec![change(1, None, 1)], 1);
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(pos) });
    // Synchronous mode writes the file without an fsync (it streams first), then flushes it.
    let out = drain(&mut node);
    flushed(&mut node, 41, &out);
    let mut ack = Vec::new();
    encode_frame(&Frame::Ack { pos, name: db() }, &mut ack);
    node.handle(Millis(42), Input::DownstreamData { conn: DownstreamId(1), bytes: ack });
    drain(&mut node);
    let out = drop_db(&mut node, 50, 2);
    let (op, _, bytes) = persisted(&out);
    let dropped = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(51), Input::LtxDone { op, result: Ok(dropped) });
    let out = drain(&mut node);
    let out = [out.clone(), flushed(&mut node, 51, &out)].concat();
    assert!(!out.iter().any(|o| matches!(o, Output::AckCommit { .. })), "acknowledged without the replica: {out:?}");
    let mut ack = Vec::new();
    encode_frame(&Frame::Ack { pos: dropped, name: db() }, &mut ack);
    node.handle(Millis(52), Input::DownstreamData { conn: DownstreamId(1), bytes: ack });
    assert_eq!(drain(&mut node), vec![Output::AckCommit { db: db(), commit: CommitId(2), pos: dropped }]);
}

#[test]
fn a_replica_that_lacks_the_drop_gets_it_as_the_next_file() {
    let (mut node, files, _) = primary_after_drop();
    let p2 = ltx::verify(files[1].as_slice()).expect("valid").post_apply_pos();
    assert_eq!(
        open_downstream(&mut node, 1, p2),
        vec![Output::StreamLtx { db: db(), conn: DownstreamId(1), min: TxId(3), max: TxId(3) }]
    );
}

#[test]
fn a_replica_that_never_had_a_dropped_database_gets_its_empty_snapshot_like_any_other() {
    // As LiteFS's primary does (a snapshot of zero pages): positions then agree everywhere.
    let (mut node, _, _) = primary_after_drop();
    node.handle(Millis(3_000), Input::Timeout);
    drain(&mut node);
    node.handle(
        Millis(3_001),
        Input::DownstreamOpened {
            only: None,
            conn: DownstreamId(1),
            peer: NodeId(2),
            ext: Extensions::ALL,
            body: encode_pos_map(&BTreeMap::new()),
        },
    );
    let mut files = Vec::new();
    for output in drain(&mut node) {
        assert!(!matches!(output, Output::StreamSnapshot { .. }), "asked to copy a database that is gone");
        if let Output::SendDownstream { bytes, .. } = output {
            files.extend(frames(&bytes).into_iter().filter_map(|e| match e {
                StreamEvent::Ltx { payload, .. } => Some(payload),
                _ => None,
            }));
        }
    }
    assert_eq!(files.len(), 1);
    let verified = ltx::verify(files[0].as_slice()).expect("valid");
    assert!(verified.header().is_snapshot());
    assert_eq!(verified.post_apply_pos(), Pos::new(TxId(3), Checksum::EMPTY));
}

#[test]
fn retention_keeps_only_the_drop_and_a_lagging_replica_then_gets_an_empty_snapshot() {
    let (mut node, files, _) = primary_after_drop();
    node.handle(Millis(3_000), Input::Timeout);
    let out = drain(&mut node);
    assert!(out.contains(&Output::RemoveLtx { db: db(), min: TxId(1), max: TxId(1) }), "{out:?}");
    assert!(out.contains(&Output::RemoveLtx { db: db(), min: TxId(2), max: TxId(2) }), "{out:?}");
    assert_eq!(node.history(&db()).and_then(|h| h.first()).map(|f| f.min), Some(TxId(3)));
    let p1 = ltx::verify(files[0].as_slice()).expect("valid").post_apply_pos();
    let mut map = BTreeMap::new();
    map.insert(db(), p1);
    node.handle(
        Millis(3_001),
        Input::DownstreamOpened {
            only: None,
            conn: DownstreamId(1),
            peer: NodeId(2),
            ext: Extensions::ALL,
            body: encode_pos_map(&map),
        },
    );
    let mut snapshots = Vec::new();
    for output in drain(&mut node) {
        assert!(!matches!(output, Output::StreamSnapshot { .. }), "asked to copy a database that is gone");
        if let Output::SendDownstream { bytes, .. } = output {
            snapshots.extend(frames(&bytes).into_iter().filter_map(|e| match e {
                StreamEvent::Ltx { payload, .. } => Some(payload),
                _ => None,
            }));
        }
    }
    assert_eq!(snapshots.len(), 1);
    let verified = ltx::verify(snapshots[0].as_slice()).expect("a valid snapshot");
    assert!(verified.header().is_snapshot());
    assert_eq!(verified.header().commit, 0);
    assert_eq!(verified.post_apply_pos(), Pos::new(TxId(3), Checksum::EMPTY));
    let mut replica_db = page(7);
    let pos = ltx::apply(&mut replica_db, Checksum::ZERO, snapshots[0].as_slice()).expect("applies");
    assert_eq!((pos, replica_db.len()), (Pos::new(TxId(3), Checksum::EMPTY), 0));
}

#[test]
fn a_database_created_again_after_a_drop_continues_its_history_from_empty() {
    let (mut node, _, mut file_db) = primary_after_drop();
    let out = commit(&mut node, 40, 10, vec![change(1, None, 4)], 1);
    let (op, min, bytes) = persisted(&out);
    assert_eq!(min, TxId(4));
    let verified = ltx::verify(bytes.as_slice()).expect("valid");
    assert_eq!(verified.header().pre_apply_checksum, Checksum::EMPTY);
    let pos = ltx::apply(&mut file_db, Checksum::EMPTY, bytes.as_slice()).expect("applies onto the empty database");
    assert_eq!(pos, verified.post_apply_pos());
    node.handle(Millis(41), Input::LtxDone { op, result: Ok(pos) });
    assert_eq!(drain(&mut node), vec![Output::AckCommit { db: db(), commit: CommitId(10), pos }]);
}

#[test]
fn a_replica_applies_a_drop_like_any_file() {
    let (_, files, _) = primary_after_drop();
    let (mut node, conn) = connected_replica();
    for (i, file) in files.iter().enumerate() {
        let before = node.pos(&db());
        node.handle(Millis(2 + i as u64), Input::UpstreamData { conn, bytes: ltx_message(file) });
        let out = drain(&mut node);
        let (op, _, _) = persisted(&out);
        let v = ltx::verify(file.as_slice()).expect("valid");
        if i == 2 {
            assert!(out.iter().any(|o| matches!(o, Output::PersistLtx { base, .. } if *base == before.checksum)));
        }
        node.handle(Millis(3 + i as u64), Input::LtxDone { op, result: Ok(v.post_apply_pos()) });
        drain(&mut node);
    }
    assert_eq!(node.pos(&db()), Pos::new(TxId(3), Checksum::EMPTY));
}

#[test]
fn a_primary_sends_a_drop_frame_for_a_database_it_does_not_know() {
    let mut node = primary(config(1));
    let mut map = BTreeMap::new();
    map.insert(db(), Pos::new(TxId(4), Checksum(Checksum::FLAG | 3)));
    node.handle(
        Millis(30),
        Input::DownstreamOpened {
            only: None,
            conn: DownstreamId(1),
            peer: NodeId(2),
            ext: Extensions::ALL,
            body: encode_pos_map(&map),
        },
    );
    let sent: Vec<StreamEvent> = drain(&mut node)
        .into_iter()
        .filter_map(|o| match o {
            Output::SendDownstream { bytes, .. } => Some(frames(&bytes)),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(sent.contains(&StreamEvent::Frame(Frame::DropDb { name: db() })), "{sent:?}");
}

#[test]
fn a_replica_told_of_a_database_the_primary_does_not_know_keeps_it_as_litefs_does() {
    let (mut node, conn) = replica_with_two_applied();
    let before = node.pos(&db());
    let mut bytes = Vec::new();
    encode_frame(&Frame::DropDb { name: db() }, &mut bytes);
    node.handle(Millis(10), Input::UpstreamData { conn, bytes });
    let out = drain(&mut node);
    assert!(!out.iter().any(|o| matches!(o, Output::PersistLtx { .. } | Output::CloseUpstream { .. })), "{out:?}");
    assert_eq!(node.pos(&db()), before);
}

#[test]
fn recovery_of_a_dropped_database_whose_file_is_gone_is_at_the_drop() {
    let (_, files, _) = primary_after_drop();
    let ltx = files.iter().map(|f| info(f)).collect();
    let (node, _) = started(
        config(1),
        one_db(DbRecovery { ltx, invalid_ltx: vec![], db_checksum: Checksum::ZERO, rejoin_txid: TxId::ZERO }),
    );
    assert_eq!(node.pos(&db()), Pos::new(TxId(3), Checksum::EMPTY));
}

#[test]
fn recovery_replays_a_drop_the_database_file_missed() {
    let (_, files, _) = primary_after_drop();
    let p2 = info(&files[1]).post;
    let ltx = files.iter().map(|f| info(f)).collect();
    let (_, out) =
        started(config(1), one_db(DbRecovery { ltx, invalid_ltx: vec![], db_checksum: p2, rejoin_txid: TxId::ZERO }));
    assert!(out.iter().any(|o| matches!(o, Output::ReplayLtx { min: TxId(3), base, .. } if *base == p2)), "{out:?}");
}

#[test]
fn a_drop_applies_whatever_the_database_page_size() {
    // After a restart the Node may not know the page size and writes the fallback one.
    let mut file_db: Vec<u8> = [page(1), page(2), page(3)].concat();
    let current = ltx::checksum_database(file_db.as_slice(), PageSize::new(PAGE).expect("valid")).expect("sums");
    let big = PageSize::new(4096).expect("valid");
    let header = ltx::Header::new(big, 0, TxId(4), TxId(4), current);
    let (bytes, _) = ltx::Encoder::new(Vec::new(), header).expect("header").finish(Checksum::EMPTY).expect("file");
    let pos = ltx::apply(&mut file_db, current, bytes.as_slice()).expect("a drop applies");
    assert_eq!((pos, file_db.len()), (Pos::new(TxId(4), Checksum::EMPTY), 0));
    let wrong = Checksum(current.0 ^ 1);
    assert!(ltx::apply(&mut page(1), wrong, bytes.as_slice()).is_err(), "the pre-apply checksum still counts");
}
