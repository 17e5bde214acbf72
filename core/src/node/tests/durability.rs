//! Deferred durability: what is acknowledged before it is durable, what waits for a flush.

use super::*;

fn commit_with(node: &mut Node, now: u64, id: u64, pages: Vec<PageChange>, durability: Durability) -> Vec<Output> {
    let page_size = PageSize::new(PAGE).expect("valid");
    let input = Input::Commit {
        commit: CommitId(id),
        db: db(),
        page_size,
        pages,
        commit_pages: 1,
        removed: Vec::new(),
        durability,
        remote: None,
    };
    node.handle(Millis(now), input);
    drain(node)
}

fn persisted_durably(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::PersistLtx { durable: true, .. }))
}

fn ack_of(out: &[Output], id: u64) -> bool {
    out.iter().any(|o| matches!(o, Output::AckCommit { commit, .. } if *commit == CommitId(id)))
}

fn sync_answer(out: &[Output], id: u64) -> Option<Result<(), RefuseReason>> {
    out.iter().find_map(|o| match o {
        Output::SyncDone { sync, result } if *sync == SyncId(id) => Some(*result),
        _ => None,
    })
}

/// A primary with one deferred commit written (not yet flushed); returns the flush request's
/// outputs and the position.
fn primary_with_deferred_commit() -> (Node, Vec<Output>, Pos) {
    let mut node = primary(config(1));
    let out = commit_with(&mut node, 10, 1, vec![change(1, None, 1)], Durability::Deferred);
    assert!(!persisted_durably(&out), "a deferred commit is written without an fsync: {out:?}");
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(11), Input::LtxDone { op, result: Ok(pos) });
    let out = drain(&mut node);
    (node, out, pos)
}

#[test]
fn a_deferred_commit_is_acknowledged_once_written_before_it_is_durable() {
    let (node, out, pos) = primary_with_deferred_commit();
    assert!(ack_of(&out, 1), "{out:?}");
    assert_eq!(node.pos(&db()), pos);
    // Nobody waits for it: the flush comes with the flush timer, within `flush_ms`.
    assert!(flush_op(&out).is_none(), "{out:?}");
    assert_eq!(node.poll_timeout(), Some((Millis(11 + DEFAULT_FLUSH_MS), TimerKind::Flush)));
    let mut node = node;
    assert_eq!(flush_op(&flush_timer(&mut node)).map(|(_, through)| through), Some(TxId(1)));
}

#[test]
fn an_application_fsync_is_answered_only_once_the_deferred_commits_are_flushed() {
    let (mut node, _, _) = primary_with_deferred_commit();
    node.handle(Millis(12), Input::Sync { sync: SyncId(5), db: db() });
    let waiting = drain(&mut node);
    assert_eq!(sync_answer(&waiting, 5), None, "answered before durable: {waiting:?}");
    // The fsync does not wait for the timer: its flush starts at once.
    let done = flushed(&mut node, 13, &waiting);
    assert_eq!(sync_answer(&done, 5), Some(Ok(())), "{done:?}");
    // Nothing is pending any more: the next fsync is answered at once.
    node.handle(Millis(14), Input::Sync { sync: SyncId(6), db: db() });
    assert_eq!(sync_answer(&drain(&mut node), 6), Some(Ok(())));
}

#[test]
fn a_failed_flush_fails_the_waiting_fsync_and_is_retried_by_the_timer() {
    let (mut node, _, _) = primary_with_deferred_commit();
    node.handle(Millis(12), Input::Sync { sync: SyncId(5), db: db() });
    let out = drain(&mut node);
    let (op, _) = flush_op(&out).expect("a flush request");
    node.handle(Millis(13), Input::LtxFlushed { op, result: Err(IoFailure::Io) });
    let failed = drain(&mut node);
    assert_eq!(sync_answer(&failed, 5), Some(Err(RefuseReason::Disk)), "{failed:?}");
    let (at, kind) = node.poll_timeout().expect("a timer");
    assert_eq!(kind, TimerKind::Flush);
    node.handle(at, Input::Timeout);
    assert!(flush_op(&drain(&mut node)).is_some(), "the flush is retried");
}

