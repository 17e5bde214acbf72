//! `<db>-journal`: SQLite's rollback journal, and the commit points it reveals.
//!
//! A rollback transaction commits when SQLite invalidates its journal: it deletes it (DELETE),
//! truncates it to zero (TRUNCATE) or zeroes its header (PERSIST). At that moment the journal
//! names the pages the transaction overwrote (with their old contents), its header holds the
//! database size before the transaction, and the database file holds the new contents.
//!
//! The journal does not name every changed page: a freelist leaf page that the transaction
//! reuses is fetched without content and never journaled (SQLite need not restore it), yet its
//! bytes change. So the mount also records every byte range written to the database during
//! the transaction, and the captured pages are: journaled pages whose contents differ from
//! their originals, every written page, and every page past the old size.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use replite_core::types::{PageSize, Pgno};

use crate::boundary::{CapturedPage, CapturedTx, Durability, JournalMode};
use crate::database_node::{DbFile, read_page_size};
use crate::error::CaptureError;
use crate::layout::backing_path;
use crate::names::NodeKind;

/// The first eight bytes of a live journal header.
pub(crate) const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
/// Bytes of the header SQLite writes (and zeroes in PERSIST mode); the rest of the sector is
/// padding.
pub(crate) const JOURNAL_HEADER_BYTES: usize = 28;
/// `nRec` value meaning "as many records as the file holds" (synchronous=OFF).
const NREC_TO_END: u32 = 0xffff_ffff;

/// Whether the journal at `path` has a live header: a transaction has written (or may be
/// writing) the database, and rolling back would restore it.
pub(crate) fn is_live(path: &Path) -> Result<bool, CaptureError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CaptureError::io(path, e)),
    };
    let mut magic = [0u8; 8];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(magic == JOURNAL_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(CaptureError::io(path, e)),
    }
}

/// Whether a write of `data` at `offset` is SQLite zeroing the journal header (PERSIST's
/// commit point). The header written at the start of a transaction always carries a non-zero
/// page size, so it never matches.
pub(crate) fn is_header_zeroing(offset: u64, data: &[u8]) -> bool {
    offset == 0 && data.len() >= JOURNAL_HEADER_BYTES && data[..JOURNAL_HEADER_BYTES].iter().all(|&b| b == 0)
}

/// Whether a write of `data` at `offset` is SQLite writing a new journal header: the start
/// of a transaction (the header's page size field is never zero).
pub(crate) fn is_fresh_header(offset: u64, data: &[u8]) -> bool {
    offset == 0 && data.len() >= JOURNAL_HEADER_BYTES && data[24..28] != [0, 0, 0, 0]
}

/// What a journal says about its transaction.
struct Journal {
    /// Database size in pages before the transaction.
    orig_pages: u32,
    /// Page size the journal's records use.
    page_size: u32,
    /// Each journaled page and the byte range of its original contents in the journal.
    originals: BTreeMap<u32, std::ops::Range<usize>>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses every segment of a live journal. Returns `None` if the first header is not live.
fn parse(bytes: &[u8]) -> Option<Journal> {
    if bytes.len() < JOURNAL_HEADER_BYTES || bytes[..8] != JOURNAL_MAGIC {
        return None;
    }
    let orig_pages = be32(bytes, 16);
    let sector = be32(bytes, 20) as usize;
    let page_size = be32(bytes, 24);
    // SQLite's limits: sectors 32..=65536 bytes, pages 512..=65536; anything else is a journal
    // we cannot read, and we say so by capturing conservatively (the caller includes every page).
    if !(32..=65536).contains(&sector) || PageSize::new(page_size).is_none() {
        return Some(Journal { orig_pages, page_size: 0, originals: BTreeMap::new() });
    }
    let record = 4 + page_size as usize + 4;
    let mut originals = BTreeMap::new();
    let mut header = 0usize;
    loop {
        let nrec = be32(bytes, header + 8);
        let start = header + sector;
        let available = bytes.len().saturating_sub(start) / record;
        // nRec 0 in a header SQLite has not yet synced also means "count from the file size".
        let count = if nrec == NREC_TO_END || nrec == 0 { available } else { (nrec as usize).min(available) };
        for i in 0..count {
            let at = start + i * record;
            let pgno = be32(bytes, at);
            if pgno != 0 {
                originals.entry(pgno).or_insert(at + 4..at + 4 + page_size as usize);
            }
        }
        let end = start + count * record;
        let next = end.div_ceil(sector) * sector;
        if next <= header || next + JOURNAL_HEADER_BYTES > bytes.len() || bytes[next..next + 8] != JOURNAL_MAGIC {
            break;
        }
        header = next;
    }
    Some(Journal { orig_pages, page_size, originals })
}

/// Captures the transaction a live journal commits. `None` when nothing changed: the journal
/// was not live, or the database already holds every original page again (a rollback).
pub(crate) fn capture(
    data_dir: &Path,
    db: &str,
    mode: JournalMode,
    durability: Durability,
    written: &[(u64, u64)],
) -> Result<Option<CapturedTx>, CaptureError> {
    let journal_path = backing_path(data_dir, NodeKind::Journal, db).expect("journals have backing files");
    let bytes = match std::fs::read(&journal_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CaptureError::io(&journal_path, e)),
    };
    let Some(journal) = parse(&bytes) else { return Ok(None) };
    let file = DbFile::open(data_dir, db)?;
    let Some(page_size) = read_page_size(&file, db)? else { return Ok(None) };
    let commit = file.commit_pages(page_size)?;
    let lock = page_size.lock_pgno();
    let same_page_size = journal.page_size == page_size.get();

