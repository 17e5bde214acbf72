//! Carrying out what a Node asks: lease requests, disk writes, streams, acknowledgements.

use super::*;
use replite_core::node::LtxOrigin;

impl Sim {
    pub(super) fn lease_rpc(&mut self, i: usize, op: Option<OpId>, req: LeaseReq) {
        let s = self.store_index();
        let inc = self.nodes[i].inc;
        if self.link_ok(i, s) {
            let lat = self.latency();
            self.schedule(lat, Ev::LeaseRequest { node: i, inc, op, req });
        } else if let Some(op) = op {
            self.schedule(1_000, Ev::LeaseAnswer { node: i, inc, input: Input::LeaseRequestFailed { op } });
        }
    }

    /// Starts a persist (inline or spooled; `replicated` unless it is the node's own commit),
    /// which a crash may cut short.
    fn start_persist(&mut self, i: usize, db: DbName, op: OpId, persist: DiskOp, replicated: bool) {
        let inc = self.nodes[i].inc;
        if let DiskOp::Persist { min: TxId(1), bytes, .. } = &persist
            && replicated
            && let Ok(v) = replite_core::ltx::verify(bytes.as_slice())
        {
            // A snapshot from the primary: from here a crash may leave it in place of this
            // node's history.
            self.facts.push(Fact::SnapshotWritten { node: i, db: db.clone(), pos: v.post_apply_pos() });
        }
        self.nodes[i].ops.insert(op, (db, persist));
        let d = 1 + self.rng.below(4);
        self.schedule(d, Ev::DiskDone { node: i, inc, op });
        if self.faulty() && self.rng.chance(self.cfg.faults.crash_in_write) {
            let at = self.rng.below(d);
            self.schedule(at, Ev::Crash { node: i, inc });
        }
    }

