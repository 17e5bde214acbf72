//! The index of the LTX files a node retains: enough to serve replicas, check
//! acknowledgements against our lineage, and apply retention.

use std::collections::BTreeMap;

use crate::node::time::Millis;
use crate::types::{Checksum, Pos, TxId};

/// One retained LTX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtxEntry {
    /// First transaction.
    pub min: TxId,
    /// Last transaction.
    pub max: TxId,
    /// Pre-apply checksum (zero for a snapshot).
    pub pre: Checksum,
    /// Post-apply checksum.
    pub post: Checksum,
    /// Size in bytes.
    pub size: u64,
    /// When it was added (our clock).
    pub added_at: Millis,
}

impl LtxEntry {
    /// The position after this file.
    #[must_use]
    pub fn post_pos(&self) -> Pos {
        Pos::new(self.max, self.post)
    }
}

/// Retained LTX files by max TXID, forming one checksum chain.
#[derive(Debug, Clone, Default)]
pub struct History {
    files: BTreeMap<TxId, LtxEntry>,
    bytes: u64,
}

impl History {
    /// Adds a file that extends the chain (or, for a snapshot, replaces it). Returns the
    /// files the caller must delete from disk because the snapshot superseded them.
    pub fn push(&mut self, entry: LtxEntry) -> Vec<LtxEntry> {
        let mut dropped = Vec::new();
        if entry.min == TxId(1) {
            dropped.extend(self.files.values().copied().filter(|f| f.max != entry.max || f.min != entry.min));
            self.files.clear();
            self.bytes = 0;
        } else if let Some(last) = self.last() {
            debug_assert_eq!(last.max.next(), entry.min, "history chain broken");
            debug_assert_eq!(last.post, entry.pre, "history checksum chain broken");
        }
        self.bytes += entry.size;
        self.files.insert(entry.max, entry);
        dropped
    }

    /// The newest file.
    #[must_use]
    pub fn last(&self) -> Option<&LtxEntry> {
        self.files.values().next_back()
    }

    /// The oldest file.
    #[must_use]
    pub fn first(&self) -> Option<&LtxEntry> {
        self.files.values().next()
    }

    /// The file whose range starts at `min`.
    #[must_use]
    pub fn starting_at(&self, min: TxId) -> Option<&LtxEntry> {
        self.files.range(min..).next().map(|(_, f)| f).filter(|f| f.min == min)
    }

    /// The file whose range ends at `max`.
    #[must_use]
    pub fn ending_at(&self, max: TxId) -> Option<&LtxEntry> {
        self.files.get(&max)
    }

    /// Whether `pos` is a position on this chain (the end of some retained file).
    #[must_use]
    pub fn contains(&self, pos: Pos) -> bool {
        self.files.get(&pos.txid).is_some_and(|f| f.post == pos.checksum)
    }

    /// The position on this chain whose database checksum is `checksum`, if any (the newest
    /// such, should a checksum repeat). Lets a caller name the position of a database image it
    /// read without knowing which transaction it saw.
    #[must_use]
    pub fn position_with_checksum(&self, checksum: Checksum) -> Option<Pos> {
        self.files.values().rev().find(|f| f.post == checksum).map(LtxEntry::post_pos)
    }

    /// Removes and returns the oldest file.
    pub fn pop_first(&mut self) -> Option<LtxEntry> {
        let (_, f) = self.files.pop_first()?;
        self.bytes -= f.size;
        Some(f)
    }

    /// Total size of retained files.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many files are retained.
    #[must_use]
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is retained.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Drops everything (after recovery found the history unusable).
    pub fn clear(&mut self) -> Vec<LtxEntry> {
        self.bytes = 0;
        std::mem::take(&mut self.files).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(min: u64, max: u64, pre: u64, post: u64) -> LtxEntry {
        LtxEntry {
            min: TxId(min),
            max: TxId(max),
            pre: Checksum(pre),
            post: Checksum(post),
            size: 10,
            added_at: Millis(0),
        }
    }

    #[test]
    fn a_checksum_on_the_chain_names_its_position_and_others_none() {
        let mut h = History::default();
        h.push(entry(1, 1, 0, 0x8000_0000_0000_0001));
        h.push(entry(2, 3, 0x8000_0000_0000_0001, 0x8000_0000_0000_0003));
        assert_eq!(
            h.position_with_checksum(Checksum(0x8000_0000_0000_0003)),
            Some(Pos::new(TxId(3), Checksum(0x8000_0000_0000_0003)))
        );
        assert_eq!(
            h.position_with_checksum(Checksum(0x8000_0000_0000_0001)),
            Some(Pos::new(TxId(1), Checksum(0x8000_0000_0000_0001)))
        );
        assert_eq!(h.position_with_checksum(Checksum(0x8000_0000_0000_0002)), None);
    }
}
