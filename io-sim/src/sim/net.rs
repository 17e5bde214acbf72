//! Stream connections between simulated nodes: latency, loss, duplication, reordering,
//! silent vanishing, partitions and resets, and the messages a paused replica holds back.

use super::*;

impl Sim {
    pub(super) fn latency(&mut self) -> u64 {
        1 + self.rng.below(8) + if self.rng.chance(0.05) { self.rng.below(40) } else { 0 }
    }

    pub(super) fn link_ok(&self, from: usize, to: usize) -> bool {
        !self.blocked.contains(&(from, to))
    }

    pub(super) fn kill_conn(&mut self, key: u64) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if !c.alive {
            return;
        }
        c.alive = false;
        // Held data dies with the connection, as data in flight to a dead one does. Only data
        // is ever held: a replica's close is scheduled below, once the connection is dead.
        debug_assert!(c.held.iter().all(|ev| matches!(ev, Ev::ConnData { .. })));
        c.held.clear();
        c.stream_paused = false;
        let d1 = 50 + self.rng.below(1_500);
        let d2 = 50 + self.rng.below(1_500);
        self.schedule(d1, Ev::ConnClosed { key, to_replica: true });
        self.schedule(d2, Ev::ConnClosed { key, to_replica: false });
    }

    /// The primary closed the stream: like the daemon's stream task, which sends what is
    /// queued and then ends the response, the replica sees everything already sent (an end
    /// frame among it, say) and then the close, in order. A connection that dies meanwhile
    /// closes as dead ones do.
    pub(super) fn finish_conn(&mut self, key: u64) {
        let Some(c) = self.conns.get(&key) else { return };
        if !c.alive {
            return;
        }
        let after_data = c.last[usize::from(true)].max(self.now + self.latency());
        let wait = after_data - self.now;
        // Behind any message already due then (a later sequence number), and the primary's
        // side last, since it removes the connection.
        self.schedule(wait, Ev::ConnClosed { key, to_replica: true });
        self.schedule(wait + 1, Ev::ConnClosed { key, to_replica: false });
    }

    /// `ev` back if it may be delivered now; otherwise it joins its connection's held
    /// messages. Stream data or the stream's end for a replica waits when the replica's Node
    /// does not accept more stream bytes (`Node::accepts_upstream_data`) or when earlier
    /// messages of the same stream wait: nothing overtakes them.
    pub(super) fn hold_for_replica(&mut self, ev: Ev) -> Option<Ev> {
        let (Ev::ConnData { key, to_replica: true, .. } | Ev::ConnClosed { key, to_replica: true }) = ev else {
            return Some(ev);
        };
        let Some(c) = self.conns.get(&key) else { return Some(ev) };
        if !c.alive {
            debug_assert!(c.held.is_empty(), "a dead connection holds nothing");
            return Some(ev);
        }
        let refuses = self.refuses_stream_bytes(c.replica);
        let c = self.conns.get_mut(&key).expect("looked up above");
        if c.held.is_empty() {
            if !refuses {
                return Some(ev);
            }
            c.stream_paused = true;
            c.held.push_back(ev);
            self.stats.stream_pauses += 1;
            self.schedule(1, Ev::ReleaseHeld { key });
            return None;
        }
        c.held.push_back(ev);
        None
    }

    /// The oldest held message of a connection if its replica accepts stream bytes again;
    /// otherwise the release is tried again a millisecond later. The next release is due at
    /// once, behind what is already queued for this millisecond, so other events interleave.
    pub(super) fn release_held(&mut self, key: u64) -> Option<Ev> {
        let c = self.conns.get(&key)?;
        if c.held.is_empty() {
            // The connection died since: its held data was dropped with it.
            debug_assert!(!c.alive, "a live connection's release is scheduled only while it holds");
            return None;
        }
        let refuses = self.refuses_stream_bytes(c.replica);
        let c = self.conns.get_mut(&key).expect("looked up above");
        if refuses {
            if !c.stream_paused {
                c.stream_paused = true;
                self.stats.stream_pauses += 1;
            }
            self.schedule(1, Ev::ReleaseHeld { key });
            return None;
        }
        c.stream_paused = false;
        let ev = c.held.pop_front();
        if !c.held.is_empty() {
            self.schedule(0, Ev::ReleaseHeld { key });
        }
        ev
    }

    /// Whether node `i` runs and its Node asks for no more stream bytes for now.
    fn refuses_stream_bytes(&self, i: usize) -> bool {
        self.nodes[i].node.as_ref().is_some_and(|n| !n.accepts_upstream_data())
    }

    pub(super) fn conn_by_up(&self, i: usize, up: UpstreamId) -> Option<u64> {
        self.conns.iter().find(|(_, c)| c.replica == i && c.up == up).map(|(k, _)| *k)
    }

    pub(super) fn send(&mut self, key: u64, to_replica: bool, bytes: Vec<u8>) {
        let Some(c) = self.conns.get(&key) else { return };
        if !c.alive {
            return;
        }
        let (from, to) = if to_replica { (c.primary, c.replica) } else { (c.replica, c.primary) };
        if !self.link_ok(from, to) {
            self.kill_conn(key);
            return;
        }
        let f = self.cfg.faults.clone();
        if self.now < self.cfg.faults_until_ms && self.rng.chance(f.msg_drop) {
            // A stream is TCP: a lost segment that is never retransmitted is a reset.
            self.stats.net_faults += 1;
            self.kill_conn(key);
            return;
        }
        let can_vanish = c.acked;
        if self.now < self.cfg.faults_until_ms && can_vanish && self.rng.chance(f.msg_vanish) {
            self.stats.net_faults += 1;
            return;
        }
        let copies = if self.now < self.cfg.faults_until_ms && self.rng.chance(f.msg_dup) { 2 } else { 1 };
        let reorder = self.now < self.cfg.faults_until_ms && self.rng.chance(f.msg_reorder);
        self.stats.net_faults += u64::from(copies > 1) + u64::from(reorder);
        for _ in 0..copies {
            let lat = self.latency();
            let dir = usize::from(to_replica);
            let Some(c) = self.conns.get_mut(&key) else { return };
            let at = if reorder { (self.now + lat).max(c.floor) } else { (self.now + lat).max(c.last[dir]) };
            c.last[dir] = c.last[dir].max(at);
            self.seq += 1;
            self.queue.insert((at, self.seq), Ev::ConnData { key, to_replica, bytes: bytes.clone() });
        }
    }

    pub(super) fn on_conn_arrive(&mut self, key: u64) {
        let Some(c) = self.conns.get(&key) else { return };
        let (r, p, pinc) = (c.replica, c.primary, c.pinc);
        let body = self.pending_bodies.remove(&key).unwrap_or_default();
        if !c.alive || self.nodes[p].inc != pinc || self.nodes[p].node.is_none() {
            self.kill_conn(key);
            return;
        }
        let epoch = match self.nodes[p].node.as_ref().map(Node::role) {
            Some(Role::Primary { epoch }) => Some(epoch),
            _ => self.nodes[p].last_epoch_held,
        };
        let peer = self.nodes[r].id;
        let plain = self.cfg.plain_non_candidates && !self.nodes[r].cfg.candidate;
        let offered = self.conns.get(&key).map_or(Extensions::NONE, |c| c.offered);
        let ext = if plain { Extensions::NONE } else { offered.intersect(Extensions::ALL) };
        if let Some(c) = self.conns.get_mut(&key) {
            c.epoch = epoch;
            c.acked = ext.ack;
        }
        // The response headers travel first on the replica's direction.
        if self.link_ok(p, r) {
            let lat = self.latency();
            if let Some(c) = self.conns.get_mut(&key) {
                c.last[1] = self.now + lat;
                c.floor = self.now + lat;
            }
            self.schedule(lat, Ev::ConnAccepted { key, ext });
        } else {
            self.kill_conn(key);
            return;
        }
        self.feed(p, Input::DownstreamOpened { only: None, conn: DownstreamId(key), peer, ext, body });
    }
}
