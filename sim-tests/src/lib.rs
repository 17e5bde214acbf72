//! replite-sim-tests: workloads for the simulator and the invariants checked after every
//! event. `tests/` runs many seeds; `REPLITE_SIM_SEEDS=N` runs more, `REPLITE_SIM_SEED=S`
//! replays one. A failure names the seed, the replay command and the last events.

use std::collections::{BTreeMap, HashMap, HashSet};

use replite_core::node::{Faults, Role, SyncPolicy};
use replite_core::stream::DbName;
use replite_core::{Epoch, Pos, TxId};
use replite_sim::{Fact, Sim, SimConfig, Stats, Via};

/// Quiet time after faults stop within which every node must converge.
pub const CONVERGE_MS: u64 = 15_000;

/// After faults stop, the cluster must accept and acknowledge writes on every database
/// within this long (while clients still write).
pub const SETTLE_MS: u64 = 6_000;

/// The workload shape a seed runs: rotates through modes so every mode gets many seeds.
#[must_use]
pub fn config_for_seed(seed: u64, node_faults: Faults) -> SimConfig {
    let mut cfg = SimConfig {
        node_faults,
        faults_until_ms: 20_000,
        clients_until_ms: 20_000 + CONVERGE_MS - 5_000,
        ..SimConfig::default()
    };
    if (seed / 4) % 2 == 1 {
        // A new node joins with an empty disk while the cluster is busy.
        cfg.late_join_ms = Some(3_000 + seed.wrapping_mul(7_919) % 12_000);
    }
    // Replicas write through halt locks in half the seeds.
    cfg.halt_locks = (seed / 8) % 2 == 1;
    match seed % 4 {
        0 => {
            // Asynchronous, a non-candidate replica that negotiates no extensions (as LiteFS).
            cfg.nodes = 3;
            cfg.candidates = 2;
            cfg.plain_non_candidates = true;
        }
        1 => {
            cfg.sync = Some(SyncPolicy::Block);
        }
        2 => {
            cfg.nodes = 4;
            cfg.candidates = 3;
            cfg.async_window_ms = Some(1_500);
        }
        _ => {
            cfg.sync = Some(SyncPolicy::Degrade);
        }
    }
    cfg
}

/// What one seed did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Events processed.
    pub events: u64,
    /// Commits acknowledged.
    pub acked: u64,
    /// Primaries elected.
    pub elections: u64,
    /// What the simulator did.
    pub stats: Stats,
    /// Durability promises checked against a node's recovery after a crash or restart.
    pub promises_checked: u64,
    /// Acknowledged commits missing from the converged history: lost to a failover, which
    /// asynchronous mode allows (synchronous mode fails the seed instead).
    pub acked_lost: u64,
}

/// A completed handoff, as the checker remembers it.
#[derive(Debug)]
struct Handoff {
    from: usize,
    to: usize,
    /// The old primary's positions (its target had acknowledged them).
    positions: Vec<(DbName, Pos)>,
    /// When the handed term expires in the store unless taken over.
    expires_by: u64,
}

/// Invariant state built from the simulator's facts.
#[derive(Debug, Default)]
pub struct Checker {
    sync: bool,
    window_ms: Option<u64>,
    /// Every position some primary created, per database: post -> (pre, epoch, time).
    parent: HashMap<(DbName, Pos), (Pos, Epoch, u64)>,
    /// Other parents of a position more than one history reached: only a drop's (every
    /// drop at a TXID ends at the same empty database, whatever came before it).
    other_parents: HashMap<(DbName, Pos), Vec<Pos>>,
    epoch_writer: BTreeMap<Epoch, usize>,
    /// The last commit of each database in each epoch (true time).
    last_write_at: BTreeMap<(Epoch, DbName), u64>,
    acked: Vec<(DbName, Pos, u64)>,
    last_acked: BTreeMap<DbName, Pos>,
    degraded: HashSet<(DbName, TxId)>,
    max_source_epoch: BTreeMap<(usize, DbName), Epoch>,
    elections: u64,
    /// The newest position each node told an application was durable, per database, while
    /// its history still holds it (a snapshot from another primary may legitimately replace
    /// it). A crash of that node must not lose it.
    promised: BTreeMap<(usize, DbName), Pos>,
    /// Nodes between their start and the end of their recovery replay.
    recovering: HashSet<usize>,
    /// Promises checked against a recovery.
    promises_checked: u64,
    /// The last completed handoff, until the next election.
    handed_off: Option<Handoff>,
}