#[test]
fn a_replica_whose_received_file_was_lost_before_its_flush_starts_over_from_a_snapshot() {
    let (mut node, conn) = replica_with_two_applied();
    assert_eq!(node.pos(&db()).txid, TxId(2), "applied, not yet durable");
    let flush = flush_timer(&mut node);
    let (op, _) = flush_op(&flush).expect("a flush of TXID 2");
    node.handle(Millis(40), Input::LtxFlushed { op, result: Err(IoFailure::Mismatch) });
    let out = drain(&mut node);
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))), "{out:?}");
    assert!(out.contains(&Output::CloseUpstream { conn }), "{out:?}");
    for max in [1, 2] {
        let removed = Output::RemoveLtx { db: db(), min: TxId(max), max: TxId(max) };
        assert!(out.contains(&removed), "history dropped: {out:?}");
    }
    assert_eq!(node.pos(&db()), Pos::ZERO);
    // It reconnects (nothing is left unflushed) asking for the database from the start.
    let mut reconnect = Vec::new();
    let mut body = None;
    for _ in 0..20 {
        let (at, _) = node.poll_timeout().expect("a timer");
        node.handle(at, Input::Timeout);
        reconnect = drain(&mut node);
        body = reconnect.iter().find_map(|o| match o {
            Output::Connect { body, .. } => Some(body.clone()),
            _ => None,
        });
        if body.is_some() {
            break;
        }
    }
    let mut zero = BTreeMap::new();
    zero.insert(db(), Pos::ZERO);
    assert_eq!(body, Some(encode_pos_map(&zero)), "{reconnect:?}");
}

#[test]
fn a_requested_commit_after_unflushed_ones_waits_for_the_flush_that_covers_them_all() {
    let (mut node, _, pos1) = primary_with_deferred_commit();
    // TXID 1's timer flush is in flight when the next commit comes.
    let first_out = flush_timer(&mut node);
    let out = commit_with(&mut node, 20, 2, vec![change(1, Some(&page(1)), 2)], Durability::Requested);
    // One fsync of its own file would not make TXID 1 durable.
    assert!(!persisted_durably(&out), "{out:?}");
    let (op, _, bytes) = persisted(&out);
    let _ = pos1;
    let pos2 = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(21), Input::LtxDone { op, result: Ok(pos2) });
    let out = drain(&mut node);
    assert!(!ack_of(&out, 2), "acknowledged before durable: {out:?}");
    // The flush of TXID 1 is still in flight; when it ends, the next covers TXID 2.
    let next = flushed(&mut node, 22, &first_out);
    assert!(!ack_of(&next, 2), "{next:?}");
    assert_eq!(flush_op(&next).map(|(_, t)| t), Some(TxId(2)), "{next:?}");
    let done = flushed(&mut node, 23, &next);
    assert!(ack_of(&done, 2), "{done:?}");
}

#[test]
fn a_requested_commit_with_everything_durable_is_written_with_one_fsync() {
    let mut node = primary(config(1));
    let out = commit_with(&mut node, 10, 1, vec![change(1, None, 1)], Durability::Requested);
    assert!(persisted_durably(&out), "{out:?}");
    let (op, _, bytes) = persisted(&out);
    let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(11), Input::LtxDone { op, result: Ok(pos) });
    let out = drain(&mut node);
    assert!(ack_of(&out, 1), "{out:?}");
    assert!(flush_op(&out).is_none(), "nothing left to flush: {out:?}");
}

#[test]
fn a_node_that_may_not_write_refuses_an_fsync_when_nothing_waits() {
    let (mut node, conn) = connected_replica();
    let _ = conn;
    node.handle(Millis(5), Input::Sync { sync: SyncId(1), db: db() });
    assert_eq!(sync_answer(&drain(&mut node), 1), Some(Err(RefuseReason::NotPrimary)));
}

#[test]
fn a_synchronous_replica_writes_durably_and_acknowledges_only_durable_positions() {
    let (_, files, _) = primary_with_two_commits();
    let mut cfg = config(2);
    cfg.sync = Some(SyncConfig { timeout_ms: 1_000, policy: SyncPolicy::Block });
    let (mut node, _) = started(cfg, Recovery::default());
    node.handle(Millis(0), Input::LeaseObserved { op: OpId(900), holder: Some((NodeId(1), Epoch(5))) });
    let conn = drain(&mut node)
        .into_iter()
        .find_map(|o| match o {
            Output::Connect { conn, .. } => Some(conn),
            _ => None,
        })
        .expect("connects");
    node.handle(Millis(1), Input::UpstreamOpened { conn, ext: Extensions::ALL });
    for (i, file) in files.iter().enumerate() {
        node.handle(Millis(2 + i as u64), Input::UpstreamData { conn, bytes: ltx_message(file) });
        let out = drain(&mut node);
        assert!(persisted_durably(&out), "file {i}: {out:?}");
        let (op, _, _) = persisted(&out);
        let pos = ltx::verify(file.as_slice()).expect("valid").post_apply_pos();
        node.handle(Millis(3 + i as u64), Input::LtxDone { op, result: Ok(pos) });
        let out = drain(&mut node);
        let mut ack = Vec::new();
        encode_frame(&Frame::Ack { pos, name: db() }, &mut ack);
        assert!(out.contains(&Output::SendUpstream { conn, bytes: ack }), "{out:?}");
        assert!(flush_op(&out).is_none(), "{out:?}");
    }
}

