//! Originals of database pages a rollback transaction writes without journaling them.
//!
//! SQLite journals a page's original before writing the page into the database file, with
//! one exception: a freelist leaf reused by the transaction (`getPageNormal` with
//! `noContent`) is marked as journaled without a record, because SQLite never reads a free
//! page's old bytes. replite's checksums cover every page, so a copy that lays a live
//! journal's originals over the file (`copy`, when a writer holds EXCLUSIVE) needs those
//! bytes too. The mount sees every journal record and database write of the primary, so it
//! keeps the original of each page written before any record for it, up to a limit.

use std::collections::{BTreeMap, BTreeSet};

/// Memory for originals per database and transaction. Reused freelist leaves are few in
/// ordinary transactions; a transaction past this makes copies around it fail (and be
/// retried) rather than hold its size in memory.
const ORIGINALS_BYTES_MAX: usize = 32 * 1024 * 1024;

/// What the open rollback transaction of one database wrote without journaling first.
#[derive(Debug, Default)]
pub(crate) struct Unjournaled {
    /// The last 4-byte journal write (a record's page number comes first): offset, value.
    last_pgno_write: Option<(u64, u32)>,
    /// Pages with a record in the journal.
    journaled: BTreeSet<u32>,
    /// Pages written to the database file in this transaction.
    written: BTreeSet<u32>,
    /// Originals of pages written before any record for them (empty: past the end of file).
    originals: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    /// Some original could not be kept (limit, or a write that is not one whole page).
    pub(crate) incomplete: bool,
}

impl Unjournaled {
    /// Notes a journal write: a page-sized write right after a 4-byte one is the page of a
    /// record whose number the 4 bytes gave (`pagerAddPageToRollbackJournal`).
    pub(crate) fn journal_write(&mut self, offset: u64, data: &[u8]) {
        if let Ok(pgno) = <[u8; 4]>::try_from(data) {
            self.last_pgno_write = Some((offset, u32::from_be_bytes(pgno)));
        } else if let Some((at, pgno)) = self.last_pgno_write.take()
            && at + 4 == offset
            && is_page_len(data.len())
        {
            self.journaled.insert(pgno);
        }
    }

    /// Before a database write of `len` bytes at `offset`: whether the original must be kept
    /// (the page's first write in this transaction, with no record), and which page.
    /// Marks the transaction incomplete for writes that are not one whole page.
    pub(crate) fn needs_original(&mut self, offset: u64, len: usize) -> Option<u32> {
        if !is_page_len(len) || !offset.is_multiple_of(len as u64) {
            self.incomplete = true;
            return None;
        }
        let pgno = u32::try_from(offset / len as u64 + 1).ok()?;
        if !self.written.insert(pgno) || self.journaled.contains(&pgno) {
            return None;
        }
        if self.bytes + len > ORIGINALS_BYTES_MAX {
            self.incomplete = true;
            return None;
        }
        Some(pgno)
    }

    /// Keeps `original` (what the file held, possibly short or empty past its end).
    pub(crate) fn keep(&mut self, pgno: u32, original: Vec<u8>) {
        self.bytes += original.len();
        self.originals.insert(pgno, original);
    }

    /// The original of `pgno` kept for this transaction, if any: `Some(bytes)`, zero-padded by
    /// the caller to a page.
    pub(crate) fn original(&self, pgno: u32) -> Option<&[u8]> {
        self.originals.get(&pgno).map(Vec::as_slice)
    }
}

fn is_page_len(len: usize) -> bool {
    (512..=65536).contains(&len) && len.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pages_written_before_their_record_keep_an_original() {
        let mut u = Unjournaled::default();
        u.journal_write(512, &7u32.to_be_bytes());
        u.journal_write(516, &[0u8; 4096]);
        assert_eq!(u.needs_original(6 * 4096, 4096), None, "page 7 is journaled");
        assert_eq!(u.needs_original(2 * 4096, 4096), Some(3), "page 3 is not");
        u.keep(3, vec![1; 4096]);
        assert_eq!(u.needs_original(2 * 4096, 4096), None, "only the first write counts");
        assert_eq!(u.original(3).map(<[u8]>::len), Some(4096));
        assert!(!u.incomplete);
        assert_eq!(u.needs_original(100, 4096), None);
        assert!(u.incomplete, "a write that is not one page");
    }
}
