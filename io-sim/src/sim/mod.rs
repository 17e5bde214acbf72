//! The event loop, network, clients and faults.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use replite_core::ltx::page_checksum;
use replite_core::ltx::{SnapshotOptions, encode_database};
use replite_core::node::{
    CommitId, Config, DownstreamId, Durability, Event, Input, IoFailure, Millis, Node, OpId, Output, PageChange,
    Recovery, Role, SplitMix64, SpoolId, SyncConfig, SyncId, UpstreamId,
};
use replite_core::stream::{DbName, Extensions, encode_ltx_message};
use replite_core::{Epoch, NodeId, PageSize, Pgno, Pos, TxId};

use crate::disk::Disk;
use crate::lease_store::{LeaseReply, LeaseStore};

mod facts;
mod halt;
mod net;
mod outputs;
mod workload;

pub use facts::{Fact, FaultMix, SimConfig, Stats, Via};

/// Page size of simulated databases: small, so checksums stay cheap.
const PAGE_SIZE: u32 = 512;
/// Largest simulated database, in pages.
const MAX_DB_PAGES: u32 = 12;
fn page_size() -> PageSize {
    PageSize::new(PAGE_SIZE).expect("constant page size is valid")
}

/// How many trace lines are kept for failure reports.
const TRACE_LINES: usize = 60;

#[derive(Debug, Clone)]
enum Ev {
    Timeout {
        node: usize,
        generation: u64,
    },
    LeaseRequest {
        node: usize,
        inc: u64,
        op: Option<OpId>,
        req: LeaseReq,
    },
    LeaseAnswer {
        node: usize,
        inc: u64,
        input: Input,
    },
    DiskDone {
        node: usize,
        inc: u64,
        op: OpId,
    },
    /// A spool's verification finished (its `SpoolDone` input).
    SpoolDone {
        node: usize,
        inc: u64,
        input: Input,
    },
    ConnArrive {
        key: u64,
    },
    ConnAccepted {
        key: u64,
        ext: Extensions,
    },
    ConnData {
        key: u64,
        to_replica: bool,
        bytes: Vec<u8>,
    },
    ConnClosed {
        key: u64,
        to_replica: bool,
    },
    /// The head of a connection's held stream messages may be delivered (`Conn::held`).
    ReleaseHeld {
        key: u64,
    },
    /// A paused process may take the oldest of the inputs it deferred (`SimNode::deferred`).
    Resume {
        node: usize,
    },
    Client,
    Fault,
    Crash {
        node: usize,
        inc: u64,
    },
    /// A transaction a replica sent under a halt lock arrives at its primary (`POST /tx`).
    HaltTx {
        node: usize,
        inc: u64,
        replica: usize,
        rinc: u64,
        commit: CommitId,
        db: DbName,
        bytes: Vec<u8>,
    },
    /// An HTTP request from another node (a promotion's handoff request).
    Request {
        node: usize,
        inc: u64,
        input: Input,
    },
    Restart {
        node: usize,
    },
}

#[derive(Debug, Clone, Copy)]
enum LeaseReq {
    Acquire,
    TakeOver(Epoch),
    Renew(Epoch),
    Release(Epoch),
    Observe,
}

#[derive(Debug, Clone)]
enum DiskOp {
    Persist {
        min: TxId,
        max: TxId,
        bytes: Vec<u8>,
        base: replite_core::Checksum,
        source_epoch: Option<Epoch>,
        durable: bool,
        /// Unset for a replica's own transaction coming back: its pages are in the database.
        apply: bool,
    },
    Replay {
        min: TxId,
        max: TxId,
        base: replite_core::Checksum,
    },
    Flush {
        through: TxId,
    },
}