    let mut pages = Vec::new();
    let mut buf = vec![0u8; page_size.bytes()];
    let mut take = |pgno: u32, original: Option<&[u8]>, pages: &mut Vec<CapturedPage>| -> Result<(), CaptureError> {
        if pgno == 0 || pgno > commit || Pgno(pgno) == lock {
            return Ok(());
        }
        file.read_page(Pgno(pgno), page_size, &mut buf)?;
        if original != Some(&buf[..]) {
            pages.push(CapturedPage { pgno: Pgno(pgno), data: buf.clone() });
        }
        Ok(())
    };
    if same_page_size {
        for (&pgno, range) in &journal.originals {
            if pgno <= journal.orig_pages {
                take(pgno, Some(&bytes[range.clone()]), &mut pages)?;
            }
        }
        let journaled = |pgno: u32| pgno <= journal.orig_pages && journal.originals.contains_key(&pgno);
        let mut extra = std::collections::BTreeSet::new();
        for &(offset, len) in written {
            if len == 0 {
                continue;
            }
            let first = offset / u64::from(page_size.get()) + 1;
            let last = (offset + len - 1) / u64::from(page_size.get()) + 1;
            for pgno in first..=last.min(u64::from(commit)) {
                let pgno = u32::try_from(pgno).expect("bounded by commit, a u32");
                if !journaled(pgno) {
                    extra.insert(pgno);
                }
            }
        }
        extra.extend(journal.orig_pages.saturating_add(1)..=commit);
        for pgno in extra {
            take(pgno, None, &mut pages)?;
        }
    } else {
        // A VACUUM that changed the page size rewrote every page.
        for pgno in 1..=commit {
            take(pgno, None, &mut pages)?;
        }
    }
    pages.sort_by_key(|p| p.pgno);
    pages.dedup_by_key(|p| p.pgno);
    if pages.is_empty() && commit == journal.orig_pages && same_page_size {
        return Ok(None);
    }
    Ok(Some(CapturedTx { db: db.to_owned(), page_size, commit, pages, mode, durability, wal: None }))
}

/// A hot journal as SQLite would play it back: the transaction that wrote it is gone (no
/// RESERVED lock) without committing, and the database file may hold its pages.
#[derive(Debug)]
pub(crate) struct HotJournal {
    /// The page size of the journal's records (the database's before the transaction).
    pub(crate) page_size: PageSize,
    /// The database size in pages before the transaction: rollback truncates to it.
    pub(crate) orig_pages: u32,
    /// Byte offset in the journal of each page's original contents (its first valid record),
    /// for pages up to `orig_pages`.
    pub(crate) originals: BTreeMap<u32, u64>,
}

impl HotJournal {
    /// Reads `pgno`'s original into `buf` (one page), or returns `false` if the journal has
    /// none (the database file's page is the committed one).
    pub(crate) fn read_original(&self, journal: &File, pgno: u32, buf: &mut [u8]) -> std::io::Result<bool> {
        match self.originals.get(&pgno) {
            Some(&offset) => journal.read_exact_at(buf, offset).map(|()| true),
            None => Ok(false),
        }
    }
}

/// Largest sector size SQLite writes journal headers for (`MAX_SECTOR_SIZE`).
const MAX_SECTOR_SIZE: u32 = 0x10000;

