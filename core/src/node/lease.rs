//! Leases: acquire when a candidate sees none held, renew well before expiry, accept writes
//! only while `now < expiry - safety margin` by our clock (expiry counted from when the
//! request was *sent*, so it is never later than the store's), step down on loss or expiry,
//! release on shutdown, hand off to a caught-up replica. Epochs are fencing tokens: a node
//! never follows a primary whose epoch is older than one it has seen.
//!
//! A handoff never frees the lease (as LiteFS, whose target takes over the old primary's
//! session): the old primary stops renewing and the target replaces the handed term with its
//! own. Releasing it instead let a lagging third candidate win it first, and the caught-up
//! nodes were then reset to its older history, losing acknowledged writes.

use crate::node::input::OpId;
use crate::node::output::{Event, Output};
use crate::node::time::Millis;
use crate::node::timer::TimerKind;
use crate::node::{Node, Role};
use crate::stream::{Frame, encode_frame};
use crate::types::{Epoch, NodeId};

/// Most lease requests outstanding at once: a store that stops answering must not make us
/// queue requests without bound; every request is answered or times out within seconds.
const MAX_LEASE_OPS_IN_FLIGHT: usize = 16;

/// How long a primary waits, writes paused, for a handoff target to catch up before it gives
/// the handoff up: a few heartbeats, far longer than a caught-up replica needs to acknowledge
/// the last commit, short enough that a stuck handoff does not look like an outage.
pub(crate) const HANDOFF_WAIT_MS: u64 = 5_000;

/// How long a handoff target keeps asking for the lease it was handed: a take-over normally
/// succeeds at the first request; this leaves room for a slow or briefly unreachable store.
pub(crate) const TAKEOVER_WINDOW_MS: u64 = 2_000;
/// How soon a handoff target asks again after a request that did not get the lease.
pub(crate) const TAKEOVER_RETRY_MS: u64 = 10;

/// A handoff waiting for its target to catch up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingHandoff {
    pub(crate) to: NodeId,
    pub(crate) conn: crate::node::input::DownstreamId,
}

/// Our view of the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Not held by us.
    None,
    /// Held under `epoch` until `expires_at` by our clock.
    Held { epoch: Epoch, expires_at: Millis, handing_off: bool },
}

/// A handoff frame told us to take over the lease of term `from`, until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Takeover {
    pub(crate) from: Epoch,
    pub(crate) until: Millis,
}

/// An outstanding lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseOp {
    pub(crate) kind: LeaseOpKind,
    pub(crate) sent_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseOpKind {
    Acquire,
    TakeOver(Epoch),
    Renew,
    Observe,
}

/// Proof that the lease was safely held when it was made: only [`Node::write_grant`] makes
/// one, and the commit path cannot assign a TXID without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteGrant {
    epoch: Epoch,
}

impl WriteGrant {
    pub(crate) fn epoch(self) -> Epoch {
        self.epoch
    }
}

impl Node {
    pub(crate) fn write_grant(&self, now: Millis) -> Option<WriteGrant> {
        let LeaseState::Held { epoch, expires_at, handing_off } = self.lease else {
            return None;
        };
        if handing_off || self.stopped {
            return None;
        }
        let safe_until = expires_at - self.cfg.lease_safety_margin_ms;
        if now < safe_until || self.cfg.faults.write_after_expiry { Some(WriteGrant { epoch }) } else { None }
    }

    /// The instant a grant made now stops being valid by time alone (`None` when fault
    /// injection lets writes through after expiry: no deadline then).
    pub(crate) fn write_grant_deadline(&self) -> Option<Millis> {
        let LeaseState::Held { expires_at, .. } = self.lease else { return None };
        if self.cfg.faults.write_after_expiry {
            return None;
        }
        Some(expires_at - self.cfg.lease_safety_margin_ms)
    }

    fn lease_request_in_flight(&self, kind: LeaseOpKind) -> bool {
        self.lease_ops.values().any(|op| op.kind == kind)
    }

    /// Whether a request that may give us the lease (acquire or take-over) is outstanding.
    pub(crate) fn acquiring(&self) -> bool {
        self.lease_ops.values().any(|op| matches!(op.kind, LeaseOpKind::Acquire | LeaseOpKind::TakeOver(_)))
    }

    fn send_lease_op(&mut self, now: Millis, kind: LeaseOpKind) {
        let op = self.next_op();
        self.lease_ops.insert(op, LeaseOp { kind, sent_at: now });
        match (kind, self.lease) {
            (LeaseOpKind::Acquire, _) => self.emit(Output::AcquireLease { op }),
            (LeaseOpKind::TakeOver(epoch), _) => self.emit(Output::TakeOverLease { op, epoch }),
            (LeaseOpKind::Observe, _) => self.emit(Output::ObserveLease { op }),
            (LeaseOpKind::Renew, LeaseState::Held { epoch, .. }) => self.emit(Output::RenewLease { op, epoch }),
            (LeaseOpKind::Renew, LeaseState::None) => {
                self.lease_ops.remove(&op);
            }
        }
    }