#[derive(Debug)]
struct Conn {
    replica: usize,
    primary: usize,
    up: UpstreamId,
    rinc: u64,
    pinc: u64,
    alive: bool,
    epoch: Option<Epoch>,
    last: [u64; 2],
    /// Nothing overtakes the response headers.
    floor: u64,
    /// Whether the stream negotiated acknowledgements (only then can a primary notice a
    /// message that vanished, so only then is that fault injected).
    acked: bool,
    /// Extensions the replica offered.
    offered: Extensions,
    /// Messages for the replica that wait, oldest first, because its Node asked for no more
    /// stream bytes (its driver would stop reading and flow control would hold the primary
    /// back). While any wait, later ones join them, so the stream stays in order as TCP keeps
    /// it; one `Ev::ReleaseHeld` is scheduled whenever this is not empty. Not bounded here:
    /// it holds what the primary already sent, and the model does not slow the primary's
    /// sender down (a real primary's queue of names grows instead).
    held: VecDeque<Ev>,
    /// The replica refused stream bytes when its held messages were last looked at: a pause
    /// is counted once, when it starts.
    stream_paused: bool,
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    cfg: Config,
    node: Option<Node>,
    inc: u64,
    offset_ms: u64,
    drift_ppm: i64,
    disks: BTreeMap<DbName, Disk>,
    ops: BTreeMap<OpId, (DbName, DiskOp)>,
    /// LTX files being spooled or spooled and verified (temporary files: a crash loses them).
    spools: BTreeMap<SpoolId, Vec<u8>>,
    timeout_gen: u64,
    timeout_at: Option<u64>,
    last_pos: BTreeMap<DbName, Pos>,
    last_epoch_held: Option<Epoch>,
    upstream_epoch: Option<Epoch>,
    /// The process is paused until this true time.
    paused_until: u64,
    /// Inputs that arrived while the process was paused, in arrival order; while any wait,
    /// later ones join the back, so a paused process sees them in the order they came (one
    /// `Ev::Resume` is scheduled whenever this is not empty).
    deferred: VecDeque<Ev>,
    /// The epoch file on disk (written durably at once).
    saved_epoch: Epoch,
    /// The target of the last handoff this node was asked for.
    handoff_to: Option<NodeId>,
    /// Started and still replaying its history: its recovered positions are reported (and
    /// checked against what it promised was durable) once it is done.
    recovering: bool,
    /// Application fsyncs waiting for an answer, with the database and the position
    /// committed when each was asked.
    syncs: BTreeMap<SyncId, (DbName, Pos)>,
    /// Commits the application asked to be durable, waiting for an answer.
    requested: BTreeSet<CommitId>,
    /// The primary each halt lock this node holds was taken on, by database.
    halt_primary: BTreeMap<DbName, usize>,
    /// Transactions sent under a halt lock and not answered yet: the application wrote their
    /// pages before the commit point; a refusal rolls them back.
    halt_sent: BTreeMap<CommitId, (DbName, crate::disk::Rollback)>,
    /// Databases whose file the application wrote under a halt lock since the node started.
    halt_written: BTreeSet<DbName>,
    /// The stream this node last asked to open (`Output::Connect`): only its acceptance
    /// tells which epoch the node's data comes from (an older one accepted late is ignored
    /// by the Node).
    current_up: Option<UpstreamId>,
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    /// The seed this run started from.
    pub seed: u64,
    rng: SplitMix64,
    /// True time in milliseconds.
    pub now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<SimNode>,
    /// The lease store.
    pub store: LeaseStore,
    conns: BTreeMap<u64, Conn>,
    pending_bodies: BTreeMap<u64, Vec<u8>>,
    next_conn: u64,
    /// Blocked directed links; index `nodes.len()` is the lease store.
    blocked: BTreeSet<(usize, usize)>,
    cfg: SimConfig,
    ttl_ms: u64,
    next_commit: u64,
    /// Facts since the checker last drained them.
    pub facts: Vec<Fact>,
    trace: VecDeque<String>,
    db_names: Vec<DbName>,
    /// Events processed.
    pub events: u64,
    /// Commits acknowledged.
    pub acked_commits: u64,
    /// What happened.
    pub stats: Stats,
    /// Print every trace line as it happens (replaying one seed).
    pub echo_trace: bool,
    /// Transactions from replicas under halt locks, by the primary's commit id: the replica,
    /// its incarnation and its own commit id, to answer.
    remote_commits: BTreeMap<CommitId, (usize, u64, CommitId)>,
    /// The next halt lock's id.
    next_lock: i64,
}

