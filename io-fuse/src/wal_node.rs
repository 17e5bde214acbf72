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

use fuser::Errno;

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
    /// A commit frame the policy side refused, and the error it got. SQLite retries the rest
    /// of a split write; the retry completes the same frame and must be refused too, with the
    /// same error (SQLite reports an ENOSPC as SQLITE_FULL only if the retry fails with it),
    /// until SQLite writes a new header for that frame (its next transaction starts there).
    refused_frame: Option<(u64, Errno)>,
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
        if let Some((refused, _)) = self.refused_frame
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

    /// The error completing `frame` must fail with again, if it was refused.
    pub(crate) fn refused(&self, frame: u64) -> Option<Errno> {
        self.refused_frame.filter(|(f, _)| *f == frame).map(|(_, errno)| errno)
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
    pub(crate) fn refuse(&mut self, frame: u64, errno: Errno) {
        self.refused_frame = Some((frame, errno));
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

/// Reads the frames of a committed transaction back from `file`, the WAL at `path` (open
/// already: the writer's own descriptor, which saves an open per commit).
pub(crate) fn capture(file: &File, path: &Path, db: &str, ready: ReadyCommit) -> Result<CapturedTx, CaptureError> {
    let page_size = ready.page_size;
    let frame = FRAME_HEADER_SIZE + u64::from(page_size.get());
    let end = ready.frame + frame;
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

/// WAL header magic: the low bit says whether checksums read the file's 32-bit words as
/// big-endian (1) or little-endian (0).
const WAL_MAGIC: u32 = 0x377f_0682;

/// What a reader of a WAL sees as committed, found the way SQLite's WAL recovery finds it
/// (`walIndexRecover`): frames after a valid header, each with the header's salts and a valid
/// running checksum, up to the last one that ends a transaction.
#[derive(Debug)]
pub(crate) struct CommittedWal {
    pub(crate) page_size: PageSize,
    /// Database size in pages after the last committed transaction.
    pub(crate) commit: u32,
    /// Byte offset in the WAL of each page's last committed copy (its data, past the frame
    /// header).
    pub(crate) pages: BTreeMap<u32, u64>,
}

/// SQLite's WAL checksum (`walChecksumBytes`) over `data`, continuing from `sum`.
pub(crate) fn wal_checksum(big_endian: bool, data: &[u8], sum: (u32, u32)) -> (u32, u32) {
    let (mut s1, mut s2) = sum;
    for pair in data.chunks_exact(8) {
        let word = |at: usize| {
            let b = [pair[at], pair[at + 1], pair[at + 2], pair[at + 3]];
            if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
        };
        s1 = s1.wrapping_add(word(0)).wrapping_add(s2);
        s2 = s2.wrapping_add(word(4)).wrapping_add(s1);
    }
    (s1, s2)
}

/// A walk over the valid frames of a WAL, the way SQLite's WAL recovery (`walIndexRecover`)
/// walks them: after a valid header, each frame with the header's salts and a running
/// checksum that follows, until the first that does not (a torn write, a header the mount
/// erased, a frame of an older generation of the log) or the end.
pub(crate) struct WalFrames {
    pub(crate) page_size: PageSize,
    big_endian: bool,
    salts: [u8; 8],
    sum: (u32, u32),
    /// Offset of the next frame.
    at: u64,
    /// Where reading stops: the end of the file, or of frame `max_frame`.
    end: u64,
}

/// One valid frame, as [`WalFrames::next_frame`] found it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalFrame {
    pub(crate) pgno: u32,
    /// The database size in pages after the transaction this frame commits; 0 when it does
    /// not end a transaction.
    pub(crate) commit: u32,
    /// Byte offset of the frame's page data in the WAL (past the frame header).
    pub(crate) data_offset: u64,
    /// The frame's number, counting from 1 (what `mxFrame` counts).
    pub(crate) number: u32,
}

impl WalFrames {
    /// Reads the WAL's header; `None` when it has no valid one (empty, short, wrong magic,
    /// page size or checksum): SQLite then treats the log as empty. `max_frame`, when given,
    /// is the last frame to read (the WAL index's `mxFrame`).
    pub(crate) fn open(wal: &File, max_frame: Option<u32>) -> std::io::Result<Option<WalFrames>> {
        let len = wal.metadata()?.len();
        let mut header = [0u8; WAL_HEADER_SIZE as usize];
        match wal.read_exact_at(&mut header, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let magic = be32(&header, 0);
        if magic & !1 != WAL_MAGIC {
            return Ok(None);
        }
        let big_endian = magic & 1 == 1;
        let Some(page_size) = PageSize::new(be32(&header, 8)) else { return Ok(None) };
        let mut salts = [0u8; 8];
        salts.copy_from_slice(&header[16..24]);
        let sum = wal_checksum(big_endian, &header[..24], (0, 0));
        if sum != (be32(&header, 24), be32(&header, 28)) {
            return Ok(None);
        }
        let frame_len = FRAME_HEADER_SIZE + u64::from(page_size.get());
        let end = match max_frame {
            Some(max_frame) => len.min(WAL_HEADER_SIZE + u64::from(max_frame) * frame_len),
            None => len,
        };
        Ok(Some(WalFrames { page_size, big_endian, salts, sum, at: WAL_HEADER_SIZE, end }))
    }

    /// Bytes of one frame: its header and a page.
    pub(crate) fn frame_len(&self) -> usize {
        FRAME_HEADER_SIZE as usize + self.page_size.bytes()
    }

    /// Reads the next frame into `frame` (of [`WalFrames::frame_len`] bytes); `None` once the
    /// valid frames end. Its page is `frame[FRAME_HEADER_SIZE..]`.
    pub(crate) fn next_frame(&mut self, wal: &File, frame: &mut [u8]) -> std::io::Result<Option<WalFrame>> {
        assert_eq!(frame.len(), self.frame_len(), "a buffer of one frame");
        let frame_len = frame.len() as u64;
        if self.at + frame_len > self.end {
            return Ok(None);
        }
        wal.read_exact_at(frame, self.at)?;
        let pgno = be32(frame, 0);
        if pgno == 0 || frame[8..16] != self.salts {
            self.end = self.at;
            return Ok(None);
        }
        let big_endian = self.big_endian;
        let next = wal_checksum(
            big_endian,
            &frame[FRAME_HEADER_SIZE as usize..],
            wal_checksum(big_endian, &frame[..8], self.sum),
        );
        if next != (be32(frame, 16), be32(frame, 20)) {
            self.end = self.at;
            return Ok(None);
        }
        self.sum = next;
        let number = u32::try_from((self.at - WAL_HEADER_SIZE) / frame_len + 1)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "WAL has more than 2^32 frames"))?;
        let found = WalFrame { pgno, commit: be32(frame, 4), data_offset: self.at + FRAME_HEADER_SIZE, number };
        self.at += frame_len;
        Ok(Some(found))
    }
}

/// Reads the committed frames of the WAL in `wal`, a page at a time; `None` when it holds no
/// committed transaction (empty, a header only, an invalid header, or only frames of a
/// transaction that never committed, such as one rolled back after spilling).
///
/// The caller holds the WAL-index write lock, so no frame is being appended and SQLite cannot
/// restart the log meanwhile. Frames past the last commit frame, or past the first frame whose
/// salts or checksum do not follow (a refused commit, whose header the mount erased; a torn
/// write; frames of an older generation of the log), are not committed and are ignored.
///
/// `max_frame`, when given, is the WAL index's `mxFrame` (see [`read_index_max_frame`]): the
/// last frame SQLite has published to readers. Frames after it are not read, committed or
/// not: a commit frame written but held at its commit point is not published.
pub(crate) fn read_committed(wal: &File, max_frame: Option<u32>) -> std::io::Result<Option<CommittedWal>> {
    let Some(mut frames) = WalFrames::open(wal, max_frame)? else { return Ok(None) };
    let mut frame = vec![0u8; frames.frame_len()];
    let mut committed = BTreeMap::new();
    let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
    let mut commit = None;
    while let Some(f) = frames.next_frame(wal, &mut frame)? {
        pending.insert(f.pgno, f.data_offset);
        if f.commit != 0 {
            committed.append(&mut pending);
            commit = Some(f.commit);
        }
    }
    Ok(commit.map(|commit| CommittedWal { page_size: frames.page_size, commit, pages: committed }))
}

/// Bytes of one copy of the WAL-index header (wal.c `WalIndexHdr`), which SQLite keeps twice
/// at the start of `<db>-shm`.
const INDEX_HEADER_BYTES: usize = 48;
/// Bytes of an index header copy its checksum covers (all but `aCksum`).
const INDEX_HEADER_SUMMED: usize = 40;
/// `WALINDEX_MAX_VERSION`, the `iVersion` every SQLite since 3.7.0 writes.
const INDEX_VERSION: u32 = 3_007_000;
/// Reads of a header a writer is updating that disagree before giving up (SQLite's readers
/// retry too, `walIndexReadHdr`).
const INDEX_HEADER_TRIES: usize = 100;

/// The WAL index's `mxFrame` (the last frame published to readers), read from `shm` (opened
/// through the mount, so the read sees the same page cache as SQLite's mapping of it) as
/// SQLite's `walIndexTryHdr` reads it: both copies equal, initialised, version and checksum
/// valid. `None` when there is no such header (no connection has built the index since the
/// WAL was last opened): WAL recovery then decides what is committed.
///
/// Layout (native byte order): iVersion u32 @0, unused u32 @4, iChange u32 @8, isInit u8
/// @12, bigEndCksum u8 @13, szPage u16 @14, mxFrame u32 @16, nPage u32 @20, aFrameCksum
/// @24, aSalt @32, aCksum @40 = `walChecksumBytes` in native order over bytes 0..40.
pub(crate) fn read_index_max_frame(shm: &File) -> std::io::Result<Option<u32>> {
    let mut both = [0u8; 2 * INDEX_HEADER_BYTES];
    for _ in 0..INDEX_HEADER_TRIES {
        match shm.read_exact_at(&mut both, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (first, second) = both.split_at(INDEX_HEADER_BYTES);
        if first != second {
            // A writer is between its two copies.
            std::thread::yield_now();
            continue;
        }
        let native = |at: usize| u32::from_ne_bytes([first[at], first[at + 1], first[at + 2], first[at + 3]]);
        if first[12] == 0 || native(0) != INDEX_VERSION {
            return Ok(None);
        }
        let big_endian_host = cfg!(target_endian = "big");
        if wal_checksum(big_endian_host, &first[..INDEX_HEADER_SUMMED], (0, 0)) != (native(40), native(44)) {
            return Ok(None);
        }
        return Ok(Some(native(16)));
    }
    Ok(None)
}

/// Makes a refused commit frame unrecoverable: SQLite will overwrite the frames, but a crash
/// before that must not let WAL recovery find a commit the policy side refused.
pub(crate) fn erase_frame_header(path: &Path, frame: u64) -> Result<(), CaptureError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| CaptureError::io(path, e))?;
    file.write_all_at(&[0u8; FRAME_HEADER_SIZE as usize], frame).map_err(|e| CaptureError::io(path, e))
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// Builds a WAL the way SQLite writes one: header, then checksummed frames.
    pub(crate) fn wal_bytes(page: u32, frames: &[(u32, u32, u8)], salts: [u8; 8]) -> Vec<u8> {
        let mut w = vec![0u8; 32];
        w[0..4].copy_from_slice(&(WAL_MAGIC | 1).to_be_bytes());
        w[4..8].copy_from_slice(&3_007_000u32.to_be_bytes());
        w[8..12].copy_from_slice(&page.to_be_bytes());
        w[16..24].copy_from_slice(&salts);
        let mut sum = wal_checksum(true, &w[..24], (0, 0));
        w[24..28].copy_from_slice(&sum.0.to_be_bytes());
        w[28..32].copy_from_slice(&sum.1.to_be_bytes());
        for &(pgno, commit, fill) in frames {
            let mut f = frame_header(pgno, commit);
            f[8..16].copy_from_slice(&salts);
            let data = vec![fill; page as usize];
            sum = wal_checksum(true, &data, wal_checksum(true, &f[..8], sum));
            f[16..20].copy_from_slice(&sum.0.to_be_bytes());
            f[20..24].copy_from_slice(&sum.1.to_be_bytes());
            w.extend(f);
            w.extend(data);
        }
        w
    }

    fn committed_of(tag: &str, bytes: &[u8]) -> Option<CommittedWal> {
        let path = std::env::temp_dir().join(format!("replite-wal-read-{}-{tag}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let read = read_committed(&File::open(&path).unwrap(), None).unwrap();
        std::fs::remove_file(&path).unwrap();
        read
    }

    #[test]
    fn committed_frames_end_at_the_last_valid_commit_frame() {
        let salts = [1, 2, 3, 4, 5, 6, 7, 8];
        // Two transactions, then frames of one that never committed.
        let frames = [(2, 0, 0xa), (3, 3, 0xb), (2, 3, 0xc), (4, 0, 0xd), (2, 0, 0xe)];
        let wal = wal_bytes(512, &frames, salts);
        let read = committed_of("committed", &wal).expect("committed frames");
        assert_eq!(read.commit, 3);
        assert_eq!(read.pages.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        // Page 2's last committed copy is the third frame's.
        assert_eq!(read.pages[&2], 32 + 2 * (24 + 512) + 24);

        // A torn (or erased) frame ends the log, even if later frames look committed.
        let mut torn = wal_bytes(512, &[(2, 2, 1), (3, 3, 2), (4, 4, 3)], salts);
        let second_page = 32 + (24 + 512) + 24 + 100;
        torn[second_page] ^= 0xff;
        assert_eq!(committed_of("torn", &torn).expect("first commit").commit, 2);

        // Frames with another generation's salts are not committed.
        let mut stale = wal_bytes(512, &[(2, 2, 1)], salts);
        stale[32 + 8] ^= 1;
        assert!(committed_of("stale", &stale).is_none());
        assert!(committed_of("uncommitted", &wal_bytes(512, &[(2, 0, 1)], salts)).is_none());
        assert!(committed_of("header only", &wal_bytes(512, &[], salts)).is_none());
        assert!(committed_of("empty", &[]).is_none());
    }

    #[test]
    fn a_refused_commit_stays_refused_until_its_frame_gets_a_new_header() {
        let mut wal = Wal::new("refused", 512);
        wal.write(32, &frame_header(3, 3));
        let ready = wal.write(56, &[0u8; 512]).expect("commit");
        wal.track.refuse(ready.frame, Errno::ENOSPC);
        // SQLite retries (part of) the page: still the refused frame.
        assert_eq!(wal.track.completed_frame(300, 268), Some(32));
        assert_eq!(wal.track.refused(32), Some(Errno::ENOSPC), "with the error it got");
        // Its next transaction rewrites the frame's header: no longer refused.
        wal.write(32, &frame_header(3, 0));
        assert_eq!(wal.track.refused(32), None);
        assert!(wal.write(56, &[0u8; 512]).is_none(), "not a commit frame any more");
    }
}