    fn may_acquire(&self, now: Millis) -> bool {
        // Files received from the last primary and not yet applied are applied first: this
        // node then competes with everything it holds.
        // Nor while a transaction sent under a halt lock waits for its answer: its pages are
        // in the database file until then (`halt`).
        self.cfg.candidate
            && now >= self.acquire_not_before
            && self.halt_commits.is_empty()
            && !self.dbs.values().any(|db| {
                db.needs_snapshot
                    || db.replaying()
                    || db.rejoining()
                    || !db.inbox.is_empty()
                    || db.persist.is_some()
                    || db.ahead_of_history()
            })
    }

    pub(crate) fn on_lease_poll(&mut self, now: Millis) {
        if matches!(self.lease, LeaseState::Held { .. }) {
            return;
        }
        self.timers.set(TimerKind::LeasePoll, now + self.cfg.lease_poll_ms);
        if self.acquiring() {
            return;
        }
        if let Some(Takeover { from, until }) = self.takeover
            && now < until
            && self.may_acquire(now)
        {
            self.send_lease_op(now, LeaseOpKind::TakeOver(from));
        } else if self.known_primary.is_none() && self.may_acquire(now) {
            self.send_lease_op(now, LeaseOpKind::Acquire);
        } else if self.lease_ops.len() < MAX_LEASE_OPS_IN_FLIGHT {
            // Observations are not serialised: a slow answer must not stop newer ones, and
            // answers may arrive out of order (the epoch check discards stale ones).
            self.send_lease_op(now, LeaseOpKind::Observe);
        }
    }

    pub(crate) fn on_lease_acquired(&mut self, now: Millis, op: OpId, epoch: Epoch, lease_id: String) {
        let Some(req) = self.lease_ops.remove(&op) else { return };
        if epoch < self.max_epoch && !self.cfg.faults.ignore_epochs {
            // A linearizable store never grants an older revision; treat it as foreign.
            return;
        }
        self.max_epoch = self.max_epoch.max(epoch);
        let expires_at = req.sent_at + self.cfg.lease_ttl_ms;
        if now >= expires_at - self.cfg.lease_safety_margin_ms {
            // The answer came too late to be useful; let it lapse rather than release a
            // lease we may not be able to renew in time.
            return;
        }
        self.lease = LeaseState::Held { epoch, expires_at, handing_off: false };
        self.lease_id = lease_id;
        self.takeover = None;
        self.lease_acquire_sent_at = req.sent_at;
        self.known_primary = Some((self.cfg.node_id, epoch));
        self.drop_upstream();
        // A primary applies no replica data: what a closed stream left unapplied goes too.
        self.clear_inboxes();
        self.acked.clear();
        for db in self.dbs.values_mut() {
            db.commit_times.clear();
        }
        self.timers.stop(TimerKind::LeasePoll);
        self.timers.stop(TimerKind::Reconnect);
        self.timers.stop(TimerKind::UpstreamIdle);
        self.arm_lease_timers(req.sent_at, expires_at);
        self.timers.set(TimerKind::Heartbeat, now + self.cfg.heartbeat_ms);
        self.timers.set(TimerKind::Retention, now + self.cfg.heartbeat_ms);
        self.event(Event::BecamePrimary { epoch });
    }

    fn arm_lease_timers(&mut self, sent_at: Millis, expires_at: Millis) {
        self.timers.set(TimerKind::LeaseRenew, sent_at + self.cfg.lease_renew_ms);
        self.timers.set(TimerKind::WriteDeadline, expires_at - self.cfg.lease_safety_margin_ms);
        if !self.cfg.faults.write_after_expiry {
            self.timers.set(TimerKind::LeaseExpiry, expires_at);
        }
    }

    pub(crate) fn on_renew_timer(&mut self, now: Millis) {
        if matches!(self.lease, LeaseState::Held { .. }) && !self.lease_request_in_flight(LeaseOpKind::Renew) {
            self.send_lease_op(now, LeaseOpKind::Renew);
        }
    }

    pub(crate) fn on_lease_renewed(&mut self, _now: Millis, op: OpId) {
        let Some(req) = self.lease_ops.remove(&op) else { return };
        if let LeaseState::Held { epoch, expires_at, handing_off } = self.lease {
            let new_expiry = expires_at.max(req.sent_at + self.cfg.lease_ttl_ms);
            self.lease = LeaseState::Held { epoch, expires_at: new_expiry, handing_off };
            self.arm_lease_timers(req.sent_at, new_expiry);
        }
    }