#[test]
fn an_asynchronous_replica_applies_before_durable_and_reconnects_only_once_flushed() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica();
    for (i, file) in files.iter().enumerate() {
        node.handle(Millis(2 + i as u64), Input::UpstreamData { conn, bytes: ltx_message(file) });
        let out = drain(&mut node);
        let (op, _, _) = persisted(&out);
        let pos = ltx::verify(file.as_slice()).expect("valid").post_apply_pos();
        node.handle(Millis(3 + i as u64), Input::LtxDone { op, result: Ok(pos) });
        let out = drain(&mut node);
        if i == 1 {
            // The stream breaks while file 2 is applied but not yet durable.
            node.handle(Millis(10), Input::UpstreamClosed { conn });
            // Past the longest reconnect backoff.
            let at = Millis(6_000);
            node.handle(at, Input::Timeout);
            let mid = drain(&mut node);
            assert!(
                !mid.iter().any(|o| matches!(o, Output::Connect { .. })),
                "reported an unflushed position: {mid:?}"
            );
            let _ = out;
            // The flush timer fired with the others: its flush is in flight.
            let after = flushed(&mut node, at.0 + 100, &mid);
            let connect = after.iter().find_map(|o| match o {
                Output::Connect { body, .. } => Some(body.clone()),
                _ => None,
            });
            let mut map = BTreeMap::new();
            map.insert(db(), pos);
            assert_eq!(connect, Some(encode_pos_map(&map)), "{after:?}");
        }
    }
}

#[test]
fn recovery_keeps_the_chain_the_database_is_on_and_drops_files_past_a_gap() {
    let sum = |n: u64| Checksum(0x8000_0000_0000_0000 | n);
    let file = |min: u64, max: u64, pre: u64, post: u64| LtxFileInfo {
        min: TxId(min),
        max: TxId(max),
        pre: if pre == 0 { Checksum::ZERO } else { sum(pre) },
        post: sum(post),
        size: 100,
    };
    // TXID 3 was written without an fsync and lost in the crash; 4 survived; the database
    // (its WAL folded to what the history holds) is at 2.
    let rec = DbRecovery {
        ltx: vec![file(1, 1, 0, 1), file(2, 2, 1, 2), file(4, 4, 3, 4)],
        invalid_ltx: Vec::new(),
        db_checksum: sum(2),
        rejoin_txid: TxId::ZERO,
    };
    let (node, out) = started(config(1), one_db(rec));
    assert_eq!(node.pos(&db()), Pos::new(TxId(2), sum(2)));
    assert!(out.contains(&Output::RemoveLtx { db: db(), min: TxId(4), max: TxId(4) }), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::RemoveLtx { min: TxId(2), .. })), "{out:?}");
}

#[test]
fn when_the_application_fsyncs_after_each_commit_the_next_flush_starts_with_the_write() {
    let (mut node, _, pos1) = primary_with_deferred_commit();
    node.handle(Millis(12), Input::Sync { sync: SyncId(5), db: db() });
    let out = drain(&mut node);
    let done = flushed(&mut node, 13, &out);
    assert_eq!(sync_answer(&done, 5), Some(Ok(())));
    // WAL/FULL: the next commit's flush does not wait for the fsync that will follow it.
    let out = commit_with(&mut node, 20, 2, vec![change(1, Some(&page(1)), 2)], Durability::Deferred);
    let (op, _, bytes) = persisted(&out);
    let _ = pos1;
    let pos2 = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(21), Input::LtxDone { op, result: Ok(pos2) });
    let out = drain(&mut node);
    assert!(ack_of(&out, 2), "{out:?}");
    assert_eq!(flush_op(&out).map(|(_, t)| t), Some(TxId(2)), "{out:?}");
    // Two commits in a row without an fsync (WAL/NORMAL): back to the timer.
    flushed(&mut node, 22, &out);
    let out = commit_with(&mut node, 30, 3, vec![change(1, Some(&page(2)), 3)], Durability::Deferred);
    let (op, _, bytes) = persisted(&out);
    let pos3 = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(31), Input::LtxDone { op, result: Ok(pos3) });
    let out = drain(&mut node);
    assert!(flush_op(&out).is_none(), "{out:?}");
}