impl Sim {
    /// A simulation from a seed.
    #[must_use]
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let mut rng = SplitMix64::new(seed);
        let ttl_ms = 2_000;
        let margin_ms = 400;
        let candidates: BTreeSet<NodeId> = (0..cfg.candidates).map(|i| NodeId(i as u64 + 1)).collect();
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let id = NodeId(i as u64 + 1);
            let mut c = Config::new(id);
            c.candidate = i < cfg.candidates;
            c.candidates = candidates.clone();
            c.lease_ttl_ms = ttl_ms;
            c.lease_renew_ms = 600;
            c.lease_safety_margin_ms = margin_ms;
            c.lease_poll_ms = 300;
            c.heartbeat_ms = 200;
            c.upstream_idle_ms = 1_000;
            c.replica_ack_timeout_ms = 2_000;
            c.reconnect_min_ms = 20;
            c.reconnect_max_ms = 1_000;
            c.sync = cfg.sync.map(|policy| SyncConfig { timeout_ms: 1_000, policy });
            c.async_window_ms = cfg.async_window_ms;
            c.retention_ms = 2_000;
            c.retention_bytes = 64 * 1024;
            c.seed = rng.next_u64();
            // Small enough that snapshots (and the occasional big commit) take the spooling path.
            c.ltx_inline_max_bytes = 2 * 1024;
            // A few waiting files pause a replica's stream (the daemon's 64 are never reached
            // at the simulator's commit rates), so the pause runs in most seeds.
            c.inbox_pause_files = 1 + (c.seed % 4) as usize;
            c.faults = cfg.node_faults;
            // Drift within half of what the safety margin covers over one TTL.
            let bound = (margin_ms * 1_000_000 / ttl_ms / 2) as i64;
            let drift_ppm = rng.below(2 * bound as u64 + 1) as i64 - bound;
            nodes.push(SimNode {
                id,
                cfg: c,
                node: None,
                inc: 0,
                offset_ms: rng.below(1_000_000),
                drift_ppm,
                disks: BTreeMap::new(),
                ops: BTreeMap::new(),
                spools: BTreeMap::new(),
                timeout_gen: 0,
                timeout_at: None,
                last_pos: BTreeMap::new(),
                last_epoch_held: None,
                upstream_epoch: None,
                paused_until: 0,
                deferred: VecDeque::new(),
                saved_epoch: Epoch(0),
                handoff_to: None,
                recovering: false,
                syncs: BTreeMap::new(),
                requested: BTreeSet::new(),
                halt_primary: BTreeMap::new(),
                halt_sent: BTreeMap::new(),
                halt_written: BTreeSet::new(),
                current_up: None,
            });
        }
        let cfg_databases = cfg.databases.max(1);
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            store: LeaseStore::default(),
            conns: BTreeMap::new(),
            pending_bodies: BTreeMap::new(),
            next_conn: 1,
            blocked: BTreeSet::new(),
            cfg,
            ttl_ms,
            next_commit: 1,
            facts: Vec::new(),
            trace: VecDeque::new(),
            db_names: (0..cfg_databases)
                .map(|k| DbName::new(&format!("db{k}.sqlite")).expect("generated names are valid"))
                .collect(),
            events: 0,
            acked_commits: 0,
            stats: Stats::default(),
            echo_trace: false,
            remote_commits: BTreeMap::new(),
            next_lock: 1,
        };
        let n = sim.nodes.len();
        for i in 0..n {
            match sim.cfg.late_join_ms {
                Some(at) if i == n - 1 => {
                    sim.stats.late_joins += 1;
                    sim.schedule(at, Ev::Restart { node: i });
                }
                _ => sim.start_node(i),
            }
        }
        sim.schedule(10, Ev::Client);
        let first_fault = sim.cfg.faults.fault_every_ms;
        sim.schedule(first_fault, Ev::Fault);
        sim
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), ev);
    }

    fn trace(&mut self, line: String) {
        if self.echo_trace {
            eprintln!("{:>8}ms {line}", self.now);
        }
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>8}ms {line}", self.now));
    }

    /// The last events, for failure reports.
    #[must_use]
    pub fn trace_lines(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }

    /// Number of nodes.
    #[must_use]
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A running node.
    #[must_use]
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes[i].node.as_ref()
    }

    /// A node's clock at true time `t`.
    #[must_use]
    pub fn local_time(&self, i: usize, t: u64) -> Millis {
        let n = &self.nodes[i];
        let skew = (t as i128 * n.drift_ppm as i128 / 1_000_000) as i64;
        Millis((n.offset_ms as i64 + t as i64 + skew) as u64)
    }

    fn true_time_of(&self, i: usize, local: Millis) -> u64 {
        let n = &self.nodes[i];
        let rel = local.0.saturating_sub(n.offset_ms) as i128;
        let t = (rel * 1_000_000 + (1_000_000 + n.drift_ppm as i128) - 1) / (1_000_000 + n.drift_ppm as i128);
        let mut t = t.max(self.now as i128) as u64;
        while self.local_time(i, t) < local {
            t += 1;
        }
        t
    }

    fn store_index(&self) -> usize {
        self.nodes.len()
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Feeds an input to node `i` and carries out everything it asks.
    fn feed(&mut self, i: usize, input: Input) {
        let local = self.local_time(i, self.now);
        let is_commit = matches!(input, Input::Commit { .. } | Input::DropDb { .. });
        let epoch_before = self.nodes[i].node.as_ref().and_then(|n| n.accepting_writes(local));
        if let Input::Handoff { to } = input
            && !self.nodes[i].node.as_ref().is_some_and(Node::handing_off)
        {
            // A request during a handoff is refused; the one under way keeps its target.
            self.nodes[i].handoff_to = Some(to);
        }
        let Some(node) = self.nodes[i].node.as_mut() else { return };
        node.handle(local, input);
        let mut outputs = Vec::new();
        while let Some(o) = node.poll_output() {
            outputs.push(o);
        }
        let role = node.role();
        let positions: Vec<(DbName, Pos)> = node.positions().map(|(d, p)| (d.clone(), p)).collect();
        if let Role::Primary { epoch } = role {
            self.nodes[i].last_epoch_held = Some(epoch);
        }
        if self.nodes[i].recovering && role != Role::Recovering {
            self.nodes[i].recovering = false;
            self.facts.push(Fact::Recovered { node: i, positions });
        }
        for o in outputs {
            self.carry_out(i, o, is_commit, epoch_before);
        }
        self.reschedule_timeout(i);
    }

    fn note_moves(&mut self, i: usize, via: Via, source_epoch: Option<Epoch>) {
        let Some(node) = self.nodes[i].node.as_ref() else { return };
        let mut moved = Vec::new();
        for (db, pos) in node.positions() {
            let from = self.nodes[i].last_pos.get(db).copied().unwrap_or(Pos::ZERO);
            if pos != from {
                moved.push(Fact::Moved { node: i, db: db.clone(), from, to: pos, via, source_epoch });
            }
        }
        for fact in moved {
            if let Fact::Moved { db, to, .. } = &fact {
                self.nodes[i].last_pos.insert(db.clone(), *to);
            }
            self.facts.push(fact);
        }
    }

    fn reschedule_timeout(&mut self, i: usize) {
        let Some(node) = self.nodes[i].node.as_ref() else { return };
        let at = node.poll_timeout().map(|(local, _)| self.true_time_of(i, local));
        if at != self.nodes[i].timeout_at {
            self.nodes[i].timeout_at = at;
            self.nodes[i].timeout_gen += 1;
            if let Some(at) = at {
                let generation = self.nodes[i].timeout_gen;
                let delay = at.saturating_sub(self.now);
                self.schedule(delay, Ev::Timeout { node: i, generation });
            }
        }
    }
}

