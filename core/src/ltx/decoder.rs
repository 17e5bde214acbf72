//! Streaming LTX decoder: header, then pages one at a time, then the trailer. Memory is one
//! page buffer (the caller's) plus, for compressed files, the LZ4 block buffers. It validates
//! every rule before trusting a value, and never reads past the trailer, so an LTX can be
//! decoded straight out of a replication stream.

use std::io::{self, Read};

use lz4_flex::frame::FrameDecoder;

use crate::ltx::checksum::{DatabaseChecksum, Hasher, read_full};
use crate::ltx::error::LtxError;
use crate::ltx::header::{HEADER_SIZE, Header, PAGE_HEADER_SIZE, TRAILER_SIZE, Trailer};
use crate::ltx::io_util::CountingReader;
use crate::types::{Checksum, Pgno, Pos};

enum Body<R: Read> {
    Plain(CountingReader<R>),
    Lz4(Box<FrameDecoder<CountingReader<R>>>),
    /// Between states, or after a failure that left the reader unusable.
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pages,
    Done,
    Failed,
}

/// Decodes one LTX file from a reader.
pub struct Decoder<R: Read> {
    body: Body<R>,
    header: Header,
    hasher: Hasher,
    /// Logical (uncompressed) bytes consumed so far.
    offset: u64,
    state: State,
    prev_pgno: u32,
    pages_read: u32,
    /// Running database checksum, checked against the trailer for snapshots.
    snapshot_checksum: DatabaseChecksum,
    trailer: Option<Trailer>,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(reader: R) -> Result<Decoder<R>, LtxError> {
        let mut counted = CountingReader { inner: reader, count: 0 };
        let mut bytes = [0u8; HEADER_SIZE];
        let got = read_full(&mut counted, &mut bytes).map_err(|e| LtxError::io(0, e))?;
        if got < HEADER_SIZE {
            return Err(LtxError::Truncated { what: "header".into(), offset: 0, needed: HEADER_SIZE, got });
        }
        let header = Header::decode(&bytes)?;
        let mut hasher = Hasher::new();
        hasher.update(&bytes);
        let body =
            if header.is_compressed() { Body::Lz4(Box::new(FrameDecoder::new(counted))) } else { Body::Plain(counted) };
        Ok(Decoder {
            body,
            header,
            hasher,
            offset: HEADER_SIZE as u64,
            state: State::Pages,
            prev_pgno: 0,
            pages_read: 0,
            snapshot_checksum: DatabaseChecksum::new(header.page_size),
            trailer: None,
        })
    }

    /// The validated header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Pages decoded so far.
    #[must_use]
    pub fn pages_read(&self) -> u32 {
        self.pages_read
    }

    /// The verified trailer, once [`Decoder::next_page`] has returned `None`.
    #[must_use]
    pub fn trailer(&self) -> Option<Trailer> {
        self.trailer
    }

    /// The position after this file applies, once the trailer is verified.
    #[must_use]
    pub fn post_apply_pos(&self) -> Option<Pos> {
        self.trailer.map(|t| Pos::new(self.header.max_txid, t.post_apply_checksum))
    }

    /// Bytes read from the underlying reader so far (the stored, possibly compressed, size).
    #[must_use]
    pub fn raw_offset(&self) -> u64 {
        match &self.body {
            Body::Plain(r) => r.count,
            Body::Lz4(d) => d.get_ref().count,
            Body::Gone => 0,
        }
    }

