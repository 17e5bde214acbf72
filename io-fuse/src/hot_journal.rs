//! Rolling back a hot journal before the mount starts, as SQLite itself would on the next
//! open. A daemon killed while an application was inside a rollback-journal transaction leaves
//! the database file with pages of a transaction that never committed, and the journal holding
//! their originals. Recovery must checksum the committed database, and a replica's readers
//! (read-only) could never roll it back themselves (`SQLITE_READONLY_ROLLBACK`), so the daemon
//! restores the originals first: every record whose checksum is valid, segment by segment, up
//! to the first bad one, then the original size; then the journal is deleted.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::info;

use crate::journal_node::{JOURNAL_HEADER_BYTES, JOURNAL_MAGIC};
use crate::layout::backing_path;
use crate::names::NodeKind;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's journal record checksum: the nonce plus every 200th byte of the page, from the
/// end (pager.c, `pager_cksum`).
fn record_checksum(nonce: u32, page: &[u8]) -> u32 {
    let mut sum = nonce;
    let mut i = page.len() as isize - 200;
    while i > 0 {
        sum = sum.wrapping_add(u32::from(page[i as usize]));
        i -= 200;
    }
    sum
}

/// What a hot journal holds.
struct Originals<'a> {
    /// Database size in pages before the transaction.
    orig_pages: u32,
    page_size: u32,
    /// Each journaled page's number and original contents, in playback order.
    pages: Vec<(u32, &'a [u8])>,
}

/// The originals a hot journal holds. `None` when the journal is not hot (missing, empty, or
/// zeroed header).
fn originals(journal: &[u8]) -> Option<Originals<'_>> {
    if journal.len() < JOURNAL_HEADER_BYTES || journal[..8] != JOURNAL_MAGIC {
        return None;
    }
    let orig_pages = be32(journal, 16);
    let sector = be32(journal, 20) as usize;
    let page_size = be32(journal, 24);
    if !(32..=65536).contains(&sector) || !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    let record = 4 + page_size as usize + 4;
    let mut pages = Vec::new();
    let mut header = 0usize;
    loop {
        let nrec = be32(journal, header + 8);
        let nonce = be32(journal, header + 12);
        let start = header + sector;
        let available = journal.len().saturating_sub(start) / record;
        let count = if nrec == u32::MAX || nrec == 0 { available } else { (nrec as usize).min(available) };
        for i in 0..count {
            let at = start + i * record;
            let pgno = be32(journal, at);
            let page = &journal[at + 4..at + 4 + page_size as usize];
            if pgno == 0 || be32(journal, at + 4 + page_size as usize) != record_checksum(nonce, page) {
                // A torn record: SQLite stops playback here; nothing after it was synced.
                return Some(Originals { orig_pages, page_size, pages });
            }
            pages.push((pgno, page));
        }
        let next = (start + count * record).div_ceil(sector) * sector;
        if next <= header || next + JOURNAL_HEADER_BYTES > journal.len() || journal[next..next + 8] != JOURNAL_MAGIC {
            return Some(Originals { orig_pages, page_size, pages });
        }
        header = next;
    }
}

/// Rolls back `db`'s hot journal in `data_dir`, if it has one; returns whether it did. Call
/// only while nothing else has the database open (before mounting).
pub fn roll_back_hot_journal(data_dir: &Path, db: &str) -> io::Result<bool> {
    let (Some(journal_path), Some(db_path)) =
        (backing_path(data_dir, NodeKind::Journal, db), backing_path(data_dir, NodeKind::Database, db))
    else {
        return Ok(false);
    };
    let journal = match std::fs::read(&journal_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(Originals { orig_pages, page_size, pages }) = originals(&journal) else {
        // Not hot (PERSIST's zeroed header, TRUNCATE's empty file): nothing to undo.
        return Ok(false);
    };
    let file = OpenOptions::new().read(true).write(true).open(&db_path)?;
    // Earlier records win: a page journaled twice keeps its first (oldest) original.
    for (pgno, page) in pages.iter().rev() {
        file.write_all_at(page, u64::from(pgno - 1) * u64::from(page_size))?;
    }
    file.set_len(u64::from(orig_pages) * u64::from(page_size))?;
    file.sync_all()?;
    std::fs::remove_file(&journal_path)?;
    if let Some(dir) = journal_path.parent() {
        File::open(dir)?.sync_all()?;
    }
    info!(db, pages = pages.len(), orig_pages, "rolled back a hot journal left by a crash");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(nrec: u32, nonce: u32, orig: u32, sector: u32, page: u32) -> Vec<u8> {
        let mut h = JOURNAL_MAGIC.to_vec();
        for v in [nrec, nonce, orig, sector, page] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        h.resize(sector as usize, 0);
        h
    }

    fn record(pgno: u32, fill: u8, nonce: u32, page: u32) -> Vec<u8> {
        let data = vec![fill; page as usize];
        let mut r = pgno.to_be_bytes().to_vec();
        r.extend_from_slice(&data);
        r.extend_from_slice(&record_checksum(nonce, &data).to_be_bytes());
        r
    }

    #[test]
    fn a_hot_journal_restores_the_originals_and_the_size_and_goes_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_dir = dir.path().join("dbs/app.db");
        std::fs::create_dir_all(&db_dir).expect("dir");
        // The crashed transaction rewrote page 2 and grew the file to 3 pages.
        let mut db = vec![1u8; 512];
        db.extend(vec![9u8; 512]);
        db.extend(vec![9u8; 512]);
        std::fs::write(db_dir.join("database"), &db).expect("db");
        let mut journal = header(1, 77, 2, 512, 512);
        journal.extend(record(2, 2, 77, 512));
        // A torn second record (bad checksum) is not played back.
        let mut torn = record(1, 5, 77, 512);
        let last = torn.len() - 1;
        torn[last] ^= 1;
        journal.extend(torn);
        std::fs::write(db_dir.join("journal"), &journal).expect("journal");

        assert!(roll_back_hot_journal(dir.path(), "app.db").expect("rolls back"));
        let mut want = vec![1u8; 512];
        want.extend(vec![2u8; 512]);
        assert_eq!(std::fs::read(db_dir.join("database")).expect("db"), want);
        assert!(!db_dir.join("journal").exists());
        assert!(!roll_back_hot_journal(dir.path(), "app.db").expect("nothing left"), "only once");
    }

    #[test]
    fn a_zeroed_or_empty_journal_is_not_hot() {
        assert!(originals(&[0u8; 512]).is_none());
        assert!(originals(&[]).is_none());
    }
}
