//! Streaming LTX encoder: header, then pages one at a time, then the trailer. It enforces the
//! rules the decoder checks, so it never writes a file that would not verify.

use std::io::Write;

use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};

use crate::ltx::checksum::{DatabaseChecksum, Hasher};
use crate::ltx::decoder::{last_snapshot_pgno, next_snapshot_pgno};
use crate::ltx::error::LtxError;
use crate::ltx::header::{HEADER_SIZE, Header, PAGE_HEADER_SIZE, Trailer};
use crate::ltx::io_util::CountingWriter;
use crate::types::{Checksum, Pgno};

enum Sink<W: Write> {
    Plain(CountingWriter<W>),
    Lz4(Box<FrameEncoder<CountingWriter<W>>>),
}

/// The LZ4 frame settings Go's pierrec/lz4 reads and LiteFS writes: 64 KiB independent blocks,
/// content checksum on, no block checksums.
fn lz4_frame_info() -> FrameInfo {
    FrameInfo::new().block_size(BlockSize::Max64KB).block_mode(BlockMode::Independent).content_checksum(true)
}

/// Encodes one LTX file into a writer.
pub struct Encoder<W: Write> {
    sink: Sink<W>,
    header: Header,
    hasher: Hasher,
    offset: u64,
    prev_pgno: u32,
    pages_written: u32,
    snapshot_checksum: DatabaseChecksum,
}

impl<W: Write> Encoder<W> {
    /// Validates and writes the header.
    pub fn new(writer: W, header: Header) -> Result<Encoder<W>, LtxError> {
        header.validate()?;
        let bytes = header.encode();
        let mut counted = CountingWriter { inner: writer, count: 0 };
        counted.write_all(&bytes).map_err(|e| LtxError::io(0, e))?;
        let mut hasher = Hasher::new();
        hasher.update(&bytes);
        let sink = if header.is_compressed() {
            Sink::Lz4(Box::new(FrameEncoder::with_frame_info(lz4_frame_info(), counted)))
        } else {
            Sink::Plain(counted)
        };
        Ok(Encoder {
            sink,
            header,
            hasher,
            offset: HEADER_SIZE as u64,
            prev_pgno: 0,
            pages_written: 0,
            snapshot_checksum: DatabaseChecksum::new(header.page_size),
        })
    }

    /// The header being written.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Pages written so far.
    #[must_use]
    pub fn pages_written(&self) -> u32 {
        self.pages_written
    }

    /// For a snapshot, the database checksum of the pages written so far.
    #[must_use]
    pub fn snapshot_checksum(&self) -> Checksum {
        self.snapshot_checksum.value()
    }

    /// Writes one page. Pages must come in increasing order (consecutive from 1 for a
    /// snapshot), within the commit size, never the lock page.
    pub fn encode_page(&mut self, pgno: Pgno, page: &[u8]) -> Result<(), LtxError> {
        let offset = self.offset;
        if page.len() != self.header.page_size.bytes() {
            return Err(LtxError::PageBufferSize { expected: self.header.page_size.bytes(), got: page.len() });
        }
        let lock = self.header.lock_pgno();
        if pgno.0 == 0 {
            return Err(LtxError::PageOrder {
                pgno,
                offset,
                reason: "page number zero is reserved for the end marker".into(),
            });
        }
        if pgno == lock {
            return Err(LtxError::LockPage { pgno, offset });
        }
        if pgno.0 > self.header.commit {
            return Err(LtxError::PageBeyondCommit { pgno, offset, commit: self.header.commit });
        }
        if self.header.is_snapshot() {
            let expected = next_snapshot_pgno(self.prev_pgno, lock);
            if pgno.0 != expected {
                return Err(LtxError::PageOrder {
                    pgno,
                    offset,
                    reason: format!("snapshot pages must be consecutive from 1, expected {expected}"),
                });
            }
            self.snapshot_checksum.toggle_page(pgno, page);
        } else if pgno.0 <= self.prev_pgno {
            return Err(LtxError::PageOrder {
                pgno,
                offset,
                reason: format!("pages must be in increasing order, previous was {}", self.prev_pgno),
            });
        }
        self.write_logical(&pgno.0.to_be_bytes())?;
        self.write_logical(page)?;
        self.prev_pgno = pgno.0;
        self.pages_written += 1;
        Ok(())
    }

    /// Writes the end marker and trailer and returns the writer and trailer. For a snapshot,
    /// `post_apply_checksum` must equal [`Encoder::snapshot_checksum`]; for a deletion
    /// (commit 0) it must be [`Checksum::EMPTY`].
    pub fn finish(mut self, post_apply_checksum: Checksum) -> Result<(W, Trailer), LtxError> {
        if self.header.is_snapshot() {
            let last_expected = last_snapshot_pgno(self.header.commit, self.header.lock_pgno());
            if self.prev_pgno != last_expected {
                return Err(LtxError::IncompleteSnapshot {
                    last: self.prev_pgno,
                    offset: self.offset,
                    commit: self.header.commit,
                });
            }
            if post_apply_checksum != self.snapshot_checksum.value() {
                return Err(LtxError::PostApplyChecksumMismatch {
                    stored: post_apply_checksum,
                    computed: self.snapshot_checksum.value(),
                });
            }
        }
        if !post_apply_checksum.has_flag() {
            return Err(LtxError::InvalidPostApplyChecksum { checksum: post_apply_checksum, offset: self.offset });
        }
        if self.header.commit == 0 && post_apply_checksum != Checksum::EMPTY {
            return Err(LtxError::DeletionChecksum { checksum: post_apply_checksum });
        }
        self.write_logical(&[0u8; PAGE_HEADER_SIZE])?;
        let offset = self.offset;
        let mut out = match self.sink {
            Sink::Plain(w) => w,
            Sink::Lz4(frame) => frame.finish().map_err(|e| LtxError::io(offset, std::io::Error::other(e)))?,
        };
        self.hasher.update(&post_apply_checksum.0.to_be_bytes());
        let trailer = Trailer { post_apply_checksum, file_checksum: self.hasher.checksum() };
        out.write_all(&trailer.encode()).map_err(|e| LtxError::io(offset, e))?;
        out.flush().map_err(|e| LtxError::io(offset, e))?;
        Ok((out.inner, trailer))
    }

    fn write_logical(&mut self, bytes: &[u8]) -> Result<(), LtxError> {
        let offset = self.offset;
        let result = match &mut self.sink {
            Sink::Plain(w) => w.write_all(bytes),
            Sink::Lz4(w) => w.write_all(bytes),
        };
        result.map_err(|e| LtxError::io(offset, e))?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }
}
