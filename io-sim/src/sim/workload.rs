//! What happens to the cluster: clients committing, node starts, crashes, pauses,
//! partitions, handoffs, and the end of the fault period.

use super::*;

impl Sim {
    pub(super) fn start_node(&mut self, i: usize) {
        let page_size = page_size();
        let n = &mut self.nodes[i];
        n.inc += 1;
        n.cfg.seed = n.cfg.seed.wrapping_add(0x9e37_79b9);
        n.ops.clear();
        n.recovering = true;
        self.facts.push(Fact::Started { node: i });
        let n = &mut self.nodes[i];
        n.syncs.clear();
        n.requested.clear();
        n.halt_primary.clear();
        n.halt_sent.clear();
        n.halt_written.clear();
        let recovery = Recovery {
            dbs: n.disks.iter_mut().map(|(name, d)| (name.clone(), d.recovery(page_size))).collect(),
            max_epoch: n.saved_epoch,
        };
        n.node = Some(Node::new(n.cfg.clone()).expect("simulated configs are valid"));
        n.upstream_epoch = None;
        let files: usize = recovery.dbs.values().map(|r| r.ltx.len()).sum();
        let torn: usize = recovery.dbs.values().map(|r| r.invalid_ltx.len()).sum();
        let line = format!("node {i} starts: {files} LTX files, {torn} torn");
        self.trace(line);
        self.feed(i, Input::Start(recovery));
    }

    pub(super) fn crash_node(&mut self, i: usize) {
        if self.nodes[i].node.is_none() {
            return;
        }
        self.trace(format!("node {i} crashes"));
        self.stats.crashes += 1;
        for db in std::mem::take(&mut self.nodes[i].halt_written) {
            self.facts.push(Fact::HaltPagesAtCrash { node: i, db });
        }
        let ops = std::mem::take(&mut self.nodes[i].ops);
        self.nodes[i].spools.clear();
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
        // What was written without an fsync: each file and the database's later applies may
        // or may not have reached the disk.
        let mut lost = (0, 0);
        let names: Vec<DbName> = self.nodes[i].disks.keys().cloned().collect();
        for name in names {
            let Some(disk) = self.nodes[i].disks.get_mut(&name) else { continue };
            let loss = disk.crash(&mut self.rng);
            lost = (lost.0 + loss.files_lost, lost.1 + loss.applies_lost);
        }
        self.stats.volatile_files_lost += lost.0;
        if lost != (0, 0) {
            self.trace(format!("node {i} loses {} unflushed LTX files and {} database applies", lost.0, lost.1));
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

    /// The first node that believes it is primary.
    pub(super) fn believed_primary(&self) -> Option<usize> {
        (0..self.nodes.len())
            .find(|&i| matches!(self.nodes[i].node.as_ref().map(Node::role), Some(Role::Primary { .. })))
    }

    pub(super) fn client_commit(&mut self) {
        // Clients write on whichever node believes it is primary, sometimes on a random one.
        let n = self.nodes.len();
        let mut target = self.rng.below(n as u64) as usize;
        if !self.rng.chance(0.1)
            && let Some(p) = self.believed_primary()
        {
            target = p;
        }
        let name = self.db_names[self.rng.below(self.db_names.len() as u64) as usize].clone();
        if self.cfg.halt_locks {
            // Replicas write through halt locks: a holder gets a share of the commits and
            // lets go now and then; a replica without one sometimes takes one.
            match self.halt_holder(&name) {
                Some(r) if self.rng.chance(0.05) => {
                    self.trace(format!("node {r} lets go of its halt lock on {name}"));
                    self.nodes[r].halt_primary.remove(&name);
                    self.feed(r, Input::ReleaseHalt { db: name });
                    return;
                }
                Some(r) if self.rng.chance(0.4) => target = r,
                // The lock halts the primary's own writers of this database.
                Some(r) if self.nodes[r].halt_primary.get(&name) == Some(&target) => return,
                None if self.rng.chance(0.05) => {
                    let r = self.rng.below(n as u64) as usize;
                    if matches!(self.nodes[r].node.as_ref().map(Node::role), Some(Role::Replica { .. })) {
                        self.take_halt(r, &name);
                        return;
                    }
                }
                _ => {}
            }
        }
        if self.nodes[target].paused_until > self.now {
            return;
        }
        let Some(node) = self.nodes[target].node.as_ref() else { return };
        // Sent to the primary: durable there, not here, when acknowledged.
        let under_halt = node.writes_under_halt(&name);
        let applying = self.nodes[target]
            .ops
            .values()
            .any(|(db, op)| *db == name && matches!(op, DiskOp::Persist { apply: true, .. }));
        if under_halt && applying {
            // An apply holds SQLite's locks: the application's transaction waits for it.
            return;
        }
        let pos = node.pos(&name);
        if pos.txid != TxId::ZERO && pos.checksum != replite_core::Checksum::EMPTY && self.rng.chance(0.01) {
            // The application deletes the database (it is created again by a later commit).
            let id = self.next_commit;
            self.next_commit += 1;
            self.trace(format!("client drops {name} on node {target}"));
            self.feed(target, Input::DropDb { commit: CommitId(id), db: name });
            self.note_moves(target, Via::Incremental, None);
            return;
        }
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
        // Half the commits are WAL-like (nobody asked for durability yet), half rollback-like.
        let durability = if self.rng.chance(0.5) { Durability::Deferred } else { Durability::Requested };
        if durability == Durability::Requested && !under_halt {
            self.nodes[target].requested.insert(CommitId(id));
        }
        let commit = Input::Commit {
            commit: CommitId(id),
            db: name.clone(),
            page_size,
            pages,
            commit_pages,
            removed,
            durability,
            remote: None,
        };
        self.feed(target, commit);
        self.note_moves(target, Via::Incremental, None);
        // Sometimes the application fsyncs right after (SQLite's WAL fsync, or a checkpoint):
        // everything committed before it must be durable when it is answered.
        if self.rng.chance(0.3) && self.nodes[target].node.is_some() && !under_halt {
            let pos = self.nodes[target].node.as_ref().map_or(Pos::ZERO, |n| n.pos(&name));
            let sync = SyncId(self.next_commit);
            self.next_commit += 1;
            self.nodes[target].syncs.insert(sync, (name.clone(), pos));
            self.feed(target, Input::Sync { sync, db: name });
        }
    }

    pub(super) fn inject_fault(&mut self) {
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
                if self.rng.chance(0.5) && self.nodes[j].paused_until <= self.now && self.nodes[j].node.is_some() {
                    // Operator promotion of a random node (LiteFS: it asks the primary to hand off).
                    self.trace(format!("operator: promote {j}"));
                    self.stats.handoffs += 1;
                    self.feed(j, Input::Promote);
                } else if let Some(p) = self.believed_primary()
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

    pub(super) fn heal_everything(&mut self) {
        self.trace("faults stop: heal everything, restart crashed nodes".into());
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() {
                self.start_node(i);
                self.note_moves(i, Via::Recovery, None);
            }
        }
    }
}