    pub(super) fn carry_out(&mut self, i: usize, o: Output, is_commit: bool, epoch: Option<Epoch>) {
        let inc = self.nodes[i].inc;
        match o {
            Output::AcquireLease { op } => self.lease_rpc(i, Some(op), LeaseReq::Acquire),
            Output::RenewLease { op, epoch } => self.lease_rpc(i, Some(op), LeaseReq::Renew(epoch)),
            Output::TakeOverLease { op, epoch } => self.lease_rpc(i, Some(op), LeaseReq::TakeOver(epoch)),
            Output::ReleaseLease { epoch } => self.lease_rpc(i, None, LeaseReq::Release(epoch)),
            // The old primary just stops renewing; the store keeps its term until taken over.
            Output::HandOverLease { epoch } => self.trace(format!("node {i} hands over lease {epoch}")),
            Output::ObserveLease { op } => self.lease_rpc(i, Some(op), LeaseReq::Observe),
            Output::PersistLtx { db, op, min, max, bytes, base, durable, origin } => {
                // A transaction back at the replica that sent it under a halt lock: its pages
                // are in the database since the primary committed it.
                let apply = origin != LtxOrigin::HaltEcho;
                if !apply {
                    self.stats.halt_echoes += 1;
                }
                if is_commit {
                    let post = replite_core::ltx::verify(bytes.as_slice())
                        .map(|v| v.post_apply_pos())
                        .expect("a primary's own LTX verifies");
                    let pre = self.nodes[i].node.as_ref().map(|n| n.pos(&db)).unwrap_or(Pos::ZERO);
                    let epoch = epoch.expect("a commit was accepted, so the node had a write grant");
                    self.facts.push(Fact::Committed { node: i, db: db.clone(), epoch, pre, post, at: self.now });
                }
                let source_epoch = if is_commit { None } else { self.nodes[i].upstream_epoch };
                self.trace(format!("node {i} persists {db} {min}-{max} durable {durable}"));
                self.start_persist(
                    i,
                    db,
                    op,
                    DiskOp::Persist { min, max, bytes, base, source_epoch, durable, apply },
                    !is_commit,
                );
            }
            Output::SpoolBegin { spool, .. } => {
                self.stats.spooled += 1;
                self.nodes[i].spools.insert(spool, Vec::new());
            }
            Output::SpoolWrite { spool, bytes } => {
                if let Some(file) = self.nodes[i].spools.get_mut(&spool) {
                    file.extend_from_slice(&bytes);
                }
            }
            Output::SpoolEnd { spool } => {
                let result = match self.nodes[i].spools.get(&spool) {
                    Some(file) => replite_core::ltx::verify(file.as_slice()).map_err(|e| e.to_string()),
                    None => Err("spool missing".into()),
                };
                let d = 1 + self.rng.below(4);
                self.schedule(d, Ev::SpoolDone { node: i, inc, input: Input::SpoolDone { spool, result } });
            }
            Output::SpoolDiscard { spool } => {
                if self.nodes[i].spools.remove(&spool).is_some() {
                    self.stats.spools_discarded += 1;
                }
            }
            Output::PersistSpooledLtx { db, op, spool, min, max, base, origin } => {
                let apply = origin != LtxOrigin::HaltEcho;
                if !apply {
                    self.stats.halt_echoes += 1;
                }
                let Some(bytes) = self.nodes[i].spools.remove(&spool) else {
                    panic!("seed {}: node {i} persists spool {spool:?}, which it never completed", self.seed);
                };
                let source_epoch = self.nodes[i].upstream_epoch;
                // A spool is fsynced before `SpoolDone` and renamed into place with a directory fsync.
                let durable = true;
                self.trace(format!("node {i} persists spooled {db} {min}-{max}"));
                let persist = DiskOp::Persist { min, max, bytes, base, source_epoch, durable, apply };
                self.start_persist(i, db, op, persist, true);
            }
            Output::ReplayLtx { db, op, min, max, base } => {
                self.nodes[i].ops.insert(op, (db, DiskOp::Replay { min, max, base }));
                let d = 1 + self.rng.below(4);
                self.schedule(d, Ev::DiskDone { node: i, inc, op });
            }
            Output::FlushLtx { db, op, through } => {
                self.nodes[i].ops.insert(op, (db, DiskOp::Flush { through }));
                // An fsync is the slowest disk operation, sometimes by far: commits keep
                // arriving while it runs.
                let d = 1 + if self.rng.chance(0.2) { self.rng.below(60) } else { self.rng.below(4) };
                self.schedule(d, Ev::DiskDone { node: i, inc, op });
                if self.faulty() && self.rng.chance(self.cfg.faults.crash_in_flush) {
                    let at = self.rng.below(d);
                    self.schedule(at, Ev::Crash { node: i, inc });
                }
            }
            Output::SyncDone { sync, result } => {
                let Some((db, pos)) = self.nodes[i].syncs.remove(&sync) else { return };
                self.trace(format!("node {i} answers fsync {} of {db} at {pos}: {result:?}", sync.0));
                if result.is_ok() && pos != Pos::ZERO {
                    self.stats.fsyncs_answered += 1;
                    self.facts.push(Fact::Promised { node: i, db, pos });
                }
            }
            Output::PersistEpoch { epoch } => self.nodes[i].saved_epoch = epoch,
            Output::PersistRejoin { db, txid } => {
                self.trace(format!("node {i} rejoin {db} {txid}"));
                self.nodes[i].disks.entry(db).or_default().rejoin_txid = txid;
            }
            Output::RemoveLtx { db, min, max } => {
                self.nodes[i].disks.entry(db).or_default().remove(min, max);
            }
            Output::AckCommit { db, pos, commit } => {
                self.acked_commits += 1;
                self.trace(format!("node {i} acknowledges {pos}"));
                self.facts.push(Fact::Acked { node: i, db: db.clone(), pos, at: self.now });
                if self.nodes[i].requested.remove(&commit) {
                    self.facts.push(Fact::Promised { node: i, db, pos });
                }
                self.answer_halt_tx(i, commit, true);
                // The application's commit under a halt lock returns: its pages stay.
                self.nodes[i].halt_sent.remove(&commit);
            }
            Output::RefuseCommit { commit, reason } => {
                self.stats.refused += 1;
                self.nodes[i].requested.remove(&commit);
                self.answer_halt_tx(i, commit, false);
                if let Some((db, undo)) = self.nodes[i].halt_sent.remove(&commit) {
                    // SQLite rolls the transaction back: its pages leave the database file.
                    self.nodes[i].disks.entry(db.clone()).or_default().roll_back(undo);
                    // The command that wrote it fails, and `replite run` lets go of the lock.
                    if self.nodes[i].halt_primary.remove(&db).is_some() {
                        self.trace(format!("node {i} lets go of its halt lock on {db} (refused)"));
                        self.feed(i, Input::ReleaseHalt { db });
                    }
                }
                self.trace(format!("node {i} refuses commit {}: {reason:?}", commit.0))
            }
            Output::Connect { conn, peer, ext, body } => {
                self.nodes[i].current_up = Some(conn);
                let key = self.next_conn;
                self.next_conn += 1;
                let Some(p) = self.index_of(peer) else { return };
                let pinc = self.nodes[p].inc;
                self.conns.insert(
                    key,
                    Conn {
                        replica: i,
                        primary: p,
                        up: conn,
                        rinc: inc,
                        pinc,
                        alive: true,
                        epoch: None,
                        last: [0, 0],
                        floor: 0,
                        acked: false,
                        offered: ext,
                        held: VecDeque::new(),
                        stream_paused: false,
                    },
                );
                if self.link_ok(i, p) {
                    let lat = self.latency();
                    self.schedule(lat, Ev::ConnArrive { key });
                    // The body travels with the request.
                    self.pending_bodies.insert(key, body);
                } else {
                    self.kill_conn(key);
                }
            }
            Output::SendUpstream { conn, bytes } => {
                if let Some(key) = self.conn_by_up(i, conn) {
                    self.send(key, false, bytes);
                }
            }
            Output::CloseUpstream { conn } => {
                if let Some(key) = self.conn_by_up(i, conn) {
                    self.kill_conn(key);
                }
            }
            Output::SendDownstream { conn, bytes } => self.send(conn.0, true, bytes),
            Output::StreamLtx { conn, db, min, max } => {
                self.stats.ltx_sent += 1;
                let Some(file) = self.nodes[i].disks.get(&db).and_then(|d| d.ltx.get(&(min, max))).cloned() else {
                    self.trace(format!("node {i} lacks LTX {min}-{max} to stream"));
                    self.kill_conn(conn.0);
                    return;
                };
                let mut bytes = Vec::new();
                encode_ltx_message(&db, &file, max, &mut bytes);
                self.send(conn.0, true, bytes);
            }
            Output::StreamSnapshot { conn, db: name, pos } => {
                self.stats.snapshots += 1;
                let empty = Disk::default();
                let db = &self.nodes[i].disks.get(&name).unwrap_or(&empty).db;
                let options = SnapshotOptions { max_txid: pos.txid, timestamp_ms: 0, compress: false };
                let (file, _, trailer) = encode_database(db.as_slice(), db.len() as u64, Vec::new(), options)
                    .expect("a primary's database file encodes");
                assert_eq!(
                    trailer.post_apply_checksum, pos.checksum,
                    "seed {}: node {i}'s database file is not at its position {pos}",
                    self.seed
                );
                let mut bytes = Vec::new();
                encode_ltx_message(&name, &file, pos.txid, &mut bytes);
                self.send(conn.0, true, bytes);
            }
            Output::CloseDownstream { conn } => self.finish_conn(conn.0),
            Output::RequestHandoff { primary, to } => {
                if let Some(p) = self.index_of(primary)
                    && self.link_ok(i, p)
                {
                    let lat = self.latency();
                    let pinc = self.nodes[p].inc;
                    self.schedule(lat, Ev::Request { node: p, inc: pinc, input: Input::Handoff { to } });
                }
            }
            Output::HaltHeld { db, result } => {
                self.trace(format!("node {i} halt lock on {db}: {result:?}"));
                if result.is_ok() {
                    self.stats.halt_locks += 1;
                } else {
                    self.nodes[i].halt_primary.remove(&db);
                }
            }
            Output::SendUnderHalt { commit, db, bytes, .. } => self.send_halt_tx(i, commit, db, bytes),
            Output::Event(e) => {
                let positions = |sim: &Self| {
                    sim.nodes[i]
                        .node
                        .as_ref()
                        .map(|n| n.positions().map(|(d, p)| (d.clone(), p)).collect())
                        .unwrap_or_default()
                };
                if let Event::BecamePrimary { epoch } = e {
                    self.facts.push(Fact::BecamePrimary { node: i, epoch, positions: positions(self), at: self.now });
                }
                if let Event::SteppedDown { epoch, reason: "handed off" } = e
                    && let Some(to) = self.nodes[i].handoff_to.and_then(|id| self.nodes.iter().position(|n| n.id == id))
                    && let Some(expires_by) = self.store.expiry_of(self.now, epoch)
                {
                    self.facts.push(Fact::HandedOff { node: i, to, epoch, positions: positions(self), expires_by });
                }
                if let Event::Resync { .. } = e {
                    self.stats.resyncs += 1;
                }
                if let Event::ReplicaCutOff { .. } = e {
                    self.stats.cut_offs += 1;
                }
                if let Event::SyncDegraded { db, txid } = &e {
                    self.facts.push(Fact::Degraded { db: db.clone(), txid: *txid });
                }
                self.trace(format!("node {i}: {e:?}"));
            }
        }
    }
}
