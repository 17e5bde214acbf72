//! The event loop, network, clients and faults.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use replite_core::ltx::page_checksum;
use replite_core::ltx::{SnapshotOptions, encode_database};
use replite_core::node::{
    CommitId, Config, DownstreamId, Event, Faults, Input, IoFailure, Millis, Node, OpId, Output, PageChange, Recovery,
    Role, SplitMix64, SyncConfig, SyncPolicy, UpstreamId,
};
use replite_core::stream::{DbName, Extensions, encode_ltx_message};
use replite_core::{Epoch, NodeId, PageSize, Pgno, Pos, TxId};

use crate::disk::Disk;
use crate::lease_store::{LeaseReply, LeaseStore};

/// Page size of simulated databases: small, so checksums stay cheap.
const PAGE_SIZE: u32 = 512;
/// Largest simulated database, in pages.
const MAX_DB_PAGES: u32 = 12;
fn page_size() -> PageSize {
    PageSize::new(PAGE_SIZE).expect("constant page size is valid")
}

/// How many trace lines are kept for failure reports.
const TRACE_LINES: usize = 60;

/// Fault probabilities and rates.
#[derive(Debug, Clone)]
pub struct FaultMix {
    /// Per-message probability a stream message is lost and the connection reset.
    pub msg_drop: f64,
    /// Per-message probability a stream message vanishes without a reset (a middlebox bug).
    pub msg_vanish: f64,
    /// Per-message probability a stream message is delivered twice.
    pub msg_dup: f64,
    /// Per-message probability a stream message overtakes earlier ones.
    pub msg_reorder: f64,
    /// Per-response probability a lease answer is delayed by seconds (reordering answers).
    pub lease_slow: f64,
    /// Per-disk-op probability of EIO.
    pub disk_eio: f64,
    /// Per-disk-op probability of ENOSPC.
    pub disk_enospc: f64,
    /// Mean milliseconds between fault events (crash, restart, partition, heal, handoff).
    pub fault_every_ms: u64,
    /// Per-persist probability the node crashes while the write is in flight.
    pub crash_in_write: f64,
}

impl Default for FaultMix {
    fn default() -> FaultMix {
        FaultMix {
            msg_drop: 0.002,
            msg_vanish: 0.0005,
            msg_dup: 0.002,
            msg_reorder: 0.002,
            lease_slow: 0.01,
            disk_eio: 0.003,
            disk_enospc: 0.002,
            fault_every_ms: 1500,
            crash_in_write: 0.002,
        }
    }
}

/// A simulation's shape.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// How many of them (the first ones) are candidates.
    pub candidates: usize,
    /// Synchronous replication.
    pub sync: Option<SyncPolicy>,
    /// Asynchronous loss window.
    pub async_window_ms: Option<u64>,
    /// Faults.
    pub faults: FaultMix,
    /// Deliberate bugs in every node.
    pub node_faults: Faults,
    /// Mean milliseconds between client commits.
    pub commit_every_ms: u64,
    /// Faults stop at this true time; afterwards the cluster must converge.
    pub faults_until_ms: u64,
    /// Clients stop committing at this true time.
    pub clients_until_ms: u64,
    /// The last node starts this late, with an empty disk (a new node joining), if set.
    pub late_join_ms: Option<u64>,
    /// Non-candidate replicas negotiate no replite extensions (no epoch frames, no
    /// acknowledgements), as when a replica or primary is plain LiteFS.
    pub plain_non_candidates: bool,
    /// How many databases the cluster replicates.
    pub databases: usize,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: 3,
            candidates: 3,
            sync: None,
            async_window_ms: None,
            faults: FaultMix::default(),
            node_faults: Faults::default(),
            commit_every_ms: 40,
            faults_until_ms: 40_000,
            clients_until_ms: 50_000,
            late_join_ms: None,
            plain_non_candidates: false,
            databases: 2,
        }
    }
}

