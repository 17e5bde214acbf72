//! Keeps the kernel's cache of a primary's WAL filled ahead of SQLite's writer.
//!
//! SQLite writes a WAL frame as two writes, a 24-byte header and the page, so with 4 KiB pages
//! every page write straddles two 4 KiB cache pages. A write-through FUSE mount sends a write
//! as one request only while the cache pages it covers are up to date: one the kernel holds no
//! whole copy of ends the request, and it is never marked up to date afterwards, so every later
//! read of the frame (the checkpoint's, a reader's) is one more request. Counted on a 20 MiB
//! transaction in WAL/FULL: three WAL writes and one WAL read per page, beside the checkpoint's
//! database write.
//!
//! After each WAL write the mount stores the backing file's bytes into the kernel's cache
//! ahead of the write (`FUSE_NOTIFY_STORE`), extending the backing file with zeros first where
//! it ends: the cache pages become up to date, a frame then costs two requests, and reads of it
//! are served by the kernel. The WAL file grows in whole chunks, as with SQLite's own
//! `SQLITE_FCNTL_CHUNK_SIZE`: SQLite reads a WAL only as far as its frames are valid, and zeros
//! are not.
//!
//! The store happens inside the writer's request, under the database's lock, and covers only
//! cache pages that request does not touch: SQLite writes a WAL only while holding its write
//! lock, so nothing can change those bytes between the read of the backing file and the store.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use fuser::{INodeNo, Notifier};

/// Bytes ahead of a write the cache should already hold before the next store.
const AHEAD: u64 = 256 << 10;
/// The store and the file grow to a multiple of this.
const CHUNK: u64 = 1 << 20;
/// The kernel's cache page.
const CACHE_PAGE: u64 = 4096;
/// A WAL frame header's size.
const FRAME_HEADER: u64 = 24;

/// The range to store after a WAL write that ended at `end`, when the cache is known to be
/// filled up to `filled_to`; `None` while enough is filled ahead.
pub(crate) fn range_to_fill(filled_to: u64, end: u64) -> Option<Range<u64>> {
    if end + AHEAD <= filled_to {
        return None;
    }
    // The cache page holding `end` may be locked by the request being answered.
    let from = filled_to.max(end.next_multiple_of(CACHE_PAGE));
    let to = (end + AHEAD).next_multiple_of(CHUNK);
    (from < to).then_some(from..to)
}

/// Extends `wal` with zeros to `range.end` if it is shorter, then stores its bytes in `range`
/// into the kernel's cache of inode `ino`.
pub(crate) fn fill(notifier: &Notifier, ino: u64, wal: &File, range: Range<u64>) -> io::Result<()> {
    if wal.metadata()?.len() < range.end {
        wal.set_len(range.end)?;
    }
    let mut bytes = vec![0u8; (range.end - range.start) as usize];
    wal.read_exact_at(&mut bytes, range.start)?;
    notifier.store(INodeNo(ino), range.start, &bytes)
}

/// The part of a frame header at `frame` that lies in cache pages before those of a write
/// starting at `request_start` (the write that completed the frame).
pub(crate) fn header_outside_request(frame: u64, request_start: u64) -> Option<Range<u64>> {
    let first_request_page = request_start / CACHE_PAGE * CACHE_PAGE;
    let end = (frame + FRAME_HEADER).min(first_request_page);
    (frame < end).then_some(frame..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_store_skips_the_cache_page_of_the_write_and_fills_a_chunk() {
        assert_eq!(range_to_fill(0, 32), Some(CACHE_PAGE..CHUNK));
    }

    #[test]
    fn nothing_is_stored_while_enough_is_filled_ahead() {
        assert_eq!(range_to_fill(CHUNK, CHUNK - AHEAD), None);
        assert_eq!(range_to_fill(CHUNK, CHUNK - AHEAD + 1), Some(CHUNK..2 * CHUNK));
    }

    #[test]
    fn a_header_in_the_cache_page_of_the_completing_write_is_left_to_the_kernel() {
        // Frame 1 of a 4 KiB-page WAL: header at 4152, page from 4176, both in cache page 1.
        assert_eq!(header_outside_request(4152, 4176), None);
        // A header ending exactly at a cache page's end (frame 339), and one straddling two.
        let frame = 32 + 339 * 4120;
        assert_eq!((frame + FRAME_HEADER) % CACHE_PAGE, 0);
        assert_eq!(header_outside_request(frame, frame + FRAME_HEADER), Some(frame..frame + FRAME_HEADER));
        assert_eq!(header_outside_request(8180, 8204), Some(8180..8192));
    }

    #[test]
    fn a_write_past_the_filled_part_starts_the_store_after_its_own_cache_page() {
        assert_eq!(range_to_fill(CHUNK, 3 * CHUNK + 10), Some(3 * CHUNK + CACHE_PAGE..4 * CHUNK));
    }
}
