//! Spooling an LTX file to disk as it arrives (`Output::SpoolBegin` / `SpoolWrite` /
//! `SpoolEnd`): one thread per spool writes each piece to the spool file and feeds the same
//! bytes to `ltx::verify`, so the file is verified whole (LZ4 content, page checksums, file
//! checksum, a snapshot's database checksum) while it is written, never held in memory, and
//! never read back to verify. The thread fsyncs the file once it verified, then reports.
//!
//! A snapshot's pages are also written, as they are verified, into a database image beside
//! the database (decision 0010): the apply then replaces the database file by a rename
//! instead of reading the LTX file back and writing every page a second time. Both files
//! are written with `O_DIRECT` on writer threads of their own (`replite_fuse::DirectWriter`):
//! written once and not read soon, they need not pass through the page cache.
//!
//! Back-pressure: the driver hands pieces over a bounded channel, so a disk slower than the
//! network slows the driver loop, which stops reading the stream, which lets HTTP/2 flow
//! control stop the primary.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use replite_core::Pgno;
use replite_core::ltx::{self, Header, VerifiedLtx};
use replite_core::node::SpoolId;
use replite_fuse::DirectWriter;
use tempfile::NamedTempFile;
use tracing::debug;

use crate::driver::storage::SnapshotImage;

/// Pieces queued between the driver loop and a spool's thread. A piece is at most one
/// stream chunk (64 KiB), so at most about 1 MiB waits per spool.
const SPOOL_QUEUE_PIECES: usize = 16;

/// A spooled file, verified, and the database a snapshot holds when one was built.
#[derive(Debug)]
pub struct Spooled {
    /// What verifying the file proved.
    pub verified: VerifiedLtx,
    /// The spool file, fsynced.
    pub file: NamedTempFile,
    /// For a snapshot, its database (not fsynced: the LTX file is the durable record).
    pub image: Option<SnapshotImage>,
}

/// What a spool's thread reports: the verified file, or why it is not one.
pub type SpoolOutcome = Result<Spooled, String>;

/// Makes the temporary file a snapshot's image is written to; `None` when the storage
/// cannot replace its database with one (the file is then applied page by page).
pub type MakeImage = Box<dyn FnOnce() -> io::Result<Option<NamedTempFile>> + Send>;

/// The driver's end of a spool being written.
#[derive(Debug)]
pub struct SpoolWriter {
    pieces: SyncSender<Vec<u8>>,
}

impl SpoolWriter {
    /// Starts a thread that writes `file` from the pieces given to [`SpoolWriter::write`]
    /// until the writer is dropped (the end of the file), verifies as it goes (writing a
    /// snapshot's pages into a file from `make_image` as well), and calls `report` once
    /// with the outcome.
    pub fn start(
        spool: SpoolId,
        file: NamedTempFile,
        make_image: MakeImage,
        report: impl FnOnce(SpoolId, SpoolOutcome) + Send + 'static,
    ) -> io::Result<SpoolWriter> {
        let (pieces, rx) = sync_channel(SPOOL_QUEUE_PIECES);
        std::thread::Builder::new().name("replite-spool".into()).spawn(move || {
            let outcome = spool_and_verify(file, rx, make_image);
            if let Err(e) = &outcome {
                debug!(spool = spool.0, error = %e, "spool failed");
            }
            report(spool, outcome);
        })?;
        Ok(SpoolWriter { pieces })
    }

