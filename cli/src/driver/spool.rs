//! Spooling an LTX file to disk as it arrives (`Output::SpoolBegin` / `SpoolWrite` /
//! `SpoolEnd`): one thread per spool writes each piece to the spool file and feeds the same
//! bytes to `ltx::verify`, so the file is verified whole (LZ4 content, page checksums, file
//! checksum, a snapshot's database checksum) while it is written, never held in memory, and
//! never read back to verify. The thread fsyncs the file once it verified, then reports.
//!
//! Back-pressure: the driver hands pieces over a bounded channel, so a disk slower than the
//! network slows the driver loop, which stops reading the stream, which lets HTTP/2 flow
//! control stop the primary.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use replite_core::ltx::{self, VerifiedLtx};
use replite_core::node::SpoolId;
use tempfile::NamedTempFile;
use tracing::debug;

/// Pieces queued between the driver loop and a spool's thread. A piece is at most one
/// stream chunk (64 KiB), so at most about 1 MiB waits per spool.
const SPOOL_QUEUE_PIECES: usize = 16;

/// What a spool's thread reports: the verified file, or why it is not one.
pub type SpoolOutcome = Result<(VerifiedLtx, NamedTempFile), String>;

/// The driver's end of a spool being written.
#[derive(Debug)]
pub struct SpoolWriter {
    pieces: SyncSender<Vec<u8>>,
}

impl SpoolWriter {
    /// Starts a thread that writes `file` from the pieces given to [`SpoolWriter::write`]
    /// until the writer is dropped (the end of the file), verifies as it goes, and calls
    /// `report` once with the outcome.
    pub fn start(
        spool: SpoolId,
        file: NamedTempFile,
        report: impl FnOnce(SpoolId, SpoolOutcome) + Send + 'static,
    ) -> io::Result<SpoolWriter> {
        let (pieces, rx) = sync_channel(SPOOL_QUEUE_PIECES);
        std::thread::Builder::new().name("replite-spool".into()).spawn(move || {
            let outcome = spool_and_verify(file, rx);
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

fn spool_and_verify(file: NamedTempFile, pieces: Receiver<Vec<u8>>) -> SpoolOutcome {
    let mut tee = Tee { pieces, piece: Vec::new(), at: 0, file, written: 0 };
    let verified = ltx::verify(&mut tee).map_err(|e| e.to_string())?;
    let Tee { file, written, .. } = tee;
    // `verify` read to the end, so everything received was written.
    debug_assert_eq!(written, verified.size());
    file.as_file().sync_all().map_err(|e| format!("fsync of the spool file: {e}"))?;
    Ok((verified, file))
}

/// A reader over the received pieces that writes each piece to the spool file as it is
/// taken. The end of the pieces (the writer dropped) is the end of the file.
struct Tee {
    pieces: Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
    file: NamedTempFile,
    written: u64,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bounded: each pass either returns or takes a new piece; an empty piece is skipped,
        // and the channel ends when the driver drops the writer.
        while self.at == self.piece.len() {
            let Ok(piece) = self.pieces.recv() else { return Ok(0) };
            self.file.as_file_mut().write_all(&piece)?;
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
    use replite_core::ltx::{Encoder, FLAG_COMPRESS_LZ4, Header};
    use replite_core::{Checksum, PageSize, Pgno, TxId};

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

    fn run(pieces: &[&[u8]]) -> (SpoolOutcome, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let outcome = run_in(dir.path(), pieces);
        let left = std::fs::read_dir(dir.path()).expect("read dir").count();
        assert_eq!(left, usize::from(outcome.is_ok()), "a failed spool leaves no file");
        (outcome, dir)
    }

    fn run_in(dir: &std::path::Path, pieces: &[&[u8]]) -> SpoolOutcome {
        let (tx, rx) = std::sync::mpsc::channel();
        let file = NamedTempFile::new_in(dir).expect("temp file");
        let writer = SpoolWriter::start(SpoolId(1), file, move |_, outcome| {
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
        let (verified, file) = outcome.expect("valid file");
        assert_eq!(verified.size(), bytes.len() as u64);
        assert_eq!(std::fs::read(file.path()).expect("read"), bytes);
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
