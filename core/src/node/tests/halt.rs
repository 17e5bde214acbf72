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

/// Transaction 3 of the replica's database as another primary made it: not the replica's.
fn another_third(at: Pos) -> Vec<u8> {
    let page_size = PageSize::new(PAGE).expect("valid");
    let mut other =
        Encoder::new(Vec::new(), Header::new(page_size, 2, TxId(3), TxId(3), at.checksum)).expect("encoder");
    other.encode_page(Pgno(2), &page(6)).expect("page");
    let mut sum = DatabaseChecksum::from_checksum(page_size, at.checksum);
    sum.toggle(Pgno(2), page_checksum(Pgno(2), &page(9)));
    sum.toggle(Pgno(2), page_checksum(Pgno(2), &page(6)));
    other.finish(sum.value()).expect("finish").0
}

/// A replica holding a halt lock at its position that sent transaction 3 under it, not
/// answered yet: the node, its stream, the commit and the transaction's file.
fn replica_waiting_for_its_third() -> (Node, UpstreamId, CommitId, Vec<u8>) {
    let (mut node, conn) = replica_with_two_applied();
    let p2 = node.pos(&db());
    hold(&mut node, p2);
    let (c3, file3) = sent(&commit(&mut node, 110, 3, vec![change(1, Some(&page(1)), 7)], 2));
    (node, conn, c3, file3)
}

/// A replica whose transaction under a halt lock the primary committed (its pages are in
/// the database file here) before it came back.
fn replica_ahead_of_its_history() -> (Node, UpstreamId, Pos) {
    let (mut node, conn, c3, _) = replica_waiting_for_its_third();
    answer(&mut node, c3, true);
    // Its position moves only when the transaction comes back.
    let p2 = node.pos(&db());
    (node, conn, p2)
}

#[test]
fn a_transaction_lost_with_the_primary_that_committed_it_makes_its_replica_start_over() {
    // The primary died before streaming transaction 3; the next one made another.
    let (mut node, conn, p2) = replica_ahead_of_its_history();
    node.handle(Millis(300), Input::UpstreamData { conn, bytes: ltx_message(&another_third(p2)) });
    let out = drain(&mut node);
    // Applied over the pages of the lost one, it could leave some of them behind unnoticed.
    assert!(!out.iter().any(|o| matches!(o, Output::PersistLtx { .. })), "{out:?}");
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))), "{out:?}");
    assert!(out.contains(&Output::CloseUpstream { conn }), "{out:?}");
    assert_eq!(node.pos(&db()), Pos::ZERO, "waits for a snapshot");
}

/// Whether `node`, whose primary's stream `conn` ends and whose lease is then free, asks for
/// the lease within a second of timers.
fn asks_for_the_free_lease(node: &mut Node, conn: UpstreamId) -> bool {
    node.handle(Millis(400), Input::UpstreamClosed { conn });
    node.handle(Millis(401), Input::LeaseObserved { op: OpId(901), holder: None });
    let mut asked = false;
    for t in 402..1_500 {
        node.handle(Millis(t), Input::Timeout);
        for o in drain(node) {
            match o {
                Output::FlushLtx { op, .. } => node.handle(Millis(t), Input::LtxFlushed { op, result: Ok(()) }),
                Output::ObserveLease { op } => node.handle(Millis(t), Input::LeaseObserved { op, holder: None }),
                Output::AcquireLease { .. } => asked = true,
                _ => {}
            }
        }
    }
    asked
}

#[test]
fn a_replica_ahead_of_its_history_takes_no_free_lease() {
    let (mut node, conn, _) = replica_ahead_of_its_history();
    assert!(
        !asks_for_the_free_lease(&mut node, conn),
        "a node whose database file holds a transaction its history lacks must not lead"
    );
}

#[test]
fn a_transaction_back_before_a_lost_answer_is_not_rolled_back_under_the_history() {
    let (mut node, conn, c3, file3) = replica_waiting_for_its_third();
    // The stream brings it back before the primary's answer: stored, the commit still waits.
    let (op, origin) = arriving(&mut node, conn, &file3);
    assert_eq!(origin, LtxOrigin::HaltEcho);
    let p3 = ltx::verify(file3.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(310), Input::LtxDone { op, result: Ok(p3) });
    let out = drain(&mut node);
    assert!(!out.iter().any(|o| matches!(o, Output::AckCommit { .. })), "{out:?}");
    // Then the request fails (its answer was lost): SQLite rolls the pages back, under a
    // history that holds them. The replica starts over from the primary's copy.
    let out = answer(&mut node, c3, false);
    assert_eq!(out[0], Output::RefuseCommit { commit: c3, reason: RefuseReason::PrimaryRefused });
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))), "{out:?}");
    assert_eq!(node.pos(&db()), Pos::ZERO, "waits for a snapshot");
    // It may have acknowledged up to transaction 3 (synchronous mode): until it is back
    // there it must not lead, a restart included (found by the simulator, seed 911243).
    assert!(out.contains(&Output::PersistRejoin { db: db(), txid: TxId(3) }), "{out:?}");
}