    /// Hands over the next piece, waiting while the thread is behind. `false` if the thread
    /// has stopped (it failed, and reports why).
    pub fn write(&self, bytes: Vec<u8>) -> bool {
        match self.pieces.try_send(bytes) {
            Ok(()) => true,
            Err(TrySendError::Full(bytes)) => self.pieces.send(bytes).is_ok(),
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn spool_and_verify(file: NamedTempFile, pieces: Receiver<Vec<u8>>, make_image: MakeImage) -> SpoolOutcome {
    let out =
        file.as_file().try_clone().and_then(DirectWriter::new).map_err(|e| format!("opening the spool file: {e}"))?;
    let mut tee = Tee { pieces, piece: Vec::new(), at: 0, out, written: 0 };
    let mut image = ImageBuilder::Undecided(make_image);
    let verified = ltx::verify_visiting(&mut tee, |header, pgno, page| image.page(header, pgno, page))
        .map_err(|e| e.to_string())?;
    let Tee { out, written, .. } = tee;
    // `verify` read to the end, so everything received was written.
    debug_assert_eq!(written, verified.size());
    out.finish(written).map_err(|e| format!("writing the spool file: {e}"))?;
    let image = image.finish(verified.header()).map_err(|e| format!("writing the snapshot's database: {e}"))?;
    file.as_file().sync_all().map_err(|e| format!("fsync of the spool file: {e}"))?;
    let image = image.map(|file| SnapshotImage { file, pos: verified.post_apply_pos() });
    Ok(Spooled { verified, file, image })
}

/// A snapshot's database being written from its pages as they are verified.
enum ImageBuilder {
    /// No page seen yet.
    Undecided(MakeImage),
    /// Not a snapshot, or the storage builds no images.
    Skipped,
    /// Pages being written to `file` through `out`.
    Building { file: NamedTempFile, out: DirectWriter },
}

impl ImageBuilder {
    fn page(&mut self, header: &Header, pgno: Pgno, page: &[u8]) -> io::Result<()> {
        if let ImageBuilder::Undecided(_) = self {
            let ImageBuilder::Undecided(make) = std::mem::replace(self, ImageBuilder::Skipped) else {
                unreachable!("matched just above")
            };
            // A drop (commit 0) holds no pages, so only a snapshot of a database gets here.
            if header.is_snapshot()
                && let Some(file) = make()?
            {
                let out = DirectWriter::new(file.as_file().try_clone()?)?;
                *self = ImageBuilder::Building { file, out };
            }
        }
        let ImageBuilder::Building { out, .. } = self else { return Ok(()) };
        // Pages of a snapshot are consecutive except around the lock page, left a hole.
        out.write_at(pgno.offset(header.page_size), page)
    }

    /// The image, complete, once the whole file verified.
    fn finish(self, header: &Header) -> io::Result<Option<NamedTempFile>> {
        let ImageBuilder::Building { file, out } = self else { return Ok(None) };
        out.finish(u64::from(header.commit) * u64::from(header.page_size.get()))?;
        Ok(Some(file))
    }
}

/// A reader over the received pieces that writes each piece to the spool file as it is
/// taken. The end of the pieces (the writer dropped) is the end of the file.
struct Tee {
    pieces: Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
    out: DirectWriter,
    written: u64,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bounded: each pass either returns or takes a new piece; an empty piece is skipped,
        // and the channel ends when the driver drops the writer.
        while self.at == self.piece.len() {
            let Ok(piece) = self.pieces.recv() else { return Ok(0) };
            self.out.write_at(self.written, &piece)?;
            self.written += piece.len() as u64;
            self.piece = piece;
            self.at = 0;
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    use replite_core::ltx::{Encoder, FLAG_COMPRESS_LZ4, Header};
    use replite_core::{Checksum, PageSize, Pgno, Pos, TxId};

    /// A compressed snapshot of 64 pages of 4 KiB.
    fn sample_ltx() -> Vec<u8> {
        let page_size = PageSize::new(4096).expect("valid");
        let mut header = Header::new(page_size, 64, TxId(1), TxId(3), Checksum::ZERO);
        header.flags = FLAG_COMPRESS_LZ4;
        let mut encoder = Encoder::new(Vec::new(), header).expect("valid header");
        for pgno in 1..=64u32 {
            let page: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(pgno) % 253) as u8).collect();
            encoder.encode_page(Pgno(pgno), &page).expect("in order");
        }
        let sum = encoder.snapshot_checksum();
        encoder.finish(sum).expect("complete").0
    }

    /// Spools `pieces` in a fresh directory, building images there too; checks that a
    /// failed spool leaves no file behind, and a successful one its file and an image.
    fn run(pieces: &[&[u8]]) -> (SpoolOutcome, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let outcome = run_in(dir.path(), pieces, true);
        let left = std::fs::read_dir(dir.path()).expect("read dir").count();
        let expected = outcome.as_ref().map_or(0, |s| 1 + usize::from(s.image.is_some()));
        assert_eq!(left, expected, "a failed spool leaves no file");
        (outcome, dir)
    }

    fn run_in(dir: &std::path::Path, pieces: &[&[u8]], images: bool) -> SpoolOutcome {
        let (tx, rx) = std::sync::mpsc::channel();
        let file = NamedTempFile::new_in(dir).expect("temp file");
        let image_dir = dir.to_path_buf();
        let make_image: MakeImage =
            Box::new(move || if images { NamedTempFile::new_in(image_dir).map(Some) } else { Ok(None) });
        let writer = SpoolWriter::start(SpoolId(1), file, make_image, move |_, outcome| {
            let _ = tx.send(outcome);
        })
        .expect("thread");
        for piece in pieces {
            if !writer.write(piece.to_vec()) {
                break;
            }
        }
        drop(writer);
        rx.recv().expect("the thread reports")
    }

    #[test]
    fn a_spooled_file_is_written_whole_and_verified() {
        let bytes = sample_ltx();
        let pieces: Vec<&[u8]> = bytes.chunks(1000).collect();
        let (outcome, _dir) = run(&pieces);
        let spooled = outcome.expect("valid file");
        assert_eq!(spooled.verified.size(), bytes.len() as u64);
        assert_eq!(std::fs::read(spooled.file.path()).expect("read"), bytes);
    }

    /// The database an LTX file rebuilds, by the codec's own apply.
    fn applied(ltx_bytes: &[u8]) -> (Vec<u8>, Pos) {
        let mut db = Vec::new();
        let pos = ltx::apply(&mut db, replite_core::Checksum::ZERO, ltx_bytes).expect("applies");
        (db, pos)
    }

    #[test]
    fn a_spooled_snapshot_leaves_the_database_it_holds_beside_it() {
        let bytes = sample_ltx();
        let pieces: Vec<&[u8]> = bytes.chunks(777).collect();
        let (outcome, _dir) = run(&pieces);
        let image = outcome.expect("valid file").image.expect("a snapshot builds its database");
        let (db, pos) = applied(&bytes);
        assert_eq!(std::fs::read(image.file.path()).expect("read"), db);
        assert_eq!(image.pos, pos);
    }

    #[test]
    fn a_snapshot_over_the_lock_page_leaves_it_a_hole_of_zeros() {
        // 64 KiB pages put the lock page (at 1 GiB) at 16385. The builder is fed the pages
        // around it only (a whole 1 GiB snapshot is too slow for a unit test); the image is
        // sparse elsewhere.
        let page_size = PageSize::new(65536).expect("valid");
        let lock = page_size.lock_pgno().0;
        let commit = lock + 1;
        let header = Header::new(page_size, commit, TxId(1), TxId(9), Checksum::ZERO);
        let dir = tempfile::tempdir().expect("temp dir");
        let image_dir = dir.path().to_path_buf();
        let mut builder = ImageBuilder::Undecided(Box::new(move || NamedTempFile::new_in(image_dir).map(Some)));
        let page = |fill: u8| vec![fill; page_size.bytes()];
        for (pgno, fill) in [(1, 1u8), (lock - 1, 2), (commit, 3)] {
            builder.page(&header, Pgno(pgno), &page(fill)).expect("written");
        }
        let image = builder.finish(&header).expect("finished").expect("a snapshot builds its database");
        let file = image.as_file();
        assert_eq!(file.metadata().expect("stat").len(), u64::from(commit) * 65536);
        let mut read = page(0xff);
        for (pgno, fill) in [(1, 1u8), (2, 0), (lock - 1, 2), (lock, 0), (commit, 3)] {
            file.read_exact_at(&mut read, Pgno(pgno).offset(page_size)).expect("read");
            assert!(read.iter().all(|&b| b == fill), "page {pgno}");
        }
    }

    #[test]
    fn only_snapshots_build_an_image_and_only_when_the_storage_asks() {
        let page_size = PageSize::new(4096).expect("valid");
        let header = Header::new(page_size, 8, TxId(4), TxId(4), Checksum(Checksum::FLAG | 7));
        let mut encoder = Encoder::new(Vec::new(), header).expect("valid header");
        encoder.encode_page(Pgno(3), &[1u8; 4096]).expect("in order");
        let delta = encoder.finish(Checksum(Checksum::FLAG | 9)).expect("complete").0;
        let (outcome, _dir) = run(&[&delta]);
        assert!(outcome.expect("valid file").image.is_none(), "a delta builds no image");
        let dir = tempfile::tempdir().expect("temp dir");
        let spooled = run_in(dir.path(), &[&sample_ltx()], false).expect("valid file");
        assert!(spooled.image.is_none(), "the storage asked for none");
    }

    #[test]
    fn a_truncated_or_corrupt_spool_is_refused_and_its_file_deleted() {
        let bytes = sample_ltx();
        let error = |outcome: SpoolOutcome| outcome.expect_err("refused");
        let (cut, _) = run(&[&bytes[..bytes.len() - 3]]);
        assert!(error(cut).starts_with("file truncated: trailer at offset"));
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(error(run(&[&bad]).0).contains("content checksum mismatch"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(error(run(&[&longer]).0).contains("after the trailer"));
    }
}