/// Reads a journal the way SQLite rolls back a hot one (`pager_playback`), without writing
/// anything: one record at a time, so memory is a page plus an offset per journaled page.
/// `None` when there is nothing to roll back (no live header, or a first header SQLite would
/// stop at).
///
/// SQLite's rules, which differ from [`capture`]'s reading of a journal whose writer is alive:
/// a segment whose `nRec` is 0 has no records (its header was never synced, so SQLite had not
/// written the database for them); `0xffffffff` means records to the end of the file
/// (`synchronous=OFF`). Playback ends at a record whose checksum fails (a torn write), whose
/// page number is 0 or the lock page, or at a header that is not live. Records for pages past
/// the first header's database size are skipped, and the first record of a page wins.
pub(crate) fn read_hot(journal: &File) -> std::io::Result<Option<HotJournal>> {
    let len = journal.metadata()?.len();
    let mut header = [0u8; JOURNAL_HEADER_BYTES];
    match journal.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if header[..8] != JOURNAL_MAGIC {
        return Ok(None);
    }
    let orig_pages = be32(&header, 16);
    let sector = be32(&header, 20);
    let Some(page_size) = PageSize::new(be32(&header, 24)) else { return Ok(None) };
    if !(32..=MAX_SECTOR_SIZE).contains(&sector) || !sector.is_power_of_two() {
        return Ok(None);
    }
    let (sector, page) = (u64::from(sector), page_size.bytes());
    let record_len = 4 + page as u64 + 4;
    let lock = page_size.lock_pgno();
    let mut originals = BTreeMap::new();
    let mut record = vec![0u8; 4 + page + 4];
    let mut header_at = 0u64;
    'segments: loop {
        let nrec = be32(&header, 8);
        let nonce = be32(&header, 12);
        let start = header_at + sector;
        let available = len.saturating_sub(start) / record_len;
        let count = match nrec {
            NREC_TO_END => available,
            n => u64::from(n).min(available),
        };
        for i in 0..count {
            let at = start + i * record_len;
            journal.read_exact_at(&mut record, at)?;
            let pgno = be32(&record, 0);
            if pgno == 0 || Pgno(pgno) == lock {
                break 'segments;
            }
            let data = &record[4..4 + page];
            if record_checksum(nonce, data) != be32(&record, 4 + page) {
                break 'segments;
            }
            if pgno <= orig_pages {
                originals.entry(pgno).or_insert(at + 4);
            }
        }
        // The next segment's header starts at the next sector boundary.
        let next = (start + count * record_len).div_ceil(sector) * sector;
        if next <= header_at || next + JOURNAL_HEADER_BYTES as u64 > len {
            break;
        }
        journal.read_exact_at(&mut header, next)?;
        if header[..8] != JOURNAL_MAGIC {
            break;
        }
        header_at = next;
    }
    Ok(Some(HotJournal { page_size, orig_pages, originals }))
}