#[test]
fn retention_keeps_the_newest_durable_file_while_a_newer_one_is_unflushed() {
    // Commit 1 made durable, commit 2 written without an fsync: a crash may take file 2, so
    // file 1 must outlive retention until file 2 is durable (seed 1301 found this).
    let mut cfg = config(1);
    cfg.retention_ms = 0;
    let mut node = primary(cfg);
    let out = commit_with(&mut node, 10, 1, vec![change(1, None, 1)], Durability::Requested);
    let (op, _, bytes) = persisted(&out);
    let pos1 = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(11), Input::LtxDone { op, result: Ok(pos1) });
    let out = drain(&mut node);
    if flush_op(&out).is_some() {
        flushed(&mut node, 11, &out);
    }
    let out = commit_with(&mut node, 20, 2, vec![change(1, Some(&page(1)), 2)], Durability::Deferred);
    let (op, _, bytes) = persisted(&out);
    let pos2 = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
    node.handle(Millis(21), Input::LtxDone { op, result: Ok(pos2) });
    drain(&mut node);
    let removed = |out: &[Output]| out.iter().any(|o| matches!(o, Output::RemoveLtx { min: TxId(1), .. }));
    // Every timer until the flush is asked for (retention runs on the heartbeat): file 1 stays.
    let mut flush = None;
    let mut retention_runs = 0;
    for _ in 0..64 {
        let Some((at, kind)) = node.poll_timeout() else { break };
        node.handle(at, Input::Timeout);
        let out = drain(&mut node);
        assert!(!removed(&out), "file 1 removed while file 2 is not durable: {out:?}");
        retention_runs += usize::from(kind == TimerKind::Retention);
        if let Some((op, _)) = flush_op(&out) {
            flush = Some((op, at));
            if retention_runs > 0 {
                break;
            }
        }
    }
    assert!(retention_runs > 0, "retention ran while file 2 was unflushed");
    let (op, at) = flush.expect("a flush of file 2");
    node.handle(at, Input::LtxFlushed { op, result: Ok(()) });
    drain(&mut node);
    // Once file 2 is durable, file 1 may go.
    let mut gone = false;
    for _ in 0..64 {
        let Some((at, _)) = node.poll_timeout() else { break };
        node.handle(at, Input::Timeout);
        gone |= removed(&drain(&mut node));
        if gone {
            break;
        }
    }
    assert!(gone, "file 1 is removed by retention once file 2 is durable");
}

#[test]
fn past_the_size_limit_each_durable_commit_retires_the_oldest_file_right_after_its_acknowledgement() {
    // No timer runs here: the commit path itself keeps the history under the limit, one file
    // at a time, instead of a heartbeat retiring thousands at once.
    let mut cfg = config(1);
    cfg.retention_bytes = 1;
    let mut node = primary(cfg);
    let mut previous: Option<Vec<u8>> = None;
    for n in 1..=4u64 {
        let before = previous.as_deref();
        let out = commit_with(&mut node, 10 * n, n, vec![change(1, before, n as u8)], Durability::Requested);
        let (op, _, bytes) = persisted(&out);
        let pos = ltx::verify(bytes.as_slice()).expect("valid").post_apply_pos();
        node.handle(Millis(10 * n + 1), Input::LtxDone { op, result: Ok(pos) });
        let out = drain(&mut node);
        let ack = out.iter().position(|o| matches!(o, Output::AckCommit { .. }));
        let removals: Vec<(usize, TxId)> = out
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Output::RemoveLtx { min, .. } => Some((i, *min)),
                _ => None,
            })
            .collect();
        let ack = ack.expect("the commit is acknowledged");
        if n == 1 {
            assert!(removals.is_empty(), "the only file stays: {out:?}");
        } else {
            // Each durable file lets its predecessor go, after the acknowledgement.
            assert_eq!(removals.iter().map(|r| r.1).collect::<Vec<_>>(), [TxId(n - 1)], "{out:?}");
            assert!(removals.iter().all(|r| r.0 > ack), "removed before the acknowledgement: {out:?}");
        }
        assert_eq!(node.history(&db()).map(|h| h.first().map(|f| f.min)), Some(Some(TxId(n))));
        previous = Some(page(n as u8));
    }
}
