//! `<db>-wal`: SQLite's write-ahead log, and the commit points it reveals.
//!
//! SQLite appends a transaction as frames (a 24-byte header naming the page, then the page),
//! the last of which carries the database size after the commit. It writes each frame's header
//! and page as two writes, so the commit point is the write that completes the page of a
//! frame whose header had a non-zero commit size. The transaction's pages are the frames from
//! the first one written since the previous commit up to that frame (SQLite may rewrite a frame
//! of the open transaction in place; reading them back at the commit point sees the last one).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use replite_core::types::{PageSize, Pgno};

use crate::boundary::{CapturedPage, CapturedTx, Durability, JournalMode, WalSegment};
use crate::error::CaptureError;

/// Size of the WAL file header.
pub(crate) const WAL_HEADER_SIZE: u64 = 32;
/// Size of a frame header.
pub(crate) const FRAME_HEADER_SIZE: u64 = 24;

/// What the mount has seen of the WAL's open transaction.
#[derive(Debug, Default)]
pub(crate) struct WalTrack {
    page_size: Option<PageSize>,
    /// Offset of the first frame written since the last commit.
    tx_start: Option<u64>,
    /// Offset and commit size of a commit frame whose page has not been fully written yet.
    pending_commit: Option<(u64, u32)>,
}

/// A commit frame that is now complete on disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadyCommit {
    pub(crate) tx_start: u64,
    pub(crate) frame: u64,
    pub(crate) commit: u32,
    pub(crate) page_size: PageSize,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl WalTrack {
    /// Notes a write of `data` at `offset` before it reaches the WAL at `path`.
    pub(crate) fn before_write(&mut self, path: &Path, offset: u64, data: &[u8]) -> Result<(), CaptureError> {
        if offset == 0 && data.len() as u64 >= WAL_HEADER_SIZE {
            // A new WAL header: SQLite restarted the log; frames start over.
            self.page_size = PageSize::new(be32(data, 8));
            self.tx_start = None;
            self.pending_commit = None;
            return Ok(());
        }
        let Some(page_size) = self.page_size(path)? else { return Ok(()) };
        let frame = FRAME_HEADER_SIZE + u64::from(page_size.get());
        if offset >= WAL_HEADER_SIZE
            && (offset - WAL_HEADER_SIZE).is_multiple_of(frame)
            && data.len() as u64 >= FRAME_HEADER_SIZE
        {
            if self.tx_start.is_none() {
                self.tx_start = Some(offset);
            }
            // Frames are written in order: a new frame header ends any earlier pending commit
            // (one whose page write was refused and which SQLite then abandoned).
            let commit = be32(data, 4);
            self.pending_commit = (commit != 0).then_some((offset, commit));
        }
        Ok(())
    }

    /// Whether frames of an uncommitted transaction have been written.
    pub(crate) fn in_transaction(&self) -> bool {
        self.tx_start.is_some()
    }

    /// After a write of `len` bytes at `offset` reached the WAL: the commit it completed, if any.
    pub(crate) fn ready_commit(&self, offset: u64, len: usize) -> Option<ReadyCommit> {
        let (frame, commit) = self.pending_commit?;
        let page_size = self.page_size?;
        let end = frame + FRAME_HEADER_SIZE + u64::from(page_size.get());
        // A transaction starts at or before its commit frame; anything else is not a commit
        // this tracker understands, and capturing it would read the wrong range.
        let tx_start = self.tx_start.filter(|&start| start <= frame)?;
        (offset + len as u64 >= end && offset < end).then_some(ReadyCommit { tx_start, frame, commit, page_size })
    }

    /// The open transaction committed (or the WAL was truncated or deleted): the next frame
    /// starts a new one. A refused commit does not reset: the kernel may split SQLite's write
    /// of the commit frame, SQLite then retries the rest, and the retry must be refused too;
    /// after SQLite rolls back, its next transaction starts at the same frame.
    pub(crate) fn reset(&mut self) {
        self.tx_start = None;
        self.pending_commit = None;
    }

    fn page_size(&mut self, path: &Path) -> Result<Option<PageSize>, CaptureError> {
        if self.page_size.is_none() {
            let file = File::open(path).map_err(|e| CaptureError::io(path, e))?;
            let mut raw = [0u8; 4];
            if file.read_exact_at(&mut raw, 8).is_ok() {
                self.page_size = PageSize::new(u32::from_be_bytes(raw));
            }
        }
        Ok(self.page_size)
    }
}