/// SQLite's journal record checksum (`pager_cksum`): the header's nonce plus every 200th byte
/// of the page, counting down from 200 bytes before its end.
fn record_checksum(nonce: u32, page: &[u8]) -> u32 {
    let mut sum = nonce;
    let mut i = page.len().saturating_sub(200);
    while i > 0 {
        sum = sum.wrapping_add(u32::from(page[i]));
        i = i.saturating_sub(200);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(nrec: u32, orig: u32, sector: u32, page: u32) -> Vec<u8> {
        let mut h = vec![0u8; sector as usize];
        h[..8].copy_from_slice(&JOURNAL_MAGIC);
        h[8..12].copy_from_slice(&nrec.to_be_bytes());
        h[16..20].copy_from_slice(&orig.to_be_bytes());
        h[20..24].copy_from_slice(&sector.to_be_bytes());
        h[24..28].copy_from_slice(&page.to_be_bytes());
        h
    }

    fn record(pgno: u32, fill: u8, page: u32) -> Vec<u8> {
        let mut r = pgno.to_be_bytes().to_vec();
        r.extend(std::iter::repeat_n(fill, page as usize));
        r.extend([0u8; 4]);
        r
    }

    #[test]
    fn parse_reads_every_segment_and_keeps_the_first_original_of_a_page() {
        let mut j = header(2, 10, 512, 512);
        j.extend(record(3, 0xaa, 512));
        j.extend(record(7, 0xbb, 512));
        let pad = j.len().div_ceil(512) * 512;
        j.resize(pad, 0);
        j.extend(header(2, 10, 512, 512));
        j.extend(record(9, 0xcc, 512));
        j.extend(record(3, 0xdd, 512));
        let parsed = parse(&j).expect("live journal");
        assert_eq!(parsed.orig_pages, 10);
        assert_eq!(parsed.originals.keys().copied().collect::<Vec<_>>(), vec![3, 7, 9]);
        assert!(j[parsed.originals[&3].clone()].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn parse_stops_at_stale_data_without_a_live_header() {
        let mut j = header(1, 4, 512, 512);
        j.extend(record(2, 1, 512));
        let pad = j.len().div_ceil(512) * 512;
        j.resize(pad, 0);
        // A previous transaction's segment whose magic SQLite zeroed.
        let mut stale = header(1, 4, 512, 512);
        stale[..8].fill(0);
        j.extend(stale);
        j.extend(record(4, 2, 512));
        let parsed = parse(&j).expect("live journal");
        assert_eq!(parsed.originals.keys().copied().collect::<Vec<_>>(), vec![2]);
    }

    fn hot_record(pgno: u32, fill: u8, page: u32, nonce: u32) -> Vec<u8> {
        let mut r = pgno.to_be_bytes().to_vec();
        let data: Vec<u8> = (0..page).map(|i| fill.wrapping_add(i as u8)).collect();
        r.extend(&data);
        r.extend(record_checksum(nonce, &data).to_be_bytes());
        r
    }

    fn hot_header(nrec: u32, nonce: u32, orig: u32, sector: u32, page: u32) -> Vec<u8> {
        let mut h = header(nrec, orig, sector, page);
        h[12..16].copy_from_slice(&nonce.to_be_bytes());
        h
    }

    fn journal_file(tag: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("replite-journal-unit-{}-{tag}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn hot_journal_playback_stops_at_a_torn_record_and_skips_unsynced_segments() {
        let (page, sector) = (512u32, 512u32);
        let mut j = hot_header(3, 7, 10, sector, page);
        j.extend(hot_record(3, 1, page, 7));
        j.extend(hot_record(12, 2, page, 7)); // past the original size: skipped
        j.extend(hot_record(4, 3, page, 7));
        let pad = j.len().div_ceil(sector as usize) * sector as usize;
        j.resize(pad, 0);
        // A segment SQLite never synced (nRec 0): its records are not played back.
        j.extend(hot_header(0, 9, 10, sector, page));
        j.extend(hot_record(5, 4, page, 9));
        let (path, file) = journal_file("unsynced", &j);
        let hot = read_hot(&file).unwrap().expect("hot");
        assert_eq!((hot.page_size.get(), hot.orig_pages), (512, 10));
        assert_eq!(hot.originals.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        let mut buf = vec![0u8; 512];
        assert!(hot.read_original(&file, 4, &mut buf).unwrap());
        assert_eq!(buf[0], 3);
        assert!(!hot.read_original(&file, 5, &mut buf).unwrap());
        std::fs::remove_file(path).unwrap();

        // synchronous=OFF: records to the end of the file, up to a torn one.
        let mut j = hot_header(NREC_TO_END, 1, 10, sector, page);
        j.extend(hot_record(2, 5, page, 1));
        let mut torn = hot_record(6, 6, page, 1);
        // The checksum samples every 200th byte from 200 before the end (page byte 312, after
        // the 4-byte page number): SQLite's test for a torn record, no stronger here.
        torn[4 + 312] ^= 0xff;
        j.extend(torn);
        j.extend(hot_record(7, 7, page, 1));
        let (path, file) = journal_file("torn", &j);
        let hot = read_hot(&file).unwrap().expect("hot");
        assert_eq!(hot.originals.keys().copied().collect::<Vec<_>>(), vec![2]);
        std::fs::remove_file(path).unwrap();

        // No live header: nothing to roll back.
        let (path, file) = journal_file("dead", &[0u8; 1024]);
        assert!(read_hot(&file).unwrap().is_none());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn zeroed_header_is_the_persist_commit_point_but_a_fresh_header_is_not() {
        assert!(is_header_zeroing(0, &[0u8; 28]));
        assert!(!is_header_zeroing(512, &[0u8; 28]));
        let fresh = header(0, 1, 512, 4096);
        let mut fresh_unsynced = fresh.clone();
        fresh_unsynced[..12].fill(0);
        assert!(!is_header_zeroing(0, &fresh_unsynced));
        assert!(is_fresh_header(0, &fresh_unsynced));
        assert!(!is_fresh_header(0, &[0u8; 28]));
        assert!(!is_fresh_header(0, &fresh_unsynced[..12]));
        assert!(parse(&fresh_unsynced).is_none());
    }
}