impl Sim {
    /// Whether faults are still being injected.
    #[must_use]
    pub fn faulty(&self) -> bool {
        self.now < self.cfg.faults_until_ms
    }

    /// Processes the next event. Returns false when nothing is left (never, in practice:
    /// clients keep committing).
    pub fn step(&mut self) -> bool {
        let Some(((at, _), ev)) = self.queue.pop_first() else { return false };
        debug_assert!(at >= self.now, "time went back");
        self.now = at;
        // A paused process handles nothing until it resumes; its inputs wait, in order.
        let ev = match ev {
            Ev::Resume { node } => match self.resume(node) {
                Some(ev) => ev,
                None => return true,
            },
            ev => match self.defer_while_paused(ev) {
                Some(ev) => ev,
                None => return true,
            },
        };
        let released = match ev {
            Ev::ReleaseHeld { key } => self.release_held(key),
            ev => self.hold_for_replica(ev),
        };
        let Some(ev) = released else { return true };
        self.events += 1;
        match ev {
            Ev::Timeout { node, generation } => {
                if self.nodes[node].timeout_gen == generation && self.nodes[node].node.is_some() {
                    self.nodes[node].timeout_at = None;
                    self.feed(node, Input::Timeout);
                    self.note_moves(node, Via::Incremental, None);
                }
            }
            Ev::LeaseRequest { node, inc, op, req } => self.on_lease_request(node, inc, op, req),
            Ev::LeaseAnswer { node, inc, input } => {
                if self.nodes[node].inc == inc {
                    self.trace(format!("node {node} <- {input:?}"));
                    self.feed(node, input);
                    self.note_moves(node, Via::Incremental, None);
                }
            }
            Ev::DiskDone { node, inc, op } => self.on_disk_done(node, inc, op),
            Ev::SpoolDone { node, inc, input } => {
                if self.nodes[node].inc == inc {
                    self.feed(node, input);
                    self.note_moves(node, Via::Incremental, None);
                }
            }
            Ev::ConnArrive { key } => self.on_conn_arrive(key),
            Ev::ConnAccepted { key, ext } => {
                let Some(c) = self.conns.get(&key) else { return true };
                let (r, up, rinc) = (c.replica, c.up, c.rinc);
                if c.alive && self.nodes[r].inc == rinc {
                    if self.nodes[r].current_up == Some(up) {
                        self.nodes[r].upstream_epoch = c.epoch;
                    }
                    self.feed(r, Input::UpstreamOpened { conn: up, ext });
                }
            }
            Ev::ConnData { key, to_replica, bytes } => {
                let Some(c) = self.conns.get(&key) else { return true };
                if !c.alive {
                    return true;
                }
                let (r, p, up, epoch) = (c.replica, c.primary, c.up, c.epoch);
                if to_replica {
                    // Data on a stream the node no longer reads is dropped by its Node.
                    if self.nodes[r].current_up == Some(up) {
                        self.nodes[r].upstream_epoch = epoch;
                    }
                    self.feed(r, Input::UpstreamData { conn: up, bytes });
                    self.note_moves(r, Via::Incremental, epoch);
                } else {
                    self.feed(p, Input::DownstreamData { conn: DownstreamId(key), bytes });
                    self.note_moves(p, Via::Incremental, None);
                }
            }
            Ev::ConnClosed { key, to_replica } => {
                let Some(c) = self.conns.get(&key) else { return true };
                let (r, p, up, rinc, pinc) = (c.replica, c.primary, c.up, c.rinc, c.pinc);
                if to_replica && self.nodes[r].inc == rinc {
                    self.feed(r, Input::UpstreamClosed { conn: up });
                } else if !to_replica && self.nodes[p].inc == pinc {
                    self.feed(p, Input::DownstreamClosed { conn: DownstreamId(key) });
                }
                if !to_replica {
                    self.conns.remove(&key);
                    self.pending_bodies.remove(&key);
                }
            }
            Ev::ReleaseHeld { .. } => unreachable!("release_held hands back a held message, never itself"),
            Ev::Resume { .. } => unreachable!("resume hands back a deferred input, never itself"),
            Ev::Client => {
                if self.now >= self.cfg.clients_until_ms {
                    return true;
                }
                self.client_commit();
                let every = self.cfg.commit_every_ms;
                let d = 1 + self.rng.below(2 * every);
                self.schedule(d, Ev::Client);
            }
            Ev::Fault => {
                if self.faulty() {
                    self.inject_fault();
                    let every = self.cfg.faults.fault_every_ms;
                    let d = 1 + self.rng.below(2 * every);
                    self.schedule(d, Ev::Fault);
                } else {
                    self.heal_everything();
                }
            }
            Ev::Request { node, inc, input } => {
                if self.nodes[node].inc == inc {
                    self.trace(format!("node {node} <- {input:?}"));
                    self.feed(node, input);
                }
            }
            Ev::HaltTx { node, inc, replica, rinc, commit, db, bytes } => {
                if self.nodes[node].inc == inc {
                    self.deliver_halt_tx(node, (replica, rinc, commit), db, &bytes);
                    self.note_moves(node, Via::Incremental, None);
                }
            }
            Ev::Crash { node, inc } => {
                if self.nodes[node].inc == inc {
                    self.crash_node(node);
                    let d = 200 + self.rng.below(3_000);
                    self.schedule(d, Ev::Restart { node });
                }
            }
            Ev::Restart { node } => {
                if self.nodes[node].node.is_none() {
                    self.start_node(node);
                    self.note_moves(node, Via::Recovery, None);
                }
            }
        }
        true
    }