    /// Decodes the next page into `page` and returns its number, or `None` after the last page,
    /// by which time the trailer and every checksum have been verified.
    pub fn next_page(&mut self, page: &mut [u8]) -> Result<Option<Pgno>, LtxError> {
        match self.state {
            State::Pages => {}
            State::Done => return Ok(None),
            State::Failed => return Err(LtxError::Misuse { role: "decoder", reason: "used after an error" }),
        }
        if page.len() != self.header.page_size.bytes() {
            return Err(LtxError::PageBufferSize { expected: self.header.page_size.bytes(), got: page.len() });
        }
        let result = self.decode_page(page);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn decode_page(&mut self, page: &mut [u8]) -> Result<Option<Pgno>, LtxError> {
        let header_offset = self.offset;
        let mut pgno_bytes = [0u8; PAGE_HEADER_SIZE];
        let index = 1 + self.pages_read;
        self.read_logical(&mut pgno_bytes, || format!("page header {index}"))?;
        let pgno = u32::from_be_bytes(pgno_bytes);
        if pgno == 0 {
            self.finish_pages(header_offset)?;
            self.read_trailer()?;
            self.state = State::Done;
            return Ok(None);
        }
        self.check_page_order(Pgno(pgno), header_offset)?;
        self.read_logical(page, || format!("page {pgno}"))?;
        if self.header.is_snapshot() {
            self.snapshot_checksum.toggle_page(Pgno(pgno), page);
        }
        self.prev_pgno = pgno;
        self.pages_read += 1;
        Ok(Some(Pgno(pgno)))
    }

    /// The ordering rules the reference encoder enforces, checked on the way in.
    fn check_page_order(&self, pgno: Pgno, offset: u64) -> Result<(), LtxError> {
        let lock = self.header.lock_pgno();
        if pgno == lock {
            return Err(LtxError::LockPage { pgno, offset });
        }
        if pgno.0 > self.header.commit {
            return Err(LtxError::PageBeyondCommit { pgno, offset, commit: self.header.commit });
        }
        let order_error = |reason: String| Err(LtxError::PageOrder { pgno, offset, reason });
        if self.header.is_snapshot() {
            let expected = next_snapshot_pgno(self.prev_pgno, lock);
            if pgno.0 != expected {
                return order_error(format!("snapshot pages must be consecutive from 1, expected {expected}"));
            }
        } else if pgno.0 <= self.prev_pgno {
            return order_error(format!("pages must be in increasing order, previous was {}", self.prev_pgno));
        }
        Ok(())
    }

    /// After the zero page header: snapshot completeness, and the LZ4 frame's exact end.
    fn finish_pages(&mut self, marker_offset: u64) -> Result<(), LtxError> {
        if self.header.is_snapshot() {
            let last_expected = last_snapshot_pgno(self.header.commit, self.header.lock_pgno());
            if self.prev_pgno != last_expected {
                return Err(LtxError::IncompleteSnapshot {
                    last: self.prev_pgno,
                    offset: marker_offset,
                    commit: self.header.commit,
                });
            }
        }
        if let Body::Lz4(_) = self.body {
            let Body::Lz4(mut frame) = std::mem::replace(&mut self.body, Body::Gone) else {
                unreachable!("matched Lz4 just above");
            };
            // One more read makes the frame decoder consume the end mark and content checksum
            // (and verify it) without starting on the bytes after the frame.
            let mut probe = [0u8; 1];
            let raw_offset = frame.get_ref().count;
            let n = frame.read(&mut probe).map_err(|e| lz4_error(raw_offset, e))?;
            if n != 0 {
                return Err(LtxError::TrailingCompressedData { offset: self.offset });
            }
            self.body = Body::Plain(frame.into_inner());
        }
        Ok(())
    }

    fn read_trailer(&mut self) -> Result<(), LtxError> {
        let trailer_offset = self.offset;
        let mut bytes = [0u8; TRAILER_SIZE];
        let Body::Plain(reader) = &mut self.body else {
            return Err(LtxError::Misuse { role: "decoder", reason: "trailer read before the page section ended" });
        };
        let got = read_full(reader, &mut bytes).map_err(|e| LtxError::io(trailer_offset, e))?;
        if got < TRAILER_SIZE {
            return Err(LtxError::Truncated {
                what: "trailer".into(),
                offset: trailer_offset,
                needed: TRAILER_SIZE,
                got,
            });
        }
        self.offset += TRAILER_SIZE as u64;
        let trailer = Trailer::decode(&bytes);
        self.hasher.update(&bytes[..8]);
        let computed = self.hasher.checksum();
        if computed != trailer.file_checksum {
            return Err(LtxError::FileChecksumMismatch {
                stored: trailer.file_checksum,
                computed,
                offset: trailer_offset + 8,
            });
        }
        if !trailer.post_apply_checksum.has_flag() {
            return Err(LtxError::InvalidPostApplyChecksum {
                checksum: trailer.post_apply_checksum,
                offset: trailer_offset,
            });
        }
        if self.header.commit == 0 && trailer.post_apply_checksum != Checksum::EMPTY {
            return Err(LtxError::DeletionChecksum { checksum: trailer.post_apply_checksum });
        }
        if self.header.is_snapshot() && trailer.post_apply_checksum != self.snapshot_checksum.value() {
            return Err(LtxError::PostApplyChecksumMismatch {
                stored: trailer.post_apply_checksum,
                computed: self.snapshot_checksum.value(),
            });
        }
        self.trailer = Some(trailer);
        Ok(())
    }

    /// Reads exactly `buf.len()` logical bytes, hashing them.
    fn read_logical(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> Result<(), LtxError> {
        let offset = self.offset;
        let got = match &mut self.body {
            Body::Plain(r) => read_full(r, buf).map_err(|e| LtxError::io(offset, e))?,
            Body::Lz4(d) => {
                let raw_offset = d.get_ref().count;
                read_full(d.as_mut(), buf).map_err(|e| lz4_error(raw_offset, e))?
            }
            Body::Gone => {
                return Err(LtxError::Misuse { role: "decoder", reason: "read after the reader was released" });
            }
        };
        if got < buf.len() {
            return Err(LtxError::Truncated { what: what(), offset, needed: buf.len(), got });
        }
        self.hasher.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Gives back the reader, positioned just after the trailer if decoding finished.
    pub fn into_inner(self) -> Option<R> {
        match self.body {
            Body::Plain(r) => Some(r.inner),
            Body::Lz4(d) => Some(d.into_inner().inner),
            Body::Gone => None,
        }
    }
}

/// A corrupt compressed stream is `InvalidData`, a cut-off one `UnexpectedEof`; anything else
/// came from the reader itself.
fn lz4_error(raw_offset: u64, e: io::Error) -> LtxError {
    match e.kind() {
        io::ErrorKind::InvalidData => LtxError::Lz4 { raw_offset, detail: describe_lz4(&e) },
        io::ErrorKind::UnexpectedEof => LtxError::TruncatedCompressed { raw_offset },
        _ => LtxError::Io { offset: raw_offset, source: e },
    }
}

/// A short human description of what the LZ4 frame decoder found wrong.
fn describe_lz4(e: &io::Error) -> String {
    use lz4_flex::frame::Error as F;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<F>()) {
        Some(F::ContentChecksumError) => "content checksum mismatch".into(),
        Some(F::HeaderChecksumError) => "frame header checksum mismatch".into(),
        Some(F::BlockChecksumError) => "block checksum mismatch".into(),
        Some(F::WrongMagicNumber) => "not an LZ4 frame (bad magic)".into(),
        Some(F::BlockTooBig) => "block larger than the frame's block size".into(),
        Some(F::InvalidBlockInfo) => "malformed block header".into(),
        Some(F::DecompressionError(d)) => format!("block does not decompress: {d}"),
        Some(other) => format!("{other:?}"),
        None => e.to_string(),
    }
}

/// The page a snapshot must hold after `prev` (0 before the first), skipping the lock page.
pub(crate) fn next_snapshot_pgno(prev: u32, lock: Pgno) -> u32 {
    let next = prev + 1;
    if next == lock.0 { next + 1 } else { next }
}

/// The last page a snapshot of `commit` pages holds (the lock page is never stored).
pub(crate) fn last_snapshot_pgno(commit: u32, lock: Pgno) -> u32 {
    if commit == lock.0 { commit - 1 } else { commit }
}

/// What [`verify`] proved about a whole LTX file. Only [`verify`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedLtx {
    header: Header,
    trailer: Trailer,
    page_count: u32,
    size: u64,
}

impl VerifiedLtx {
    /// The file's header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The file's trailer.
    #[must_use]
    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }
    /// How many pages it holds.
    #[must_use]
    pub fn page_count(&self) -> u32 {
        self.page_count
    }
    /// Its stored size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The position the database must be at for it to apply.
    #[must_use]
    pub fn pre_apply_pos(&self) -> Pos {
        self.header.pre_apply_pos()
    }
    /// The position after it applies.
    #[must_use]
    pub fn post_apply_pos(&self) -> Pos {
        Pos::new(self.header.max_txid, self.trailer.post_apply_checksum)
    }
}