    pub(crate) fn on_lease_lost(&mut self, now: Millis, op: OpId) {
        if self.lease_ops.remove(&op).is_some() {
            self.step_down(now, "lease lost");
        }
    }

    pub(crate) fn on_lease_failed(&mut self, now: Millis, op: OpId) {
        let Some(req) = self.lease_ops.remove(&op) else { return };
        if req.kind == LeaseOpKind::Renew && matches!(self.lease, LeaseState::Held { .. }) {
            // Retry soon; the expiry timer steps us down if the store stays unreachable.
            self.timers.set(TimerKind::LeaseRenew, now + (self.cfg.lease_renew_ms / 4).max(1));
        }
        if matches!(req.kind, LeaseOpKind::TakeOver(_)) {
            self.retry_takeover(now, None);
        }
    }

    pub(crate) fn on_lease_expiry(&mut self, now: Millis) {
        self.step_down(now, "lease expired");
    }

    /// Gives up the primary role (the lease is gone or going).
    pub(crate) fn step_down(&mut self, now: Millis, reason: &'static str) {
        let LeaseState::Held { epoch, .. } = self.lease else { return };
        self.lease = LeaseState::None;
        self.handoff = None;
        self.timers.stop(TimerKind::Handoff);
        self.known_primary = None;
        for kind in [TimerKind::LeaseRenew, TimerKind::WriteDeadline, TimerKind::LeaseExpiry, TimerKind::Heartbeat] {
            self.timers.stop(kind);
        }
        self.lease_ops.retain(|_, op| op.kind != LeaseOpKind::Renew);
        if !self.cfg.faults.ignore_epochs {
            self.close_all_downstream();
        }
        self.fail_pending_commit_on_step_down();
        self.event(Event::SteppedDown { epoch, reason });
        self.timers.set(TimerKind::LeasePoll, now);
    }

    /// What the lease store told us about the holder (from observe or a refused acquire).
    pub(crate) fn on_observation(&mut self, now: Millis, holder: Option<(NodeId, Epoch)>) {
        match holder {
            Some((node, epoch)) => {
                if epoch < self.max_epoch && !self.cfg.faults.ignore_epochs {
                    return;
                }
                self.max_epoch = self.max_epoch.max(epoch);
                if let LeaseState::Held { epoch: ours, .. } = self.lease {
                    if node == self.cfg.node_id && epoch == ours {
                        return;
                    }
                    // Someone else holds a newer lease: ours is gone whatever our clock says.
                    self.step_down(now, "lease held by another node");
                }
                if node == self.cfg.node_id {
                    // Held in our name but not by us knowingly (an answer we lost): let it lapse.
                    self.known_primary = None;
                    self.drop_upstream();
                    return;
                }
                if self.known_primary != Some((node, epoch)) {
                    self.known_primary = Some((node, epoch));
                    self.drop_upstream();
                    self.backoff_attempt = 0;
                    self.event(Event::Following { primary: node, epoch });
                }
                // Also when nothing changed: a stream that could not open earlier (during
                // recovery, say) is opened now, unless a backoff is running.
                self.maybe_connect(now);
            }
            None => {
                if matches!(self.lease, LeaseState::Held { .. }) {
                    self.step_down(now, "lease store shows no holder");
                }
                self.known_primary = None;
                self.drop_upstream();
                if self.may_acquire(now) && !self.acquiring() {
                    self.send_lease_op(now, LeaseOpKind::Acquire);
                }
            }
        }
    }

    /// Operator handoff, as LiteFS does it under load: stop accepting new commits, let the one
    /// in flight finish, wait until the target (a replica connected with acknowledgements)
    /// has acknowledged our position, then send it the handoff frame and release the lease.
    /// If it has not caught up within [`HANDOFF_WAIT_MS`], writes resume and the handoff is
    /// refused.
    pub(crate) fn on_handoff(&mut self, now: Millis, to: NodeId) {
        let LeaseState::Held { epoch, expires_at, handing_off } = self.lease else {
            self.event(Event::HandoffRefused { to, reason: "not primary" });
            return;
        };
        if handing_off {
            self.event(Event::HandoffRefused { to, reason: "a handoff is already under way" });
            return;
        }
        let target = self.downstream.iter().find(|(_, d)| d.peer == to && d.ext.ack).map(|(c, _)| *c);
        let Some(conn) = target else {
            self.event(Event::HandoffRefused { to, reason: "target not connected with acknowledgements" });
            return;
        };
        self.lease = LeaseState::Held { epoch, expires_at, handing_off: true };
        self.handoff = Some(PendingHandoff { to, conn });
        self.timers.set(TimerKind::Handoff, now + HANDOFF_WAIT_MS);
        self.try_finish_handoff(now);
    }