impl Checker {
    /// A checker for a configuration.
    #[must_use]
    pub fn new(cfg: &SimConfig) -> Checker {
        Checker { sync: cfg.sync.is_some(), window_ms: cfg.async_window_ms, ..Checker::default() }
    }

    fn known(&self, db: &DbName, pos: Pos) -> bool {
        pos == Pos::ZERO || self.parent.contains_key(&(db.clone(), pos))
    }

    fn parent_of(&self, db: &DbName, pos: Pos) -> Option<&(Pos, Epoch, u64)> {
        self.parent.get(&(db.clone(), pos))
    }

    /// Every ancestor of `pos` at `txid`, walking all recorded histories (they join at drops).
    fn ancestors_at(&self, db: &DbName, pos: Pos, txid: TxId) -> Vec<Pos> {
        let mut found = Vec::new();
        let mut todo = vec![pos];
        let mut seen = HashSet::new();
        while let Some(pos) = todo.pop() {
            if !seen.insert(pos) {
                continue;
            }
            if pos.txid <= txid {
                if pos.txid == txid {
                    found.push(pos);
                }
                continue;
            }
            todo.extend(self.parent_of(db, pos).map(|p| p.0));
            todo.extend(self.other_parents.get(&(db.clone(), pos)).into_iter().flatten().copied());
        }
        found
    }

    /// Whether `promise` is on some recorded history that leads to `pos`.
    fn descends_from(&self, db: &DbName, pos: Pos, promise: Pos) -> bool {
        self.ancestors_at(db, pos, promise.txid).contains(&promise)
    }

    fn lineage(&self, db: &DbName, mut pos: Pos) -> HashSet<Pos> {
        let mut set = HashSet::new();
        while pos != Pos::ZERO && set.insert(pos) {
            match self.parent_of(db, pos) {
                Some(p) => pos = p.0,
                None => break,
            }
        }
        set
    }

    /// Checks everything that happened since the last call, then the writers at this instant.
    pub fn check(&mut self, sim: &mut Sim) -> Result<(), String> {
        for fact in std::mem::take(&mut sim.facts) {
            self.fact(fact)?;
        }
        let mut writers = Vec::new();
        for i in 0..sim.node_count() {
            let local = sim.local_time(i, sim.now);
            if let Some(node) = sim.node(i) {
                if let Some(epoch) = node.accepting_writes(local) {
                    writers.push((i, epoch));
                }
                for (db, pos) in node.positions() {
                    if !self.known(db, pos) {
                        return Err(format!("node {i} is at {db} {pos}, a position no primary created"));
                    }
                }
            }
        }
        if writers.len() > 1 {
            return Err(format!("two nodes accept writes at once: {writers:?}"));
        }
        for (i, epoch) in writers {
            if let Some(&w) = self.epoch_writer.get(&epoch)
                && w != i
            {
                return Err(format!("node {i} accepts writes in epoch {epoch}, which node {w} wrote in"));
            }
        }
        Ok(())
    }