/// Counts of what happened in a run, to show the fault mix is real.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Node crashes (including clean shutdowns).
    pub crashes: u64,
    /// Partitions made (one-way, two-way, from the lease store).
    pub partitions: u64,
    /// Operator handoffs requested.
    pub handoffs: u64,
    /// Snapshots sent to replicas.
    pub snapshots: u64,
    /// Incremental LTX files sent to replicas.
    pub ltx_sent: u64,
    /// Replica resyncs (stream refused or failed).
    pub resyncs: u64,
    /// Injected EIO/ENOSPC failures.
    pub disk_errors: u64,
    /// In-flight writes torn by a crash.
    pub torn_writes: u64,
    /// Stream messages lost (connection reset), duplicated or reordered.
    pub net_faults: u64,
    /// Lease answers delayed by seconds.
    pub slow_lease_answers: u64,
    /// Commits refused.
    pub refused: u64,
    /// Nodes that joined late with an empty disk.
    pub late_joins: u64,
    /// Replicas a primary cut off for not acknowledging.
    pub cut_offs: u64,
    /// Process pauses.
    pub pauses: u64,
    /// Shrinking commits issued (some are refused like any other).
    pub shrinks: u64,
}

/// How a node's position changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An incremental LTX file (primary commit or replica apply) or a recovery replay.
    Incremental,
    /// A snapshot.
    Snapshot,
    /// Start-up recovery.
    Recovery,
}

/// Things the invariant checker needs to know, reported as they happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A primary created a transaction.
    Committed {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// Epoch it believed it wrote under.
        epoch: Epoch,
        /// Position before.
        pre: Pos,
        /// Position after.
        post: Pos,
        /// True time.
        at: u64,
    },
    /// A commit was acknowledged to the application.
    Acked {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// Position.
        pos: Pos,
        /// True time.
        at: u64,
    },
    /// A synchronous commit was acknowledged without all acknowledgements.
    Degraded {
        /// Database.
        db: DbName,
        /// Transaction.
        txid: TxId,
    },
    /// A node became primary.
    BecamePrimary {
        /// Node index.
        node: usize,
        /// Epoch.
        epoch: Epoch,
        /// Its positions.
        positions: Vec<(DbName, Pos)>,
    },
    /// A disk apply did not land where the LTX file said: the Node asked to apply a file
    /// that does not fit the database (a correct Node never does).
    ApplyMismatch {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
    },
    /// A node's position changed.
    Moved {
        /// Node index.
        node: usize,
        /// Database.
        db: DbName,
        /// Old position.
        from: Pos,
        /// New position.
        to: Pos,
        /// How.
        via: Via,
        /// For replica applies: the epoch of the primary that sent the data.
        source_epoch: Option<Epoch>,
    },
}

#[derive(Debug, Clone)]
enum Ev {
    Timeout { node: usize, generation: u64 },
    LeaseRequest { node: usize, inc: u64, op: Option<OpId>, req: LeaseReq },
    LeaseAnswer { node: usize, inc: u64, input: Input },
    DiskDone { node: usize, inc: u64, op: OpId },
    ConnArrive { key: u64 },
    ConnAccepted { key: u64, ext: Extensions },
    ConnData { key: u64, to_replica: bool, bytes: Vec<u8> },
    ConnClosed { key: u64, to_replica: bool },
    Client,
    Fault,
    Crash { node: usize, inc: u64 },
    Restart { node: usize },
}

#[derive(Debug, Clone, Copy)]
enum LeaseReq {
    Acquire,
    Renew(Epoch),
    Release(Epoch),
    Observe,
}

#[derive(Debug, Clone)]
enum DiskOp {
    Persist { min: TxId, max: TxId, bytes: Vec<u8>, base: replite_core::Checksum, source_epoch: Option<Epoch> },
    Replay { min: TxId, max: TxId, base: replite_core::Checksum },
}

#[derive(Debug)]
struct Conn {
    replica: usize,
    primary: usize,
    up: UpstreamId,
    rinc: u64,
    pinc: u64,
    alive: bool,
    accepted: bool,
    epoch: Option<Epoch>,
    last: [u64; 2],
    /// Nothing overtakes the response headers.
    floor: u64,
    /// Whether the stream negotiated acknowledgements (only then can a primary notice a
    /// message that vanished, so only then is that fault injected).
    acked: bool,
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
    timeout_gen: u64,
    timeout_at: Option<u64>,
    last_pos: BTreeMap<DbName, Pos>,
    last_epoch_held: Option<Epoch>,
    upstream_epoch: Option<Epoch>,
    /// The process is paused until this true time.
    paused_until: u64,
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
                timeout_gen: 0,
                timeout_at: None,
                last_pos: BTreeMap::new(),
                last_epoch_held: None,
                upstream_epoch: None,
                paused_until: 0,
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

    fn latency(&mut self) -> u64 {
        1 + self.rng.below(8) + if self.rng.chance(0.05) { self.rng.below(40) } else { 0 }
    }