/// Reads the frames of a committed transaction back from the WAL.
pub(crate) fn capture(path: &Path, db: &str, ready: ReadyCommit) -> Result<CapturedTx, CaptureError> {
    let page_size = ready.page_size;
    let frame = FRAME_HEADER_SIZE + u64::from(page_size.get());
    let end = ready.frame + frame;
    let file = File::open(path).map_err(|e| CaptureError::io(path, e))?;
    let len = usize::try_from(end - ready.tx_start).map_err(|_| CaptureError::InvalidWalFrame {
        db: db.to_owned(),
        offset: ready.tx_start,
        reason: "transaction larger than memory",
    })?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, ready.tx_start).map_err(|e| CaptureError::io(path, e))?;
    let mut salts = [0u8; 8];
    file.read_exact_at(&mut salts, 16).map_err(|e| CaptureError::io(path, e))?;
    let wal = WalSegment {
        offset: ready.tx_start,
        size: end - ready.tx_start,
        salt1: be32(&salts, 0),
        salt2: be32(&salts, 4),
    };
    let lock = page_size.lock_pgno();
    let mut latest: BTreeMap<u32, usize> = BTreeMap::new();
    let frame = frame as usize;
    for at in (0..bytes.len()).step_by(frame) {
        let pgno = be32(&bytes, at);
        if pgno == 0 {
            return Err(CaptureError::InvalidWalFrame {
                db: db.to_owned(),
                offset: ready.tx_start + at as u64,
                reason: "page number 0",
            });
        }
        latest.insert(pgno, at + FRAME_HEADER_SIZE as usize);
    }
    let pages = latest
        .into_iter()
        .filter(|&(pgno, _)| pgno <= ready.commit && Pgno(pgno) != lock)
        .map(|(pgno, at)| CapturedPage { pgno: Pgno(pgno), data: bytes[at..at + page_size.bytes()].to_vec() })
        .collect();
    Ok(CapturedTx {
        db: db.to_owned(),
        page_size,
        commit: ready.commit,
        pages,
        mode: JournalMode::Wal,
        durability: Durability::Deferred,
        wal: Some(wal),
    })
}

/// Makes a refused commit frame unrecoverable: SQLite will overwrite the frames, but a crash
/// before that must not let WAL recovery find a commit the policy side refused.
pub(crate) fn erase_frame_header(path: &Path, frame: u64) -> Result<(), CaptureError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| CaptureError::io(path, e))?;
    file.write_all_at(&[0u8; FRAME_HEADER_SIZE as usize], frame).map_err(|e| CaptureError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_header(pgno: u32, commit: u32) -> Vec<u8> {
        let mut h = vec![0u8; FRAME_HEADER_SIZE as usize];
        h[0..4].copy_from_slice(&pgno.to_be_bytes());
        h[4..8].copy_from_slice(&commit.to_be_bytes());
        h
    }

    #[test]
    fn commit_is_ready_when_the_commit_frame_page_is_complete_even_if_split() {
        let path = Path::new("/nonexistent/wal");
        let mut wal = WalTrack::default();
        let mut header = vec![0u8; 32];
        header[8..12].copy_from_slice(&4096u32.to_be_bytes());
        wal.before_write(path, 0, &header).unwrap();
        wal.before_write(path, 32, &frame_header(2, 0)).unwrap();
        wal.before_write(path, 56, &[0u8; 4096]).unwrap();
        assert!(wal.ready_commit(56, 4096).is_none(), "no commit frame yet");
        let second = 32 + 4120;
        wal.before_write(path, second, &frame_header(1, 7)).unwrap();
        // The kernel split the page write at a cache-page boundary.
        let page = second + 24;
        let first_part = 8192 - page;
        assert!(wal.ready_commit(page, first_part as usize).is_none());
        let ready = wal.ready_commit(8192, (4096 - first_part) as usize).expect("commit complete");
        assert_eq!((ready.tx_start, ready.frame, ready.commit), (32, second, 7));
        // A refused commit stays pending for SQLite's retry; a reset (commit) clears it.
        assert!(wal.ready_commit(8192, (4096 - first_part) as usize).is_some());
        wal.reset();
        assert!(wal.ready_commit(8192, (4096 - first_part) as usize).is_none());
    }

    #[test]
    fn a_new_frame_header_ends_an_abandoned_commit() {
        let path = Path::new("/nonexistent/wal");
        let mut wal = WalTrack::default();
        let mut header = vec![0u8; 32];
        header[8..12].copy_from_slice(&512u32.to_be_bytes());
        wal.before_write(path, 0, &header).unwrap();
        wal.before_write(path, 32, &frame_header(3, 3)).unwrap();
        // SQLite abandoned that commit and writes a non-commit frame in its place.
        wal.before_write(path, 32, &frame_header(3, 0)).unwrap();
        assert!(wal.ready_commit(56, 512).is_none());
    }
}
