//! Unit tests of a replica receiving LTX files too big to hold in memory: they are spooled as
//! they arrive and applied only once verified, in stream order; anything short of a verified,
//! contiguous file is discarded and nothing is applied.

use super::tests::{config, connected_replica_with, db, drain, ltx_message, primary_with_two_commits};
use super::*;
use crate::ltx;
use crate::stream::{Frame, encode_frame};
use crate::types::TxId;

/// A replica whose inline limit is below the size of any test file, so every file spools.
fn spooling_replica() -> (Node, UpstreamId) {
    let mut cfg = config(2);
    cfg.ltx_inline_max_bytes = 64;
    connected_replica_with(cfg)
}

/// The spools begun, and the bytes written to each, in order.
fn spooled(out: &[Output]) -> Vec<(SpoolId, Vec<u8>, bool)> {
    let mut spools: Vec<(SpoolId, Vec<u8>, bool)> = Vec::new();
    for o in out {
        match o {
            Output::SpoolBegin { spool, db: name } => {
                assert_eq!(name, &db());
                spools.push((*spool, Vec::new(), false));
            }
            Output::SpoolWrite { spool, bytes } => {
                let s = spools.iter_mut().find(|s| s.0 == *spool).expect("written after it began");
                assert!(!s.2, "written after it ended");
                s.1.extend_from_slice(bytes);
            }
            Output::SpoolEnd { spool } => spools.iter_mut().find(|s| s.0 == *spool).expect("begun").2 = true,
            _ => {}
        }
    }
    spools
}

fn persists_anything(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::PersistLtx { .. } | Output::PersistSpooledLtx { .. }))
}

#[test]
fn a_file_past_the_inline_limit_is_spooled_and_persisted_only_once_verified() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = spooling_replica();
    let message = ltx_message(&files[0]);
    // Fed in small pieces, as the network delivers it: memory holds no more than a piece.
    let mut out = Vec::new();
    for piece in message.chunks(100) {
        node.handle(Millis(2), Input::UpstreamData { conn, bytes: piece.to_vec() });
        out.extend(drain(&mut node));
    }
    let spools = spooled(&out);
    assert_eq!(spools.len(), 1, "{out:?}");
    let (spool, bytes, ended) = spools[0].clone();
    assert_eq!(bytes, files[0]);
    assert!(ended);
    assert!(!persists_anything(&out), "nothing is persisted before verification: {out:?}");

    let verified = ltx::verify(files[0].as_slice()).expect("valid");
    node.handle(Millis(3), Input::SpoolDone { spool, result: Ok(verified) });
    let out = drain(&mut node);
    let op = out
        .iter()
        .find_map(|o| match o {
            Output::PersistSpooledLtx { op, spool: s, min: TxId(1), max: TxId(1), .. } if *s == spool => Some(*op),
            _ => None,
        })
        .expect("the verified snapshot is persisted from its spool");
    let pos = verified.post_apply_pos();
    node.handle(Millis(4), Input::LtxDone { op, result: Ok(pos) });
    let out = drain(&mut node);
    let mut ack = Vec::new();
    encode_frame(&Frame::Ack { pos, name: db() }, &mut ack);
    assert!(out.contains(&Output::SendUpstream { conn, bytes: ack }), "{out:?}");
    assert_eq!(node.pos(&db()), pos);
}

#[test]
fn a_spool_that_fails_verification_resyncs_and_applies_nothing() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = spooling_replica();
    node.handle(Millis(2), Input::UpstreamData { conn, bytes: ltx_message(&files[0]) });
    let (spool, _, _) = spooled(&drain(&mut node))[0].clone();
    node.handle(Millis(3), Input::SpoolDone { spool, result: Err("file checksum mismatch".into()) });
    let out = drain(&mut node);
    assert!(!persists_anything(&out), "{out:?}");
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::Resync { reason }) if reason.contains("file checksum mismatch")))
    );
    assert!(out.contains(&Output::CloseUpstream { conn }));
    assert_eq!(node.pos(&db()), Pos::ZERO);
}