    fn fact(&mut self, fact: Fact) -> Result<(), String> {
        match fact {
            Fact::Committed { node, db, epoch, pre, post, at } => {
                if let Some(&w) = self.epoch_writer.get(&epoch)
                    && w != node
                {
                    return Err(format!("node {node} committed {post} in epoch {epoch}, already written by node {w}"));
                }
                if !self.known(&db, pre) {
                    return Err(format!("node {node} committed on top of unknown position {pre}"));
                }
                if post.txid != pre.txid.next() {
                    return Err(format!("node {node} committed {post} on top of {pre}: TXID is not last + 1"));
                }
                self.epoch_writer.insert(epoch, node);
                self.last_write_at.insert((epoch, db.clone()), at);
                let key = (db, post);
                if let Some(&(other, _, _)) = self.parent.get(&key)
                    && other != pre
                {
                    self.other_parents.entry(key.clone()).or_default().push(other);
                }
                self.parent.insert(key, (pre, epoch, at));
            }
            Fact::Acked { node, db, pos, at } => {
                if !self.known(&db, pos) || pos == Pos::ZERO {
                    return Err(format!("node {node} acknowledged {pos}, which was never committed"));
                }
                if self.sync && !self.degraded.contains(&(db.clone(), pos.txid)) {
                    if let Some(&last) = self.last_acked.get(&db)
                        && last.txid <= pos.txid
                        && !self.descends_from(&db, pos, last)
                    {
                        {
                            return Err(format!(
                                "node {node} acknowledged {pos}, which does not descend from acknowledged {last}: an acknowledged transaction was lost"
                            ));
                        }
                    }
                    if self.last_acked.get(&db).is_none_or(|l| l.txid <= pos.txid) {
                        self.last_acked.insert(db.clone(), pos);
                    }
                }
                self.acked.push((db, pos, at));
            }
            Fact::Degraded { db, txid } => {
                self.degraded.insert((db, txid));
            }
            Fact::HandedOff { node, to, positions, expires_by, .. } => {
                self.handed_off = Some(Handoff { from: node, to, positions, expires_by });
            }
            Fact::BecamePrimary { node, epoch, positions, at } => {
                self.elections += 1;
                // A handoff passes the term to a caught-up target; the lease is never free in
                // between, so before the handed term could expire nobody else can win it.
                if let Some(Handoff { from, to, positions: handed, expires_by }) = self.handed_off.take()
                    && at < expires_by
                {
                    if node != to {
                        return Err(format!(
                            "node {node} became primary (epoch {epoch}) right after node {from} handed off to \
                             node {to}: the handed lease went to another node"
                        ));
                    }
                    let now: BTreeMap<&DbName, Pos> = positions.iter().map(|(d, p)| (d, *p)).collect();
                    for (db, pos) in handed {
                        let here = now.get(&db).copied().unwrap_or(Pos::ZERO);
                        if pos != Pos::ZERO && !self.descends_from(&db, here, pos) {
                            return Err(format!(
                                "node {node} became primary (epoch {epoch}) at {db} {here} right after node {from} \
                                 handed off at {pos}: the handed lease went to a node behind it"
                            ));
                        }
                    }
                }
                let positions: BTreeMap<DbName, Pos> = positions.into_iter().collect();
                let pos_of = |db: &DbName| positions.get(db).copied().unwrap_or(Pos::ZERO);
                for (db, &pos) in &positions {
                    if !self.known(db, pos) {
                        return Err(format!("node {node} became primary at unknown position {db} {pos}"));
                    }
                }
                if self.sync {
                    for (db, &last) in &self.last_acked {
                        let pos = pos_of(db);
                        if !self.descends_from(db, pos, last) {
                            return Err(format!(
                                "node {node} became primary (epoch {epoch}) at {db} {pos} without acknowledged {last}"
                            ));
                        }
                    }
                }
                if let Some(window) = self.window_ms {
                    let mut lineages: BTreeMap<DbName, HashSet<Pos>> = BTreeMap::new();
                    for (db, acked, at) in &self.acked {
                        let lineage = lineages.entry(db.clone()).or_insert_with(|| self.lineage(db, pos_of(db)));
                        if lineage.contains(acked) {
                            continue;
                        }
                        // A drop's position is reached by every history that drops at that
                        // TXID: which epoch acknowledged it cannot be told from the position,
                        // so the window is not checked for it.
                        if self.other_parents.contains_key(&(db.clone(), *acked)) {
                            continue;
                        }
                        let Some(&(_, e, _)) = self.parent_of(db, *acked) else { continue };
                        let last = self.last_write_at.get(&(e, db.clone())).copied().unwrap_or(*at);
                        // Slack: acknowledgement latency and commit spacing on top of the window.
                        if at + window + 500 < last {
                            return Err(format!(
                                "node {node} became primary at {db} {}, losing {acked} acknowledged at {at}ms, \
                                 more than the {window}ms window before epoch {e}'s last write to it at {last}ms",
                                pos_of(db)
                            ));
                        }
                    }
                }
            }
            Fact::Promised { node, db, pos } => {
                if !self.known(&db, pos) {
                    return Err(format!("node {node} promised {db} {pos} durable, a position no primary created"));
                }
                let key = (node, db);
                if self.promised.get(&key).is_none_or(|p| p.txid <= pos.txid) {
                    self.promised.insert(key, pos);
                }
            }
            Fact::SnapshotWritten { node, db, pos } => {
                let key = (node, db.clone());
                if let Some(&promise) = self.promised.get(&key)
                    && !self.descends_from(&db, pos, promise)
                {
                    self.promised.remove(&key);
                }
            }
            Fact::ReplayFailed { node } => {
                self.promised.retain(|(n, _), _| *n != node);
            }
            Fact::HaltPagesAtCrash { node, db } => {
                self.promised.remove(&(node, db));
            }
            Fact::Started { node } => {
                self.recovering.insert(node);
            }
            Fact::Recovered { node, positions } => {
                self.recovering.remove(&node);
                let positions: BTreeMap<DbName, Pos> = positions.into_iter().collect();
                let promised: Vec<(DbName, Pos)> =
                    self.promised.iter().filter(|((n, _), _)| *n == node).map(|((_, d), p)| (d.clone(), *p)).collect();
                for (db, promise) in promised {
                    self.promises_checked += 1;
                    let pos = positions.get(&db).copied().unwrap_or(Pos::ZERO);
                    if !self.descends_from(&db, pos, promise) {
                        return Err(format!(
                            "node {node} recovered {db} at {pos} without {promise}, which it had told an application was durable"
                        ));
                    }
                }
            }
            Fact::ApplyMismatch { node, db } => {
                return Err(format!("node {node} asked to apply an LTX file that does not fit its {db} database"));
            }
            Fact::Moved { node, db, from, to, via, source_epoch } => {
                if !self.known(&db, to) {
                    return Err(format!("node {node} moved from {from} to unknown position {to}"));
                }
                // A snapshot from another primary replaced what this node had promised (a
                // failover lost it, within what asynchronous mode allows): nothing to hold
                // its disk to any more.
                let key = (node, db.clone());
                if let Some(&promise) = self.promised.get(&key)
                    && !self.recovering.contains(&node)
                    && via != Via::Recovery
                    && !self.descends_from(&db, to, promise)
                {
                    self.promised.remove(&key);
                }
                if via == Via::Incremental && to != Pos::ZERO {
                    let pre = self.parent_of(&db, to).map(|p| p.0);
                    // A drop ends every history at the same position: any of its parents.
                    let other_parent = self.other_parents.get(&(db.clone(), to)).is_some_and(|o| o.contains(&from));
                    if pre != Some(from) && !other_parent {
                        return Err(format!(
                            "node {node} applied {to} on top of {from}, but it follows {pre:?}: out of order or twice"
                        ));
                    }
                }
                if let Some(e) = source_epoch {
                    let max = self.max_source_epoch.entry((node, db.clone())).or_default();
                    if e < *max {
                        return Err(format!("node {node} applied data from epoch {e} after following epoch {max}"));
                    }
                    *max = e;
                }
            }
        }
        Ok(())
    }
}

