//! Replicas writing through halt locks on their primary (decision 0022), as
//! `litefs run -with-halt-lock-on` does: the lock is taken at the primary's position, each
//! transaction travels to the primary as an LTX file (`POST /tx`), and the primary's verdict
//! travels back, over links that partitions cut and to nodes that crash.
//!
//! The application's pages land in the replica's database file, unsynced, before the
//! transaction is sent (SQLite writes them before the commit point); a refused or timed-out
//! one is rolled back. The primary's own writers of that database wait
//! while the lock is held, except the clients that write to a random node.

use super::*;
use replite_core::ltx::Decoder;
use replite_core::node::RemoteCommit;

/// How long a replica waits for the primary's answer to a transaction it sent under a halt
/// lock before failing the commit (the HTTP request's timeout).
const HALT_TX_TIMEOUT_MS: u64 = 1_500;

impl Sim {
    /// The replica holding a halt lock on `db`, if one does.
    pub(super) fn halt_holder(&self, db: &DbName) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].node.as_ref().is_some_and(|n| n.writes_under_halt(db)))
    }

    /// Replica `r` takes a halt lock on `db` at the primary's position (its Node refuses it
    /// unless it is there too).
    pub(super) fn take_halt(&mut self, r: usize, db: &DbName) {
        let Some(p) = self.believed_primary().filter(|&p| p != r) else { return };
        let Some(pos) = self.nodes[p].node.as_ref().map(|n| n.pos(db)).filter(|pos| pos.txid != TxId::ZERO) else {
            return;
        };
        let lock_id = self.next_lock;
        self.next_lock += 1;
        self.trace(format!("node {r} takes halt lock {lock_id} on {db} at node {p}'s {pos}"));
        self.nodes[r].halt_primary.insert(db.clone(), p);
        self.feed(r, Input::HoldHalt { db: db.clone(), lock_id, pos });
    }

    /// Replica `i` sends a transaction made under its halt lock on `db` to the primary it
    /// took the lock on; without an answer in time the commit fails.
    pub(super) fn send_halt_tx(&mut self, i: usize, commit: CommitId, db: DbName, bytes: Vec<u8>) {
        self.stats.halt_commits_sent += 1;
        // SQLite wrote the pages before the commit point that waits for this answer.
        let undo = self.nodes[i].disks.entry(db.clone()).or_default().write_pages(&bytes);
        self.nodes[i].halt_written.insert(db.clone());
        self.nodes[i].halt_sent.insert(commit, (db.clone(), undo));
        let inc = self.nodes[i].inc;
        let timeout = Input::SentUnderHalt { commit, accepted: false };
        self.schedule(HALT_TX_TIMEOUT_MS, Ev::Request { node: i, inc, input: timeout });
        let Some(&p) = self.nodes[i].halt_primary.get(&db) else { return };
        if self.nodes[p].node.is_some() && self.link_ok(i, p) {
            let lat = self.latency();
            let pinc = self.nodes[p].inc;
            self.schedule(lat, Ev::HaltTx { node: p, inc: pinc, replica: i, rinc: inc, commit, db, bytes });
        }
    }

    /// A transaction from replica `from` arrives at node `p`: its pages, with their old
    /// checksums in `p`'s database, become a commit of `p`'s own that its Node accepts only
    /// where the replica made it (`RemoteCommit`).
    pub(super) fn deliver_halt_tx(&mut self, p: usize, from: (usize, u64, CommitId), db: DbName, bytes: &[u8]) {
        let mut decoder = Decoder::new(bytes).expect("a replica's Node encodes whole LTX files");
        let header = *decoder.header();
        let psize = header.page_size.bytes();
        let empty = Disk::default();
        let file = &self.nodes[p].disks.get(&db).unwrap_or(&empty).db;
        let old_of = |pgno: u32| {
            let start = (pgno as usize - 1) * psize;
            (start + psize <= file.len()).then(|| page_checksum(Pgno(pgno), &file[start..start + psize]))
        };
        let mut pages = Vec::new();
        let mut data = vec![0u8; psize];
        while let Some(pgno) = decoder.next_page(&mut data).expect("a replica's Node encodes whole LTX files") {
            pages.push(PageChange { pgno, old: old_of(pgno.0), data: data.clone() });
        }
        let removed: Vec<(Pgno, replite_core::Checksum)> = (header.commit + 1..=(file.len() / psize) as u32)
            .filter_map(|pgno| old_of(pgno).map(|sum| (Pgno(pgno), sum)))
            .collect();
        let post = decoder.trailer().expect("decoded to its end").post_apply_checksum;
        let base = Pos { txid: TxId(header.min_txid.0 - 1), checksum: header.pre_apply_checksum };
        let remote = RemoteCommit { origin: Some(self.nodes[from.0].id), base, post };
        let commit = CommitId(self.next_commit);
        self.next_commit += 1;
        self.remote_commits.insert(commit, from);
        // Durable here before it is acknowledged, like any commit sent this way.
        self.nodes[p].requested.insert(commit);
        self.trace(format!("node {p} <- halt transaction {} of {db} from node {}", header.max_txid, from.0));
        let input = Input::Commit {
            commit,
            db,
            page_size: header.page_size,
            pages,
            commit_pages: header.commit,
            removed,
            durability: Durability::Requested,
            remote: Some(remote),
        };
        self.feed(p, input);
    }

    /// Node `p` answered commit `commit`: if a replica sent it under a halt lock, the verdict
    /// goes back to that replica (unless the link is cut: then its request times out).
    pub(super) fn answer_halt_tx(&mut self, p: usize, commit: CommitId, accepted: bool) {
        let Some((r, rinc, theirs)) = self.remote_commits.remove(&commit) else { return };
        if accepted {
            self.stats.halt_commits_accepted += 1;
        }
        if self.link_ok(p, r) {
            let lat = self.latency();
            self.schedule(
                lat,
                Ev::Request { node: r, inc: rinc, input: Input::SentUnderHalt { commit: theirs, accepted } },
            );
        }
    }
}