#[test]
fn a_stream_cut_mid_file_discards_the_spool_and_a_late_verification_changes_nothing() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = spooling_replica();
    // The primary cuts the file into small chunks; the stream ends after the first half.
    let mut message = Vec::new();
    encode_frame(&Frame::Epoch { epoch: Epoch(5), node_id: NodeId(1) }, &mut message);
    encode_frame(&Frame::Ltx { size: 0, name: db() }, &mut message);
    for chunk in files[0].chunks(100).take(files[0].len() / 200) {
        message.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        message.extend_from_slice(chunk);
    }
    node.handle(Millis(2), Input::UpstreamData { conn, bytes: message });
    let out = drain(&mut node);
    let (spool, _, ended) = spooled(&out)[0].clone();
    assert!(!ended, "half a file is not complete");
    node.handle(Millis(3), Input::UpstreamClosed { conn });
    let out = drain(&mut node);
    assert!(out.contains(&Output::SpoolDiscard { spool }), "{out:?}");
    // Whatever the spool's thread says afterwards, nothing is applied.
    let verified = ltx::verify(files[0].as_slice()).expect("valid");
    node.handle(Millis(4), Input::SpoolDone { spool, result: Ok(verified) });
    let out = drain(&mut node);
    assert!(!persists_anything(&out), "{out:?}");
    assert_eq!(node.pos(&db()), Pos::ZERO);
}

#[test]
fn a_verified_spool_that_does_not_extend_our_position_is_discarded_and_resyncs() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = spooling_replica();
    // TXID 2 to a replica at zero.
    node.handle(Millis(2), Input::UpstreamData { conn, bytes: ltx_message(&files[1]) });
    let (spool, _, _) = spooled(&drain(&mut node))[0].clone();
    let verified = ltx::verify(files[1].as_slice()).expect("valid");
    node.handle(Millis(3), Input::SpoolDone { spool, result: Ok(verified) });
    let out = drain(&mut node);
    assert!(!persists_anything(&out), "{out:?}");
    assert!(out.contains(&Output::SpoolDiscard { spool }));
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::Resync { .. }))));
}

#[test]
fn files_after_a_spooled_one_wait_for_it_even_when_verified_first() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = spooling_replica();
    let mut bytes = ltx_message(&files[0]);
    bytes.extend(ltx_message(&files[1]));
    node.handle(Millis(2), Input::UpstreamData { conn, bytes });
    let spools = spooled(&drain(&mut node));
    assert_eq!(spools.len(), 2);
    let (first, second) = (spools[0].0, spools[1].0);
    let v0 = ltx::verify(files[0].as_slice()).expect("valid");
    let v1 = ltx::verify(files[1].as_slice()).expect("valid");
    node.handle(Millis(3), Input::SpoolDone { spool: second, result: Ok(v1) });
    assert!(!persists_anything(&drain(&mut node)), "the second file must wait for the first");
    node.handle(Millis(4), Input::SpoolDone { spool: first, result: Ok(v0) });
    let out = drain(&mut node);
    let ops: Vec<(OpId, SpoolId)> = out
        .iter()
        .filter_map(|o| match o {
            Output::PersistSpooledLtx { op, spool, .. } => Some((*op, *spool)),
            _ => None,
        })
        .collect();
    assert_eq!(ops.iter().map(|o| o.1).collect::<Vec<_>>(), vec![first], "one file at a time, in order");
    node.handle(Millis(5), Input::LtxDone { op: ops[0].0, result: Ok(v0.post_apply_pos()) });
    let out = drain(&mut node);
    assert!(
        out.iter().any(|o| matches!(o, Output::PersistSpooledLtx { spool, min: TxId(2), .. } if *spool == second)),
        "{out:?}"
    );
}

#[test]
fn a_file_within_the_inline_limit_never_touches_a_spool() {
    let (_, files, _) = primary_with_two_commits();
    let (mut node, conn) = connected_replica_with(config(2));
    node.handle(Millis(2), Input::UpstreamData { conn, bytes: ltx_message(&files[0]) });
    let out = drain(&mut node);
    assert!(spooled(&out).is_empty());
    assert!(out.iter().any(|o| matches!(o, Output::PersistLtx { .. })), "{out:?}");
}