#[test]
fn an_echo_whose_write_failed_is_still_known_when_it_comes_again() {
    let (mut node, conn, c3, file3) = replica_waiting_for_its_third();
    answer(&mut node, c3, true);
    let (op, origin) = arriving(&mut node, conn, &file3);
    assert_eq!(origin, LtxOrigin::HaltEcho);
    node.handle(Millis(310), Input::LtxDone { op, result: Err(IoFailure::NoSpace) });
    drain(&mut node);
    // The replica reconnects and is sent the file again.
    let conn = (0..20)
        .find_map(|_| {
            let (at, _) = node.poll_timeout()?;
            node.handle(at, Input::Timeout);
            let mut connected = None;
            for o in drain(&mut node) {
                match o {
                    Output::FlushLtx { op, .. } => node.handle(at, Input::LtxFlushed { op, result: Ok(()) }),
                    Output::ObserveLease { op } => {
                        node.handle(at, Input::LeaseObserved { op, holder: Some((NodeId(1), Epoch(5))) });
                    }
                    Output::Connect { conn, .. } => connected = Some(conn),
                    _ => {}
                }
            }
            connected.or_else(|| {
                drain(&mut node).into_iter().find_map(|o| match o {
                    Output::Connect { conn, .. } => Some(conn),
                    _ => None,
                })
            })
        })
        .expect("reconnects");
    node.handle(Millis(6_000), Input::UpstreamOpened { conn, ext: Extensions::ALL });
    drain(&mut node);
    let (_, origin) = arriving(&mut node, conn, &file3);
    assert_eq!(origin, LtxOrigin::HaltEcho, "applied over its own pages it would not fit");
}

#[test]
fn a_replica_waiting_for_an_answer_under_a_halt_lock_takes_no_free_lease() {
    let (mut node, conn, _, _) = replica_waiting_for_its_third();
    assert!(!asks_for_the_free_lease(&mut node, conn), "took the lease with its transaction's pages in the file");
}

#[test]
fn an_echo_still_being_stored_when_its_transaction_is_rolled_back_does_not_move_the_replica() {
    let (mut node, conn, c3, file3) = replica_waiting_for_its_third();
    let (op, origin) = arriving(&mut node, conn, &file3);
    assert_eq!(origin, LtxOrigin::HaltEcho);
    // The answer is lost before the echo's write reports back.
    answer(&mut node, c3, false);
    assert_eq!(node.pos(&db()), Pos::ZERO);
    let p3 = ltx::verify(file3.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(320), Input::LtxDone { op, result: Ok(p3) });
    drain(&mut node);
    assert_eq!(node.pos(&db()), Pos::ZERO, "the history it would extend is gone: still waiting for a snapshot");
}

#[test]
fn after_a_snapshot_a_transaction_written_here_is_applied_when_it_comes_back() {
    // Transaction 3 was committed for this replica, then a snapshot replaced its file (and
    // the pages it wrote): transaction 3, when the primary sends it, must be applied.
    let (mut node, conn, _) = replica_ahead_of_its_history();
    let (_, files, _) = primary_with_two_commits();
    // Transaction 3 as this replica made it (the same on a twin).
    let (_, _, _, file3) = replica_waiting_for_its_third();
    // The primary's history from its first file, a snapshot (TXID 1).
    for file in &files {
        let (op, origin) = arriving(&mut node, conn, file);
        assert_eq!(origin, LtxOrigin::Upstream);
        let pos = ltx::verify(file.as_slice()).expect("valid").post_apply_pos();
        node.handle(Millis(320), Input::LtxDone { op, result: Ok(pos) });
        drain(&mut node);
    }
    let (_, origin) = arriving(&mut node, conn, &file3);
    assert_eq!(origin, LtxOrigin::Upstream, "the snapshot took this replica's pages away");
}