/// Runs one seed to the end: faults, then a quiet period, then the convergence check.
pub fn run_seed(seed: u64, cfg: SimConfig) -> Result<Summary, String> {
    let quiet_until = cfg.faults_until_ms + CONVERGE_MS;
    // Once faults stop and the cluster has had time to settle, writes must succeed again.
    let settled_at = cfg.faults_until_ms + SETTLE_MS;
    let clients_until = cfg.clients_until_ms;
    let mut checker = Checker::new(&cfg);
    let mut sim = Sim::new(seed, cfg);
    sim.echo_trace = std::env::var_os("REPLITE_SIM_TRACE").is_some();
    let fail = |sim: &Sim, why: String| -> String {
        format!(
            "seed {seed} failed at {}ms after {} events: {why}\nreplay: REPLITE_SIM_SEED={seed} cargo test -p replite-sim-tests --test simulation -- --nocapture (add REPLITE_SIM_TRACE=1 for every event)\nnodes:\n  {}\nlast events:\n  {}",
            sim.now,
            sim.events,
            sim.describe_nodes().join("\n  "),
            sim.trace_lines().join("\n  ")
        )
    };
    while sim.now < quiet_until {
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.step()));
        match stepped {
            Ok(true) => {}
            Ok(false) => break,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                return Err(fail(&sim, format!("panic: {msg}")));
            }
        }
        if let Err(why) = checker.check(&mut sim) {
            return Err(fail(&sim, why));
        }
    }
    // Convergence: one primary, everyone at its position, disks agree.
    let primaries: Vec<usize> = (0..sim.node_count())
        .filter(|&i| matches!(sim.node(i).map(|n| n.role()), Some(Role::Primary { .. })))
        .collect();
    let [p] = primaries[..] else {
        return Err(fail(&sim, format!("{CONVERGE_MS}ms after faults stopped there are primaries {primaries:?}")));
    };
    let names: Vec<DbName> = sim.db_names().to_vec();
    for db in &names {
        let target = sim.node(p).map(|n| n.pos(db)).unwrap_or(Pos::ZERO);
        for i in 0..sim.node_count() {
            let pos = sim.node(i).map(|n| n.pos(db));
            if pos != Some(target) {
                return Err(fail(
                    &sim,
                    format!("node {i} at {db} {pos:?} has not converged to primary {p}'s {target}"),
                ));
            }
            if !sim.disk_busy(i) && target != Pos::ZERO {
                let disk = sim.disk_checksum(i, db);
                if disk != target.checksum {
                    return Err(fail(&sim, format!("node {i}'s {db} file sums to {disk}, its position says {target}")));
                }
            }
        }
    }
    for db in &names {
        let progressed = checker.acked.iter().any(|(d, _, at)| d == db && *at >= settled_at && *at < clients_until);
        if !progressed {
            return Err(fail(
                &sim,
                format!(
                    "no commit to {db} was acknowledged between {settled_at}ms and {clients_until}ms: writes are stuck"
                ),
            ));
        }
    }
    let acked_lost = names
        .iter()
        .map(|db| {
            let kept = checker.lineage(db, sim.node(p).map(|n| n.pos(db)).unwrap_or(Pos::ZERO));
            checker.acked.iter().filter(|(d, pos, _)| d == db && !kept.contains(pos)).count() as u64
        })
        .sum();
    Ok(Summary {
        events: sim.events,
        acked: sim.acked_commits,
        elections: checker.elections,
        stats: sim.stats,
        promises_checked: checker.promises_checked,
        acked_lost,
    })
}

/// Seeds to run: `REPLITE_SIM_SEED=S` for one, else `REPLITE_SIM_SEEDS=N` of them (default
/// given) starting at `REPLITE_SIM_SEED_BASE` (default 0).
#[must_use]
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    if let Some(seed) = var("REPLITE_SIM_SEED") {
        return vec![seed];
    }
    let n = var("REPLITE_SIM_SEEDS").unwrap_or(default);
    let base = var("REPLITE_SIM_SEED_BASE").unwrap_or(0);
    (base..base.saturating_add(n)).collect()
}