    fn link_ok(&self, from: usize, to: usize) -> bool {
        !self.blocked.contains(&(from, to))
    }

    fn store_index(&self) -> usize {
        self.nodes.len()
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn start_node(&mut self, i: usize) {
        let page_size = page_size();
        let n = &mut self.nodes[i];
        n.inc += 1;
        n.cfg.seed = n.cfg.seed.wrapping_add(0x9e37_79b9);
        n.ops.clear();
        let recovery =
            Recovery { dbs: n.disks.iter_mut().map(|(name, d)| (name.clone(), d.recovery(page_size))).collect() };
        n.node = Some(Node::new(n.cfg.clone()).expect("simulated configs are valid"));
        n.upstream_epoch = None;
        let files: usize = recovery.dbs.values().map(|r| r.ltx.len()).sum();
        let torn: usize = recovery.dbs.values().map(|r| r.invalid_ltx.len()).sum();
        let line = format!("node {i} starts: {files} LTX files, {torn} torn");
        self.trace(line);
        self.feed(i, Input::Start(recovery));
    }

    fn crash_node(&mut self, i: usize) {
        if self.nodes[i].node.is_none() {
            return;
        }
        self.trace(format!("node {i} crashes"));
        self.stats.crashes += 1;
        let ops = std::mem::take(&mut self.nodes[i].ops);
        for (_, (name, op)) in ops {
            // In-flight writes: lost, torn, or the LTX landed without the database apply.
            if let DiskOp::Persist { min, max, bytes, .. } = op {
                let disk = self.nodes[i].disks.entry(name).or_default();
                match self.rng.below(3) {
                    0 => {}
                    1 => {
                        self.stats.torn_writes += 1;
                        let cut = self.rng.below(bytes.len() as u64) as usize;
                        disk.ltx.insert((min, max), bytes[..cut].to_vec());
                    }
                    _ => {
                        if min == TxId(1) {
                            disk.ltx.clear();
                        }
                        disk.ltx.insert((min, max), bytes);
                    }
                }
            }
        }
        let n = &mut self.nodes[i];
        n.node = None;
        n.inc += 1;
        n.timeout_at = None;
        n.last_epoch_held = None;
        let keys: Vec<u64> =
            self.conns.iter().filter(|(_, c)| c.alive && (c.replica == i || c.primary == i)).map(|(k, _)| *k).collect();
        for key in keys {
            self.kill_conn(key);
        }
    }

    fn kill_conn(&mut self, key: u64) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if !c.alive {
            return;
        }
        c.alive = false;
        let d1 = 50 + self.rng.below(1_500);
        let d2 = 50 + self.rng.below(1_500);
        self.schedule(d1, Ev::ConnClosed { key, to_replica: true });
        self.schedule(d2, Ev::ConnClosed { key, to_replica: false });
    }