/// Reads a whole LTX file, checks every rule and checksum, and that nothing follows the trailer.
pub fn verify<R: Read>(reader: R) -> Result<VerifiedLtx, LtxError> {
    verify_visiting(reader, |_, _, _| Ok(()))
}

/// [`verify`], handing each page to `visit` as it is decoded, with the file's header: a
/// caller can build what the file holds (a snapshot's database image) in the same pass
/// that verifies it. The pages are handed on before the file as a whole is verified, so
/// what `visit` builds may be used only once this returns `Ok`. An error from `visit` stops
/// the pass ([`LtxError::Visit`]).
pub fn verify_visiting<R: Read>(
    reader: R,
    mut visit: impl FnMut(&Header, Pgno, &[u8]) -> io::Result<()>,
) -> Result<VerifiedLtx, LtxError> {
    let mut decoder = Decoder::new(reader)?;
    let mut page = vec![0u8; decoder.header().page_size.bytes()];
    while let Some(pgno) = decoder.next_page(&mut page)? {
        visit(decoder.header(), pgno, &page).map_err(|source| LtxError::Visit { pgno, source })?;
    }
    let header = *decoder.header();
    let trailer =
        decoder.trailer().ok_or(LtxError::Misuse { role: "decoder", reason: "no trailer after the last page" })?;
    let page_count = decoder.pages_read();
    let size = decoder.raw_offset();
    let mut rest = decoder.into_inner().ok_or(LtxError::Misuse { role: "decoder", reason: "reader lost" })?;
    let mut extra = [0u8; 1];
    let n = read_full(&mut rest, &mut extra).map_err(|e| LtxError::io(size, e))?;
    if n != 0 {
        return Err(LtxError::TrailingData { raw_offset: size, extra: n });
    }
    Ok(VerifiedLtx { header, trailer, page_count, size })
}
