//! A primary's newest commits kept in memory as the LTX bytes it just wrote, so that sending
//! a commit to its replicas reads no file: the stream task would otherwise hand the read to a
//! blocking thread, read the file back and verify it, for bytes the driver held a moment ago.
//! Files older than the memory bound (a replica catching up) are read from disk as before.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use replite_core::TxId;
use replite_core::stream::DbName;

/// Memory the kept files may take in all.
pub const RECENT_LTX_BYTES: usize = 8 << 20;

/// Largest file kept: a large transaction's file is read from disk when streamed.
pub const RECENT_LTX_FILE_MAX: usize = 256 << 10;

type Key = (DbName, TxId, TxId);

/// The driver's [`RecentLtx`], read by the replica stream tasks when they send a file (so
/// their queues hold names, not bytes, however far behind a replica falls).
pub type SharedRecentLtx = Arc<Mutex<RecentLtx>>;

/// Locks `recent`; a panic while it was held cannot leave it inconsistent in a way that
/// matters (at worst an entry is missing and its file is read from disk).
pub fn lock(recent: &SharedRecentLtx) -> MutexGuard<'_, RecentLtx> {
    recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The newest LTX files this node wrote as primary, by database and range.
///
/// The content of a range is only ever the last bytes written for it: a rewrite replaces
/// the entry, and the driver clears everything when the node stops being primary (as a
/// replica it receives files for the same ranges from another history).
#[derive(Debug, Default)]
pub struct RecentLtx {
    /// Each kept file with the sequence number of its insertion.
    files: BTreeMap<Key, (u64, Bytes)>,
    /// Insertions, oldest first, for eviction; one whose sequence number no longer matches
    /// its key's entry was replaced or removed since.
    order: VecDeque<(u64, Key)>,
    next_seq: u64,
    bytes: usize,
}

impl RecentLtx {
    /// Keeps `file` as the content of `db`'s range `min..=max` (a file over
    /// [`RECENT_LTX_FILE_MAX`] only drops an older entry for the range), evicting the oldest
    /// files past [`RECENT_LTX_BYTES`].
    pub fn insert(&mut self, db: &DbName, min: TxId, max: TxId, file: Bytes) {
        let key = (db.clone(), min, max);
        self.remove(db, min, max);
        if file.len() > RECENT_LTX_FILE_MAX {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += file.len();
        self.files.insert(key.clone(), (seq, file));
        self.order.push_back((seq, key));
        while self.bytes > RECENT_LTX_BYTES {
            let Some((seq, oldest)) = self.order.pop_front() else { break };
            if self.files.get(&oldest).is_some_and(|(s, _)| *s == seq) {
                let (_, evicted) = self.files.remove(&oldest).expect("just seen");
                self.bytes -= evicted.len();
            }
        }
        // Replaced entries leave stale insertions behind; keep the queue proportional.
        if self.order.len() > 2 * self.files.len() + 64 {
            let files = &self.files;
            self.order.retain(|(seq, k)| files.get(k).is_some_and(|(s, _)| s == seq));
        }
    }

    /// The kept content of `db`'s range `min..=max`, if any.
    #[must_use]
    pub fn get(&self, db: &DbName, min: TxId, max: TxId) -> Option<Bytes> {
        self.files.get(&(db.clone(), min, max)).map(|(_, file)| file.clone())
    }

    /// Forgets `db`'s range `min..=max` (its file was removed).
    pub fn remove(&mut self, db: &DbName, min: TxId, max: TxId) {
        if let Some((_, old)) = self.files.remove(&(db.clone(), min, max)) {
            self.bytes -= old.len();
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.files.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(name: &str) -> DbName {
        DbName::new(name).expect("name")
    }

    #[test]
    fn a_rewritten_range_holds_its_last_bytes_and_big_files_are_not_kept() {
        let mut recent = RecentLtx::default();
        recent.insert(&db("a.db"), TxId(1), TxId(1), Bytes::from_static(b"first"));
        recent.insert(&db("a.db"), TxId(1), TxId(1), Bytes::from_static(b"second"));
        assert_eq!(recent.get(&db("a.db"), TxId(1), TxId(1)).as_deref(), Some(&b"second"[..]));
        assert_eq!(recent.get(&db("b.db"), TxId(1), TxId(1)), None);

        recent.insert(&db("a.db"), TxId(1), TxId(1), Bytes::from(vec![0u8; RECENT_LTX_FILE_MAX + 1]));
        assert_eq!(recent.get(&db("a.db"), TxId(1), TxId(1)), None, "an older entry must not outlive a rewrite");
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn the_oldest_files_go_first_past_the_memory_bound() {
        let mut recent = RecentLtx::default();
        let file = Bytes::from(vec![7u8; RECENT_LTX_FILE_MAX]);
        let kept = (RECENT_LTX_BYTES / RECENT_LTX_FILE_MAX) as u64;
        for txid in 1..=kept + 2 {
            recent.insert(&db("a.db"), TxId(txid), TxId(txid), file.clone());
        }
        assert_eq!(recent.get(&db("a.db"), TxId(1), TxId(1)), None);
        assert_eq!(recent.get(&db("a.db"), TxId(2), TxId(2)), None);
        assert!(recent.get(&db("a.db"), TxId(3), TxId(3)).is_some());
        assert!(recent.get(&db("a.db"), TxId(kept + 2), TxId(kept + 2)).is_some());
        assert!(recent.bytes <= RECENT_LTX_BYTES);

        recent.remove(&db("a.db"), TxId(3), TxId(3));
        assert_eq!(recent.get(&db("a.db"), TxId(3), TxId(3)), None);
        recent.clear();
        assert_eq!((recent.files.len(), recent.order.len(), recent.bytes), (0, 0, 0));
    }

    #[test]
    fn evicting_a_replaced_insertion_keeps_the_newer_bytes() {
        let mut recent = RecentLtx::default();
        let file = Bytes::from(vec![1u8; RECENT_LTX_FILE_MAX]);
        recent.insert(&db("a.db"), TxId(1), TxId(1), Bytes::from_static(b"old"));
        recent.insert(&db("a.db"), TxId(2), TxId(2), file.clone());
        recent.insert(&db("a.db"), TxId(1), TxId(1), Bytes::from_static(b"new"));
        // Fill past the bound: the first insertion of range 1 is evicted first, range 2 next.
        let kept = (RECENT_LTX_BYTES / RECENT_LTX_FILE_MAX) as u64;
        for txid in 3..=kept + 1 {
            recent.insert(&db("a.db"), TxId(txid), TxId(txid), file.clone());
        }
        assert_eq!(recent.get(&db("a.db"), TxId(2), TxId(2)), None);
        assert_eq!(recent.get(&db("a.db"), TxId(1), TxId(1)).as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn replacing_one_range_over_and_over_keeps_the_order_queue_small() {
        let mut recent = RecentLtx::default();
        for i in 0..10_000u32 {
            recent.insert(&db("a.db"), TxId(1), TxId(1), Bytes::from(i.to_be_bytes().to_vec()));
        }
        assert!(recent.order.len() <= 2 * recent.files.len() + 64 + 1, "{}", recent.order.len());
        assert_eq!(recent.get(&db("a.db"), TxId(1), TxId(1)).as_deref(), Some(&9_999u32.to_be_bytes()[..]));
    }
}