    /// Feeds an input to node `i` and carries out everything it asks.
    fn feed(&mut self, i: usize, input: Input) {
        let local = self.local_time(i, self.now);
        let is_commit = matches!(input, Input::Commit { .. });
        let epoch_before = self.nodes[i].node.as_ref().and_then(|n| n.accepting_writes(local));
        let Some(node) = self.nodes[i].node.as_mut() else { return };
        node.handle(local, input);
        let mut outputs = Vec::new();
        while let Some(o) = node.poll_output() {
            outputs.push(o);
        }
        let role = node.role();
        if let Role::Primary { epoch } = role {
            self.nodes[i].last_epoch_held = Some(epoch);
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

    fn lease_rpc(&mut self, i: usize, op: Option<OpId>, req: LeaseReq) {
        let s = self.store_index();
        let inc = self.nodes[i].inc;
        if self.link_ok(i, s) {
            let lat = self.latency();
            self.schedule(lat, Ev::LeaseRequest { node: i, inc, op, req });
        } else if let Some(op) = op {
            self.schedule(1_000, Ev::LeaseAnswer { node: i, inc, input: Input::LeaseRequestFailed { op } });
        }
    }

    fn carry_out(&mut self, i: usize, o: Output, is_commit: bool, epoch: Option<Epoch>) {
        let inc = self.nodes[i].inc;
        match o {
            Output::AcquireLease { op } => self.lease_rpc(i, Some(op), LeaseReq::Acquire),
            Output::RenewLease { op, epoch } => self.lease_rpc(i, Some(op), LeaseReq::Renew(epoch)),
            Output::ReleaseLease { epoch } => self.lease_rpc(i, None, LeaseReq::Release(epoch)),
            Output::ObserveLease { op } => self.lease_rpc(i, Some(op), LeaseReq::Observe),
            Output::PersistLtx { db, op, min, max, bytes, base } => {
                if is_commit {
                    let post = replite_core::ltx::verify(bytes.as_slice())
                        .map(|v| v.post_apply_pos())
                        .expect("a primary's own LTX verifies");
                    let pre = self.nodes[i].node.as_ref().map(|n| n.pos(&db)).unwrap_or(Pos::ZERO);
                    let epoch = epoch.expect("a commit was accepted, so the node had a write grant");
                    self.facts.push(Fact::Committed { node: i, db: db.clone(), epoch, pre, post, at: self.now });
                }
                let source_epoch = if is_commit { None } else { self.nodes[i].upstream_epoch };
                self.nodes[i].ops.insert(op, (db, DiskOp::Persist { min, max, bytes, base, source_epoch }));
                let d = 1 + self.rng.below(4);
                self.schedule(d, Ev::DiskDone { node: i, inc, op });
                if self.faulty() && self.rng.chance(self.cfg.faults.crash_in_write) {
                    let at = self.rng.below(d);
                    self.schedule(at, Ev::Crash { node: i, inc });
                }
            }
            Output::ReplayLtx { db, op, min, max, base } => {
                self.nodes[i].ops.insert(op, (db, DiskOp::Replay { min, max, base }));
                let d = 1 + self.rng.below(4);
                self.schedule(d, Ev::DiskDone { node: i, inc, op });
            }
            Output::RemoveLtx { db, min, max } => {
                self.nodes[i].disks.entry(db).or_default().ltx.remove(&(min, max));
            }
            Output::AckCommit { db, pos, .. } => {
                self.acked_commits += 1;
                self.trace(format!("node {i} acknowledges {pos}"));
                self.facts.push(Fact::Acked { node: i, db, pos, at: self.now });
            }
            Output::RefuseCommit { commit, reason } => {
                self.stats.refused += 1;
                self.trace(format!("node {i} refuses commit {}: {reason:?}", commit.0))
            }
            Output::Connect { conn, peer, ext, body } => {
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
                        accepted: false,
                        epoch: None,
                        last: [0, 0],
                        floor: 0,
                        acked: false,
                    },
                );
                let _ = ext;
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
            Output::CloseDownstream { conn } => self.kill_conn(conn.0),
            Output::Event(e) => {
                if let Event::BecamePrimary { epoch } = e {
                    let positions = self.nodes[i]
                        .node
                        .as_ref()
                        .map(|n| n.positions().map(|(d, p)| (d.clone(), p)).collect())
                        .unwrap_or_default();
                    self.facts.push(Fact::BecamePrimary { node: i, epoch, positions });
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

    fn conn_by_up(&self, i: usize, up: UpstreamId) -> Option<u64> {
        self.conns.iter().find(|(_, c)| c.replica == i && c.up == up).map(|(k, _)| *k)
    }

    fn send(&mut self, key: u64, to_replica: bool, bytes: Vec<u8>) {
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
        if let Some(i) = self.event_node(&ev)
            && self.nodes[i].paused_until > at
        {
            let until = self.nodes[i].paused_until;
            self.seq += 1;
            self.queue.insert((until, self.seq), ev);
            return true;
        }
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
            Ev::ConnArrive { key } => self.on_conn_arrive(key),
            Ev::ConnAccepted { key, ext } => {
                let Some(c) = self.conns.get(&key) else { return true };
                let (r, up, rinc) = (c.replica, c.up, c.rinc);
                if c.alive && self.nodes[r].inc == rinc {
                    self.nodes[r].upstream_epoch = c.epoch;
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
                    self.nodes[r].upstream_epoch = epoch;
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
            Ev::Timeout { node, .. } | Ev::LeaseAnswer { node, .. } | Ev::DiskDone { node, .. } => Some(*node),
            Ev::ConnArrive { key } => self.conns.get(key).map(|c| c.primary),
            Ev::ConnAccepted { key, .. } => self.conns.get(key).map(|c| c.replica),
            Ev::ConnData { key, to_replica, .. } | Ev::ConnClosed { key, to_replica } => {
                self.conns.get(key).map(|c| if *to_replica { c.replica } else { c.primary })
            }
            Ev::LeaseRequest { .. } | Ev::Client | Ev::Fault | Ev::Crash { .. } | Ev::Restart { .. } => None,
        }
    }

    fn on_lease_request(&mut self, i: usize, inc: u64, op: Option<OpId>, req: LeaseReq) {
        let id = self.nodes[i].id;
        let now = self.now;
        let ttl = self.ttl_ms;
        let reply = match req {
            LeaseReq::Acquire => self.store.acquire(now, id, ttl),
            LeaseReq::Renew(e) => self.store.renew(now, id, e, ttl),
            LeaseReq::Release(e) => {
                self.store.release(now, id, e);
                return;
            }
            LeaseReq::Observe => self.store.observe(now),
        };
        let Some(op) = op else { return };
        let input = match reply {
            LeaseReply::Acquired(epoch) => Input::LeaseAcquired { op, epoch },
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
        let (result, via, source_epoch) = match disk_op {
            DiskOp::Persist { min, max, bytes, base, source_epoch } => {
                let via = if min == TxId(1) { Via::Snapshot } else { Via::Incremental };
                let r = if eio {
                    Err(IoFailure::Io)
                } else if enospc {
                    Err(IoFailure::NoSpace)
                } else {
                    disk.persist(min, max, bytes, base)
                };
                (r, via, source_epoch)
            }
            DiskOp::Replay { min, max, base } => {
                let via = if min == TxId(1) { Via::Snapshot } else { Via::Incremental };
                let r = if eio { Err(IoFailure::Io) } else { disk.apply(min, max, base) };
                (r, via, None)
            }
        };
        if let Ok(pos) = result {
            debug_assert_eq!(disk.db_checksum(page_size), pos.checksum);
        }
        if result == Err(IoFailure::Mismatch) {
            self.facts.push(Fact::ApplyMismatch { node: i, db: name });
        }
        self.feed(i, Input::LtxDone { op, result });
        self.note_moves(i, via, source_epoch);
    }

    fn on_conn_arrive(&mut self, key: u64) {
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
        let ext = if plain { Extensions::NONE } else { Extensions::ALL };
        if let Some(c) = self.conns.get_mut(&key) {
            c.epoch = epoch;
            c.accepted = true;
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
        self.feed(p, Input::DownstreamOpened { conn: DownstreamId(key), peer, ext, body });
    }

    /// The first node that believes it is primary.
    fn believed_primary(&self) -> Option<usize> {
        (0..self.nodes.len())
            .find(|&i| matches!(self.nodes[i].node.as_ref().map(Node::role), Some(Role::Primary { .. })))
    }

    fn client_commit(&mut self) {
        // Clients write on whichever node believes it is primary, sometimes on a random one.
        let n = self.nodes.len();
        let mut target = self.rng.below(n as u64) as usize;
        if !self.rng.chance(0.1)
            && let Some(p) = self.believed_primary()
        {
            target = p;
        }
        let name = self.db_names[self.rng.below(self.db_names.len() as u64) as usize].clone();
        if self.nodes[target].paused_until > self.now {
            return;
        }
        let Some(node) = self.nodes[target].node.as_ref() else { return };
        let pos = node.pos(&name);
        let page_size = page_size();
        let psize = page_size.bytes();
        let empty = Disk::default();
        let db = &self.nodes[target].disks.get(&name).unwrap_or(&empty).db;
        let old_pages = (db.len() / psize) as u32;
        let commit_pages = if pos.txid == TxId::ZERO {
            4
        } else if old_pages < MAX_DB_PAGES && self.rng.chance(0.05) {
            old_pages + 1
        } else if old_pages > 2 && self.rng.chance(0.02) {
            // A shrinking transaction (VACUUM, or freed pages at the end).
            old_pages - 1
        } else {
            old_pages.max(1)
        };
        let mut pgnos: BTreeSet<u32> = BTreeSet::new();
        if pos.txid == TxId::ZERO {
            pgnos.extend(1..=commit_pages);
        } else {
            // Rollback-journal commits always rewrite page 1 (the change counter); WAL-mode
            // commits need not, so transactions can touch disjoint pages.
            if self.rng.chance(0.5) {
                pgnos.insert(1);
            }
            for _ in 0..1 + self.rng.below(3) {
                pgnos.insert(1 + self.rng.below(u64::from(commit_pages)) as u32);
            }
            if commit_pages > old_pages {
                pgnos.insert(commit_pages);
            }
        }
        let id = self.next_commit;
        self.next_commit += 1;
        let mut pages = Vec::new();
        for pgno in pgnos {
            let mut data = vec![0u8; psize];
            for (j, b) in data.iter_mut().enumerate() {
                *b = (id as usize).wrapping_mul(31).wrapping_add(j * (pgno as usize + 7)) as u8;
            }
            let tag = self.rng.next_u64().to_be_bytes();
            data[psize - 8..].copy_from_slice(&tag);
            if pgno == 1 {
                data[..16].copy_from_slice(b"SQLite format 3\0");
                data[16..18].copy_from_slice(&(PAGE_SIZE as u16).to_be_bytes());
                data[24..100].fill(0);
            }
            let start = (pgno as usize - 1) * psize;
            let old = (pos.txid != TxId::ZERO && start + psize <= db.len())
                .then(|| page_checksum(Pgno(pgno), &db[start..start + psize]));
            pages.push(PageChange { pgno: Pgno(pgno), old, data });
        }
        pages.retain(|p| p.pgno.0 <= commit_pages);
        let removed: Vec<(Pgno, replite_core::Checksum)> = (commit_pages + 1..=old_pages)
            .map(|pgno| {
                let start = (pgno as usize - 1) * psize;
                (Pgno(pgno), page_checksum(Pgno(pgno), &db[start..start + psize]))
            })
            .collect();
        if !removed.is_empty() {
            self.stats.shrinks += 1;
        }
        let commit = Input::Commit { commit: CommitId(id), db: name, page_size, pages, commit_pages, removed };
        self.feed(target, commit);
        self.note_moves(target, Via::Incremental, None);
    }

    fn inject_fault(&mut self) {
        let n = self.nodes.len();
        let i = self.rng.below(n as u64) as usize;
        let j = (i + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        if self.rng.chance(0.1) {
            // A process pause (GC, swap, a stopped VM): the node resumes with time moved on.
            let d = 300 + self.rng.below(3_000);
            self.trace(format!("node {i} pauses for {d}ms"));
            self.nodes[i].paused_until = self.now + d;
            self.stats.pauses += 1;
            return;
        }
        match self.rng.below(10) {
            0 | 1 => {
                if self.nodes.iter().filter(|x| x.node.is_none()).count() < n - 1 {
                    self.crash_node(i);
                    let d = 200 + self.rng.below(4_000);
                    self.schedule(d, Ev::Restart { node: i });
                }
            }
            2 => {
                self.trace(format!("partition {i} -> {j} (one-way)"));
                self.stats.partitions += 1;
                self.blocked.insert((i, j));
            }
            3 => {
                self.trace(format!("partition {i} <-> {j}"));
                self.stats.partitions += 1;
                self.blocked.insert((i, j));
                self.blocked.insert((j, i));
            }
            4 => {
                let s = self.store_index();
                self.trace(format!("partition node {i} from the lease store"));
                self.stats.partitions += 1;
                self.blocked.insert((i, s));
                if self.rng.chance(0.5) {
                    self.blocked.insert((s, i));
                }
            }
            5 | 6 => {
                self.trace("heal all partitions".into());
                self.blocked.clear();
            }
            7 => {
                // Handoff from the primary to a random node.
                if let Some(p) = self.believed_primary()
                    && self.nodes[p].paused_until <= self.now
                {
                    let to = self.nodes[j].id;
                    self.trace(format!("operator: handoff {p} -> {j}"));
                    self.stats.handoffs += 1;
                    self.feed(p, Input::Handoff { to });
                }
            }
            8 => {
                // Clean shutdown and restart.
                if self.nodes[i].node.is_some() && self.nodes[i].paused_until <= self.now {
                    self.trace(format!("node {i} shuts down cleanly"));
                    self.feed(i, Input::Shutdown);
                    self.crash_node(i);
                    let d = 100 + self.rng.below(2_000);
                    self.schedule(d, Ev::Restart { node: i });
                }
            }
            _ => {
                // A long crash: the node comes back far behind.
                if self.nodes.iter().filter(|x| x.node.is_none()).count() < n - 1 {
                    self.crash_node(i);
                    let d = 5_000 + self.rng.below(10_000);
                    self.schedule(d, Ev::Restart { node: i });
                }
            }
        }
    }

    fn heal_everything(&mut self) {
        self.trace("faults stop: heal everything, restart crashed nodes".into());
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() {
                self.start_node(i);
                self.note_moves(i, Via::Recovery, None);
            }
        }
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
