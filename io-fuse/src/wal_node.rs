//! `<db>-wal`: SQLite's write-ahead log, and the commit points it reveals.
//!
//! SQLite appends a transaction as frames (a 24-byte header naming the page, then the page),
//! the last of which carries the database size after the commit. The commit point is the
//! write that completes a frame whose header, read back from the file, has a non-zero commit
//! size. Nothing is parsed from the written bytes themselves: the kernel's page cache splits
//! a write that straddles a 4 KiB cache page into two requests, and that can cut a frame's
//! page or its header in two. The transaction's pages are the frames from the first one
//! written since the previous commit up to the commit frame (SQLite may rewrite a frame of the
//! open transaction in place; reading them back at the commit point sees the last one).

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
    /// A commit frame the policy side refused. SQLite retries the rest of a split write; the
    /// retry completes the same frame and must be refused too, until SQLite writes a new
    /// header for that frame (its next transaction starts there).
    refused_frame: Option<u64>,
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
            self.reset();
            return Ok(());
        }
        let Some(frame) = self.frame_size(path)? else { return Ok(()) };
        if offset < WAL_HEADER_SIZE {
            return Ok(());
        }
        let frame_start = WAL_HEADER_SIZE + (offset - WAL_HEADER_SIZE) / frame * frame;
        if self.tx_start.is_none() {
            self.tx_start = Some(frame_start);
        }
        if let Some(refused) = self.refused_frame
            && offset < refused + FRAME_HEADER_SIZE
            && offset + data.len() as u64 > refused
        {
            self.refused_frame = None;
        }
        Ok(())
    }

    /// The frame a write of `len` bytes at `offset` completes, if it ends exactly at a frame's
    /// end.
    pub(crate) fn completed_frame(&self, offset: u64, len: usize) -> Option<u64> {
        let frame = FRAME_HEADER_SIZE + u64::from(self.page_size?.get());
        let end = offset + len as u64;
        (end > WAL_HEADER_SIZE && (end - WAL_HEADER_SIZE).is_multiple_of(frame)).then(|| end - frame)
    }

    /// Whether completing `frame` must be refused again.
    pub(crate) fn is_refused(&self, frame: u64) -> bool {
        self.refused_frame == Some(frame)
    }

    /// After a write that completed `frame` reached `file`: the commit it completed, if its
    /// header carries a commit size.
    pub(crate) fn ready_commit(
        &self,
        file: &File,
        path: &Path,
        frame: u64,
    ) -> Result<Option<ReadyCommit>, CaptureError> {
        let (Some(page_size), Some(tx_start)) = (self.page_size, self.tx_start) else { return Ok(None) };
        // A transaction starts at or before its commit frame; anything else is not a commit
        // this tracker understands, and capturing it would read the wrong range.
        if tx_start > frame {
            return Ok(None);
        }
        let mut header = [0u8; FRAME_HEADER_SIZE as usize];
        file.read_exact_at(&mut header, frame).map_err(|e| CaptureError::io(path, e))?;
        let commit = be32(&header, 4);
        Ok((commit != 0).then_some(ReadyCommit { tx_start, frame, commit, page_size }))
    }

    /// Whether frames of an uncommitted transaction have been written.
    pub(crate) fn in_transaction(&self) -> bool {
        self.tx_start.is_some()
    }

    /// The open transaction committed (or was refused before its first frame, or the WAL was
    /// restarted, truncated or deleted): the next frame starts a new one.
    pub(crate) fn reset(&mut self) {
        self.tx_start = None;
        self.refused_frame = None;
    }

    /// The policy side refused the commit in `frame`. The transaction stays open: SQLite rolls
    /// it back and starts its next one at the same frame.
    pub(crate) fn refuse(&mut self, frame: u64) {
        self.refused_frame = Some(frame);
    }

    fn frame_size(&mut self, path: &Path) -> Result<Option<u64>, CaptureError> {
        if self.page_size.is_none() {
            let file = File::open(path).map_err(|e| CaptureError::io(path, e))?;
            let mut raw = [0u8; 4];
            if file.read_exact_at(&mut raw, 8).is_ok() {
                self.page_size = PageSize::new(u32::from_be_bytes(raw));
            }
        }
        Ok(self.page_size.map(|p| FRAME_HEADER_SIZE + u64::from(p.get())))
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

    /// A WAL file and a tracker, written the way the mount writes: note, then write.
    struct Wal {
        path: std::path::PathBuf,
        file: File,
        track: WalTrack,
    }

    impl Wal {
        fn new(tag: &str, page_size: u32) -> Wal {
            let path = std::env::temp_dir().join(format!("replite-wal-unit-{}-{tag}", std::process::id()));
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            let mut wal = Wal { path, file, track: WalTrack::default() };
            let mut header = vec![0u8; 32];
            header[8..12].copy_from_slice(&page_size.to_be_bytes());
            wal.write(0, &header);
            wal
        }

        /// Writes and returns the commit this write completed.
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<ReadyCommit> {
            self.track.before_write(&self.path, offset, data).unwrap();
            self.file.write_all_at(data, offset).unwrap();
            let frame = self.track.completed_frame(offset, data.len())?;
            self.track.ready_commit(&self.file, &self.path, frame).unwrap()
        }
    }

    impl Drop for Wal {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn commit_is_found_when_the_kernel_splits_the_header_or_the_page() {
        let mut wal = Wal::new("split", 4096);
        assert!(wal.write(32, &frame_header(2, 0)).is_none());
        assert!(wal.write(56, &[0u8; 4096]).is_none(), "no commit frame yet");
        let second = 32 + 4120;
        // The commit frame's page straddles a cache page: two requests.
        assert!(wal.write(second, &frame_header(1, 7)).is_none());
        let page = second + 24;
        let first_part = 8192 - page;
        assert!(wal.write(page, &vec![1u8; first_part as usize]).is_none());
        let ready = wal.write(8192, &vec![1u8; (4096 - first_part) as usize]).expect("commit complete");
        assert_eq!((ready.tx_start, ready.frame, ready.commit), (32, second, 7));
        wal.track.reset();
        // A header cut in two by a cache-page boundary: frame 169 of 4096-byte pages starts
        // 8 bytes before a 4 KiB boundary (32 + 169 * 4120 = 170 * 4096 - 8).
        let header_start = 32 + 169 * 4120;
        assert_eq!(header_start % 4096, 4088);
        let h = frame_header(9, 12);
        assert!(wal.write(header_start, &h[..8]).is_none());
        assert!(wal.write(header_start + 8, &h[8..]).is_none());
        let ready = wal.write(header_start + 24, &[2u8; 4096]).expect("commit with a split header");
        assert_eq!((ready.frame, ready.commit), (header_start, 12));
    }

    #[test]
    fn a_refused_commit_stays_refused_until_its_frame_gets_a_new_header() {
        let mut wal = Wal::new("refused", 512);
        wal.write(32, &frame_header(3, 3));
        let ready = wal.write(56, &[0u8; 512]).expect("commit");
        wal.track.refuse(ready.frame);
        // SQLite retries (part of) the page: still the refused frame.
        assert_eq!(wal.track.completed_frame(300, 268), Some(32));
        assert!(wal.track.is_refused(32));
        // Its next transaction rewrites the frame's header: no longer refused.
        wal.write(32, &frame_header(3, 0));
        assert!(!wal.track.is_refused(32));
        assert!(wal.write(56, &[0u8; 512]).is_none(), "not a commit frame any more");
    }
}
