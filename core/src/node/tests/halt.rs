//! A replica writing under a halt lock it holds on its primary (the replica's side of
//! decision 0022; the primary's is `a_replicas_transaction_commits_only_where_it_was_made…`).

use super::*;

const LOCK: i64 = 77;

fn hold(node: &mut Node, pos: Pos) -> Vec<Output> {
    node.handle(Millis(100), Input::HoldHalt { db: db(), lock_id: LOCK, pos });
    drain(node)
}

fn held(result: Result<(), HaltRefusal>) -> Vec<Output> {
    vec![Output::HaltHeld { db: db(), result }]
}

/// The transaction sent in `out`: its commit and verified file.
fn sent(out: &[Output]) -> (CommitId, Vec<u8>) {
    match out {
        [Output::SendUnderHalt { commit, db: name, lock_id: LOCK, bytes }] if *name == db() => (*commit, bytes.clone()),
        other => panic!("expected one transaction sent under the lock, got {other:?}"),
    }
}

fn answer(node: &mut Node, commit: CommitId, accepted: bool) -> Vec<Output> {
    node.handle(Millis(200), Input::SentUnderHalt { commit, accepted });
    drain(node)
}

/// The origin the Node gives `file` when the stream brings it.
fn arriving(node: &mut Node, conn: UpstreamId, file: &[u8]) -> (OpId, LtxOrigin) {
    node.handle(Millis(300), Input::UpstreamData { conn, bytes: ltx_message(file) });
    drain(node)
        .into_iter()
        .find_map(|o| match o {
            Output::PersistLtx { op, origin, .. } => Some((op, origin)),
            _ => None,
        })
        .expect("a persist request")
}

#[test]
fn only_a_replica_at_the_locks_position_writes_under_it() {
    let (mut primary, _, _) = primary_with_two_commits();
    let at = primary.pos(&db());
    assert_eq!(hold(&mut primary, at), held(Err(HaltRefusal::NotAReplica)));
    assert!(!primary.writes_under_halt(&db()));

    let (mut replica, _) = replica_with_two_applied();
    let at = replica.pos(&db());
    let elsewhere = Pos { txid: at.txid.next(), checksum: at.checksum };
    assert_eq!(hold(&mut replica, elsewhere), held(Err(HaltRefusal::NotAtLockPosition { at })));
    assert!(!replica.writes_under_halt(&db()));
    assert_eq!(hold(&mut replica, at), held(Ok(())));
    assert!(replica.writes_under_halt(&db()));
}

#[test]
fn commits_under_a_halt_lock_go_to_the_primary_chained_on_each_other_and_come_back_as_echoes() {
    let (mut node, conn) = replica_with_two_applied();
    let p2 = node.pos(&db());
    hold(&mut node, p2);

    // The first commit is made on the lock's position, as the primary would make it.
    let out = commit(&mut node, 110, 3, vec![change(1, Some(&page(1)), 7)], 2);
    let (c3, file3) = sent(&out);
    assert_eq!(c3, CommitId(3));
    let v3 = ltx::verify(file3.as_slice()).expect("a whole LTX file");
    assert_eq!((v3.header().min_txid, v3.header().max_txid), (TxId(3), TxId(3)));
    assert_eq!(v3.header().pre_apply_checksum, p2.checksum);
    assert_eq!(v3.header().node_id, NodeId(2), "made by this replica");
    let p3 = v3.post_apply_pos();
    // Durable at the primary before the commit returns: SQLite's fsync waits for nothing.
    node.handle(Millis(120), Input::Sync { sync: SyncId(1), db: db() });
    assert_eq!(drain(&mut node), vec![Output::SyncDone { sync: SyncId(1), result: Ok(()) }]);
    assert_eq!(answer(&mut node, c3, true), vec![Output::AckCommit { db: db(), commit: c3, pos: p3 }]);
    assert_eq!(node.pos(&db()), p2, "the position moves when the stream brings it back");

    // The next one is made on the first (the primary holds it), and may be refused.
    let out = commit(&mut node, 130, 4, vec![change(2, Some(&page(9)), 5)], 2);
    let (c4, file4) = sent(&out);
    let v4 = ltx::verify(file4.as_slice()).expect("a whole LTX file");
    assert_eq!((v4.header().min_txid, v4.header().pre_apply_checksum), (TxId(4), p3.checksum));
    assert_eq!(
        answer(&mut node, c4, false),
        vec![Output::RefuseCommit { commit: c4, reason: RefuseReason::PrimaryRefused }]
    );

    // The stream brings transaction 3 back: stored, not applied (its pages are here).
    let (op, origin) = arriving(&mut node, conn, &file3);
    assert_eq!(origin, LtxOrigin::HaltEcho);
    node.handle(Millis(310), Input::LtxDone { op, result: Ok(p3) });
    drain(&mut node);
    assert_eq!(node.pos(&db()), p3);
    // A transaction 4 from the primary is not the refused one coming back: it is applied.
    let mut other =
        Encoder::new(Vec::new(), Header::new(PageSize::new(PAGE).expect("valid"), 2, TxId(4), TxId(4), p3.checksum))
            .expect("encoder");
    other.encode_page(Pgno(2), &page(6)).expect("page");
    let mut sum = DatabaseChecksum::from_checksum(PageSize::new(PAGE).expect("valid"), p3.checksum);
    sum.toggle(Pgno(2), page_checksum(Pgno(2), &page(9)));
    sum.toggle(Pgno(2), page_checksum(Pgno(2), &page(6)));
    let (other, _) = other.finish(sum.value()).expect("finish");
    let (_, origin) = arriving(&mut node, conn, &other);
    assert_eq!(origin, LtxOrigin::Upstream);
}

#[test]
fn without_the_lock_a_replica_refuses_commits_again() {
    let (mut node, _) = replica_with_two_applied();
    let p2 = node.pos(&db());
    hold(&mut node, p2);
    node.handle(Millis(150), Input::ReleaseHalt { db: db() });
    assert!(!node.writes_under_halt(&db()));
    let out = commit(&mut node, 160, 5, vec![change(1, Some(&page(1)), 7)], 2);
    assert_eq!(out, vec![Output::RefuseCommit { commit: CommitId(5), reason: RefuseReason::NotPrimary }]);
}