    /// Completes a pending handoff once nothing is in flight and the target holds our
    /// position of every database.
    pub(crate) fn try_finish_handoff(&mut self, now: Millis) {
        let Some(PendingHandoff { to, conn }) = self.handoff else { return };
        let LeaseState::Held { epoch, .. } = self.lease else {
            self.handoff = None;
            return;
        };
        if self.dbs.values().any(|db| db.commit.is_some()) {
            return;
        }
        let caught_up = self.dbs.iter().all(|(name, db)| {
            db.pos == crate::types::Pos::ZERO || self.acked.get(&(to, name.clone())) == Some(&db.pos)
        });
        if !caught_up {
            return;
        }
        if !self.downstream.contains_key(&conn) {
            return self.abandon_handoff("target disconnected");
        }
        self.handoff = None;
        self.timers.stop(TimerKind::Handoff);
        let mut bytes = Vec::new();
        encode_frame(&Frame::Handoff { lease_id: std::mem::take(&mut self.lease_id) }, &mut bytes);
        self.emit(Output::SendDownstream { conn, bytes });
        if self.cfg.faults.release_on_handoff {
            self.emit(Output::ReleaseLease { epoch });
        } else {
            self.emit(Output::HandOverLease { epoch });
        }
        self.step_down(now, "handed off");
        // If the target never takes over, the lease expires; we then wait like any node that
        // lost it rather than take back what we just gave away.
        self.acquire_not_before = now + self.cfg.demote_delay_ms;
    }

    /// Gives up a pending handoff: writes resume.
    pub(crate) fn abandon_handoff(&mut self, reason: &'static str) {
        let Some(PendingHandoff { to, .. }) = self.handoff.take() else { return };
        self.timers.stop(TimerKind::Handoff);
        if let LeaseState::Held { epoch, expires_at, .. } = self.lease {
            self.lease = LeaseState::Held { epoch, expires_at, handing_off: false };
        }
        self.event(Event::HandoffRefused { to, reason });
    }

    /// The primary of term `from` handed us its lease (a handoff frame): take it over now,
    /// without waiting for the next poll.
    pub(crate) fn take_over(&mut self, now: Millis, from: Epoch) {
        if matches!(self.role(), Role::Primary { .. }) || !self.may_acquire(now) {
            return;
        }
        self.takeover = Some(Takeover { from, until: now + TAKEOVER_WINDOW_MS });
        if !self.acquiring() {
            self.send_lease_op(now, LeaseOpKind::TakeOver(from));
        }
    }

    /// After a lease answer during a take-over: ask again shortly while the handed term is
    /// still the one the store holds (the request failed, or raced the old primary's last
    /// renewal); stop once another term holds it or the window has passed.
    pub(crate) fn retry_takeover(&mut self, now: Millis, holder: Option<(NodeId, Epoch)>) {
        let Some(Takeover { from, until }) = self.takeover else { return };
        let handed_term_stands = holder.is_none_or(|(_, epoch)| epoch == from);
        if now < until && handed_term_stands && !matches!(self.lease, LeaseState::Held { .. }) {
            self.timers.set(TimerKind::LeasePoll, now + TAKEOVER_RETRY_MS);
        } else {
            self.takeover = None;
        }
    }

    /// Operator promotion, as LiteFS does it: ask the current primary to hand off to us; with
    /// no primary, try to take the free lease.
    pub(crate) fn on_promote(&mut self, now: Millis) {
        if !self.cfg.candidate {
            self.event(Event::PromoteRefused { reason: "not a candidate" });
            return;
        }
        match self.role() {
            Role::Primary { .. } => {}
            Role::Replica { primary, .. } => {
                let to = self.cfg.node_id;
                self.emit(Output::RequestHandoff { primary, to });
            }
            _ => {
                if self.may_acquire(now) && !self.acquiring() {
                    self.send_lease_op(now, LeaseOpKind::Acquire);
                }
            }
        }
    }

    pub(crate) fn on_shutdown(&mut self, now: Millis) {
        if let LeaseState::Held { epoch, expires_at, .. } = self.lease {
            self.lease = LeaseState::Held { epoch, expires_at, handing_off: true };
            self.emit(Output::ReleaseLease { epoch });
            self.step_down(now, "shutdown");
        }
        self.drop_upstream();
        self.clear_inboxes();
        self.flush_all_on_shutdown();
        self.stopped = true;
        self.timers = Default::default();
    }
}