    /// The node an event is delivered to, if it is one.
    fn event_node(&self, ev: &Ev) -> Option<usize> {
        match ev {
            Ev::Timeout { node, .. }
            | Ev::LeaseAnswer { node, .. }
            | Ev::DiskDone { node, .. }
            | Ev::SpoolDone { node, .. }
            | Ev::HaltTx { node, .. }
            | Ev::Request { node, .. } => Some(*node),
            Ev::ConnArrive { key } => self.conns.get(key).map(|c| c.primary),
            Ev::ConnAccepted { key, .. } | Ev::ReleaseHeld { key } => self.conns.get(key).map(|c| c.replica),
            Ev::ConnData { key, to_replica, .. } | Ev::ConnClosed { key, to_replica } => {
                self.conns.get(key).map(|c| if *to_replica { c.replica } else { c.primary })
            }
            Ev::Resume { node } => Some(*node),
            Ev::LeaseRequest { .. } | Ev::Client | Ev::Fault | Ev::Crash { .. } | Ev::Restart { .. } => None,
        }
    }

    /// `ev` itself, unless its node is paused or still has deferred inputs: then it joins
    /// the back of them.
    fn defer_while_paused(&mut self, ev: Ev) -> Option<Ev> {
        let Some(i) = self.event_node(&ev) else { return Some(ev) };
        let node = &mut self.nodes[i];
        if node.paused_until <= self.now && node.deferred.is_empty() {
            return Some(ev);
        }
        if node.deferred.is_empty() {
            let wait = node.paused_until.saturating_sub(self.now);
            self.schedule(wait, Ev::Resume { node: i });
        }
        self.nodes[i].deferred.push_back(ev);
        None
    }

    /// The oldest deferred input of node `i` once it runs again (paused again meanwhile: the
    /// resume waits for the new pause's end). The next one is due at once, behind what is
    /// already queued for this millisecond.
    fn resume(&mut self, i: usize) -> Option<Ev> {
        let node = &mut self.nodes[i];
        if node.paused_until > self.now {
            let wait = node.paused_until - self.now;
            self.schedule(wait, Ev::Resume { node: i });
            return None;
        }
        let ev = node.deferred.pop_front();
        if !self.nodes[i].deferred.is_empty() {
            self.schedule(0, Ev::Resume { node: i });
        }
        ev
    }

    fn on_lease_request(&mut self, i: usize, inc: u64, op: Option<OpId>, req: LeaseReq) {
        let id = self.nodes[i].id;
        let now = self.now;
        let ttl = self.ttl_ms;
        let reply = match req {
            LeaseReq::Acquire => self.store.acquire(now, id, ttl),
            LeaseReq::TakeOver(e) => self.store.take_over(now, id, e, ttl),
            LeaseReq::Renew(e) => self.store.renew(now, id, e, ttl),
            LeaseReq::Release(e) => {
                self.store.release(now, id, e);
                return;
            }
            LeaseReq::Observe => self.store.observe(now),
        };
        let Some(op) = op else { return };
        let input = match reply {
            LeaseReply::Acquired(epoch) => Input::LeaseAcquired { op, epoch, lease_id: epoch.to_string() },
            LeaseReply::Held(holder, epoch) => Input::LeaseHeld { op, holder, epoch },
            LeaseReply::Renewed => Input::LeaseRenewed { op },
            LeaseReply::Lost => Input::LeaseLost { op },
            LeaseReply::Observed(holder) => Input::LeaseObserved { op, holder },
        };
        self.trace(format!("store: node {i} {req:?} -> {reply:?}"));
        let s = self.store_index();
        if self.link_ok(s, i) {
            let slow = self.faulty() && self.rng.chance(self.cfg.faults.lease_slow);
            self.stats.slow_lease_answers += u64::from(slow);
            let lat = self.latency() + if slow { 500 + self.rng.below(2_500) } else { 0 };
            // An RPC client gives up after its deadline and reports the outcome unknown.
            let observe = matches!(input, Input::LeaseObserved { .. });
            let input = if lat >= 1_000 && !observe { Input::LeaseRequestFailed { op } } else { input };
            let lat = if observe { lat } else { lat.min(1_000) };
            // Slow answers to observe requests are delivered anyway: a watch event arriving late.
            self.schedule(lat, Ev::LeaseAnswer { node: i, inc, input });
        } else {
            self.schedule(1_000, Ev::LeaseAnswer { node: i, inc, input: Input::LeaseRequestFailed { op } });
        }
    }

    fn on_disk_done(&mut self, i: usize, inc: u64, op: OpId) {
        if self.nodes[i].inc != inc {
            return;
        }
        let Some((name, disk_op)) = self.nodes[i].ops.remove(&op) else { return };
        let faulty = self.faulty();
        let eio = faulty && self.rng.chance(self.cfg.faults.disk_eio);
        let enospc = faulty && self.rng.chance(self.cfg.faults.disk_enospc);
        self.stats.disk_errors += u64::from(eio || enospc);
        let page_size = page_size();
        let disk = self.nodes[i].disks.entry(name.clone()).or_default();
        // A replica's own transaction coming back leaves the database file as it is, which
        // may be further on (its next one under the same lock) than the file's position.
        let stored_only = matches!(disk_op, DiskOp::Persist { apply: false, .. });
        let (result, via, source_epoch) = match disk_op {
            DiskOp::Flush { through } => {
                let result = if eio { Err(IoFailure::Io) } else { Ok(()) };
                if result.is_ok() {
                    disk.flush(through);
                }
                self.trace(format!("node {i} flushed {name} through {through}: {result:?}"));
                self.feed(i, Input::LtxFlushed { op, result });
                self.note_moves(i, Via::Incremental, None);
                return;
            }
            DiskOp::Persist { min, max, bytes, base, source_epoch, durable, apply } => {
                let via = if min == TxId(1) { Via::Snapshot } else { Via::Incremental };
                let r = if eio {
                    Err(IoFailure::Io)
                } else if enospc {
                    Err(IoFailure::NoSpace)
                } else if apply {
                    disk.persist(min, max, bytes, base, durable)
                } else {
                    disk.store(min, max, bytes, durable)
                };
                (r, via, source_epoch)
            }
            DiskOp::Replay { min, max, base } => {
                let via = if min == TxId(1) { Via::Snapshot } else { Via::Incremental };
                let r = if eio { Err(IoFailure::Io) } else { disk.replay(min, max, base) };
                if eio {
                    self.facts.push(Fact::ReplayFailed { node: i });
                }
                (r, via, None)
            }
        };
        if let Ok(pos) = result
            && !stored_only
        {
            debug_assert_eq!(disk.db_checksum(page_size), pos.checksum);
        }
        if result == Err(IoFailure::Mismatch) {
            self.facts.push(Fact::ApplyMismatch { node: i, db: name });
        }
        self.feed(i, Input::LtxDone { op, result });
        self.note_moves(i, via, source_epoch);
    }

    /// The database file checksum of database `db` on node `i` as it is on disk.
    pub fn disk_checksum(&mut self, i: usize, db: &DbName) -> replite_core::Checksum {
        self.nodes[i].disks.get_mut(db).map_or(replite_core::Checksum::ZERO, |d| d.db_checksum(page_size()))
    }

    /// One line per node: role, epoch, positions, disk activity (for failure reports).
    #[must_use]
    pub fn describe_nodes(&self) -> Vec<String> {
        (0..self.nodes.len())
            .map(|i| match self.nodes[i].node.as_ref() {
                None => format!("node {i}: down"),
                Some(n) => {
                    let positions: Vec<String> = n.positions().map(|(d, p)| format!("{d}@{p}")).collect();
                    format!(
                        "node {i}: {:?}, max epoch {}, {}, {} disk ops in flight",
                        n.role(),
                        n.max_epoch(),
                        positions.join(" "),
                        self.nodes[i].ops.len()
                    )
                }
            })
            .collect()
    }

    /// The simulated databases' names.
    #[must_use]
    pub fn db_names(&self) -> &[DbName] {
        &self.db_names
    }

    /// Whether node `i` has disk operations in flight.
    #[must_use]
    pub fn disk_busy(&self, i: usize) -> bool {
        !self.nodes[i].ops.is_empty()
    }
}
