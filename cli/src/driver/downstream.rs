//! One task per replica stream: carries out that stream's outputs in the order the Node
//! emitted them (frames, LTX files read from disk, snapshots copied from the database), so a
//! slow disk read or a slow replica never holds up the driver loop or another replica.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use bytes::Bytes;
use replite_core::ltx::{SnapshotOptions, encode_database};
use replite_core::node::DownstreamId;
use replite_core::stream::{DbName, Frame, MAX_CHUNK_SIZE, encode_frame, encode_ltx_message};
use replite_core::{Checksum, PageSize, Pgno, Pos, TxId};
use replite_fuse::{CopySink, DirectReader, DirectWriter};
use tempfile::NamedTempFile;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::driver::recent_ltx::{SharedRecentLtx, lock};
use crate::driver::storage::{DatabaseImage, Storage, Streamed};

/// What a replica's stream task is asked to do.
#[derive(Debug)]
pub enum DownstreamCmd {
    /// Send these encoded frames.
    Bytes(Vec<u8>),
    /// Send the stored LTX file `min..=max`.
    Ltx {
        /// The database.
        db: DbName,
        /// First TXID.
        min: TxId,
        /// Last TXID.
        max: TxId,
    },
    /// Send a snapshot of the database, which the Node knows at `pos` or later.
    Snapshot {
        /// The database.
        db: DbName,
        /// The Node's position when it asked.
        pos: Pos,
    },
}

/// A question the stream task asks the driver loop: which position of `db` has this
/// checksum (the copy may include commits acknowledged after the Node asked for it), or,
/// without one, what the Node's position is now.
#[derive(Debug)]
pub struct PositionQuery {
    /// The database.
    pub db: DbName,
    /// The checksum of the copy; `None` for a copy of the last commit (see
    /// `replite_fuse::CopySink::begin`).
    pub checksum: Option<replite_core::Checksum>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Option<Pos>>,
}

/// One snapshot on its way: the database, bytes sent, bytes in all.
type Transfer = (DbName, u64, u64);

/// Snapshots being sent right now, for status, by stream.
#[derive(Clone, Default)]
pub struct Transfers(std::sync::Arc<std::sync::Mutex<BTreeMap<DownstreamId, Transfer>>>);

impl Transfers {
    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<DownstreamId, Transfer>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, conn: DownstreamId, db: &DbName, sent: u64, total: u64) {
        self.table().insert(conn, (db.clone(), sent, total));
    }

    fn finish(&self, conn: DownstreamId) {
        self.table().remove(&conn);
    }

    /// Every snapshot in progress: database, bytes sent, bytes in all.
    #[must_use]
    pub fn snapshot(&self) -> Vec<Transfer> {
        self.table().values().cloned().collect()
    }
}

/// Why a stream task stopped early.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("the replica went away")]
    Gone,
    #[error("reading {what}: {source}")]
    Read { what: &'static str, source: std::io::Error },
    #[error("the copied database matches no position in the retained history")]
    UnknownPosition,
    #[error("encoding the snapshot: {0}")]
    Encode(#[from] replite_core::ltx::SnapshotError),
    #[error("the copy's pages sum to {encoded}, not to {announced} of the position it was sent as")]
    Changed { announced: Checksum, encoded: Checksum },
}

/// What every replica stream task shares with the driver.
#[derive(Clone)]
pub struct DownstreamShared {
    /// Where LTX files are read from.
    pub storage: Arc<dyn Storage>,
    /// Questions about positions, answered by the driver loop.
    pub positions: mpsc::UnboundedSender<PositionQuery>,
    /// Told when a stream ends.
    pub closed: mpsc::UnboundedSender<DownstreamId>,
    /// Snapshots in progress, for `status`.
    pub transfers: Transfers,
    /// The driver's newest commits, sent without reading their files.
    pub recent: SharedRecentLtx,
}

/// Runs one replica's stream until the driver drops `cmds` (after its last command is sent)
/// or the replica goes away; then `shared.closed` is told, so the Node forgets the stream.
pub async fn run_downstream(
    conn: DownstreamId,
    mut cmds: mpsc::UnboundedReceiver<DownstreamCmd>,
    frames: mpsc::Sender<Bytes>,
    shared: DownstreamShared,
) {
    let DownstreamShared { storage, positions, closed, transfers, recent } = shared;
    let mut writer = Writer { conn, transfers, frames, storage, positions, recent, covered: BTreeMap::new() };
    while let Some(cmd) = cmds.recv().await {
        if let Err(e) = writer.carry_out(cmd).await {
            match e {
                SendError::Gone => debug!(conn = conn.0, "replica stream closed"),
                e => warn!(conn = conn.0, error = %e, "replica stream failed; closing it"),
            }
            let _ = closed.send(conn);
            return;
        }
    }
}

/// How often a snapshot in progress is logged.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Writer {
    conn: DownstreamId,
    transfers: Transfers,
    frames: mpsc::Sender<Bytes>,
    storage: Arc<dyn Storage>,
    positions: mpsc::UnboundedSender<PositionQuery>,
    /// The driver's newest commits, sent without reading their files.
    recent: SharedRecentLtx,
    /// Per database, the TXID a snapshot sent on this stream already brought the replica to:
    /// files up to it, queued before the snapshot was taken, are already in it.
    covered: BTreeMap<DbName, TxId>,
}

impl Writer {
    async fn send(&self, bytes: Vec<u8>) -> Result<(), SendError> {
        self.frames.send(Bytes::from(bytes)).await.map_err(|_| SendError::Gone)
    }

    async fn send_ltx(&self, db: &DbName, file: &[u8], max: TxId) -> Result<(), SendError> {
        let mut out = Vec::with_capacity(file.len() + file.len() / MAX_CHUNK_SIZE * 2 + 64);
        encode_ltx_message(db, file, max, &mut out);
        self.send(out).await
    }

    async fn carry_out(&mut self, cmd: DownstreamCmd) -> Result<(), SendError> {
        match cmd {
            DownstreamCmd::Bytes(bytes) => self.send(bytes).await,
            DownstreamCmd::Ltx { db, min, max } => {
                if self.covered.get(&db).is_some_and(|&c| max <= c) {
                    return Ok(());
                }
                // A commit the driver wrote a moment ago is still in memory; an older file
                // (a replica catching up) is read from disk.
                let recent = lock(&self.recent).get(&db, min, max);
                if let Some(file) = recent {
                    return self.send_ltx(&db, &file, max).await;
                }
                let storage = Arc::clone(&self.storage);
                let name = db.clone();
                let file = tokio::task::spawn_blocking(move || storage.read_ltx(&name, min, max))
                    .await
                    .map_err(|e| SendError::Read { what: "an LTX file", source: std::io::Error::other(e) })?
                    .map_err(|source| SendError::Read { what: "an LTX file", source })?;
                self.send_ltx(&db, &file, max).await
            }
            DownstreamCmd::Snapshot { db, pos } => self.snapshot(db, pos).await,
        }
    }

    /// Takes a consistent copy of the committed database, names its position, and encodes
    /// it as a snapshot LTX file straight into the stream in chunks: memory stays bounded
    /// whatever the size. The copy is handed over page by page while the database is locked
    /// (decision 0010), so sending starts at once and no copy is written to disk, unless the
    /// replica is too slow to take it within [`STREAM_UNDER_LOCKS_MAX`] (the rest is then
    /// spilled to a file) or a writer is in the way (the copy is then a file, as before).
    async fn snapshot(&mut self, db: DbName, asked_at: Pos) -> Result<(), SendError> {
        let (begin_tx, begin_rx) = oneshot::channel();
        let (pieces_tx, pieces_rx) = std::sync::mpsc::sync_channel(COPY_PIECES_QUEUED);
        let storage = Arc::clone(&self.storage);
        let name = db.clone();
        let copy = tokio::task::spawn_blocking(move || -> Result<Streamed, SendError> {
            let read = |source| SendError::Read { what: "the database", source };
            let spill_storage = Arc::clone(&storage);
            let make_spill = Box::new(move || spill_storage.spill_file());
            let mut sink =
                StreamSink { begin: Some(begin_tx), pieces: pieces_tx, since: None, spill: None, make_spill };
            let streamed = storage.stream_committed(&name, &mut sink).map_err(read)?;
            sink.finish().map_err(|source| SendError::Read { what: "the spilled database copy", source })?;
            Ok(streamed)
        });
        let joined = |r: Result<Result<Streamed, SendError>, tokio::task::JoinError>| {
            r.map_err(|e| SendError::Read { what: "the database", source: std::io::Error::other(e) })?
        };
        let (source, checksum, copy) = match begin_rx.await {
            Ok(begun) => (Source::Pieces(pieces_rx, begun), begun.2, Some(copy)),
            Err(_) => {
                // No pages were handed over: the copy went to a file, or failed.
                drop(pieces_rx);
                match joined(copy.await)? {
                    Streamed::File(image) => {
                        let checksum = Some(image.checksum);
                        (Source::File(image), checksum, None)
                    }
                    Streamed::Sink => return Err(SendError::UnknownPosition),
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let _ = self.positions.send(PositionQuery { db: db.clone(), checksum, reply });
        // Dropping `source` (the pieces' receiver) makes a copy still running stop.
        let pos = answer.await.ok().flatten().ok_or(SendError::UnknownPosition)?;
        debug_assert!(pos.txid >= asked_at.txid, "a copy cannot be older than the position it was asked at");

        let mut head = Vec::new();
        encode_frame(&Frame::Ltx { size: 0, name: db.clone() }, &mut head);
        self.send(head).await?;
        // Encoded straight into the stream, chunk by chunk: no temporary LTX file is written
        // and read back, and encoding overlaps sending. The database size stands in for the
        // total in progress reports (the encoded size is known only at the end).
        let total = source.size();
        let (chunks_tx, mut chunks) = mpsc::channel::<Vec<u8>>(SNAPSHOT_CHUNKS_QUEUED);
        let name = db.clone();
        let encoder = tokio::task::spawn_blocking(move || -> Result<u64, SendError> {
            let read = |source| SendError::Read { what: "the database copy", source };
            let (reader, size, compress): (Box<dyn std::io::Read + Send>, u64, bool) = match source {
                Source::File(image) => {
                    let mut file = std::fs::File::open(image.file.path()).map_err(read)?;
                    let size = file.metadata().map_err(read)?.len();
                    let compress = worth_compressing(&mut file).map_err(read)?;
                    (
                        Box::new(FileSource {
                            _image: image,
                            file: BufReader::with_capacity(SNAPSHOT_READ_BUFFER_BYTES, file),
                        }),
                        size,
                        compress,
                    )
                }
                Source::Pieces(pieces, (page_size, pages, _)) => {
                    let mut reader = PiecesReader { pieces, piece: Vec::new(), at: 0, spilled: None };
                    let compress = reader.first_piece_compresses_well().map_err(read)?;
                    (Box::new(reader), u64::from(pages) * u64::from(page_size.get()), compress)
                }
            };
            debug!(db = %name, compress, "encoding a snapshot into the stream");
            let options = SnapshotOptions { max_txid: pos.txid, timestamp_ms: now_ms(), compress };
            let out = ChunkWriter::new(chunks_tx);
            let (mut out, _, trailer) = encode_database(reader, size, out, options)?;
            // The last chunk, which holds the trailer, leaves only if the pages encoded are
            // at the position the header names: a replica must never get a file that claims
            // a TXID its pages are not at.
            if trailer.post_apply_checksum != pos.checksum {
                return Err(SendError::Changed { announced: pos.checksum, encoded: trailer.post_apply_checksum });
            }
            out.flush_chunk().map_err(|source| SendError::Read { what: "the snapshot", source })?;
            Ok(out.written)
        });
        let started = std::time::Instant::now();
        let mut last_report = started;
        let mut sent = 0u64;
        let mut gone = None;
        // Bounded: the encoder produces a finite file and then drops its sender.
        while let Some(chunk) = chunks.recv().await {
            sent += chunk.len().saturating_sub(2) as u64;
            if let Err(e) = self.send(chunk).await {
                gone = Some(e);
                break;
            }
            self.transfers.update(self.conn, &db, sent, total.max(sent));
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = std::time::Instant::now();
                info!(%db, sent, total, secs = started.elapsed().as_secs(), "sending snapshot");
            }
        }
        // Dropping the receiver stops an encoder still running (its next send fails), and
        // the encoder's end stops a copy still handing pages over.
        drop(chunks);
        let encoded = encoder.await;
        let copied = match copy {
            Some(copy) => Some(joined(copy.await)),
            None => None,
        };
        self.transfers.finish(self.conn);
        if let Some(e) = gone {
            return Err(e);
        }
        let total =
            encoded.map_err(|e| SendError::Read { what: "the database copy", source: std::io::Error::other(e) })??;
        if let Some(copied) = copied {
            copied?;
        }
        self.send(0u16.to_be_bytes().to_vec()).await?;
        let mut tail = Vec::new();
        encode_frame(&Frame::Hwm { txid: pos.txid, name: db.clone() }, &mut tail);
        self.send(tail).await?;
        info!(%db, txid = %pos.txid, bytes = total, "snapshot sent");
        self.covered.insert(db, pos.txid);
        Ok(())
    }
}

/// What a snapshot is encoded from.
enum Source {
    /// A copy in a file.
    File(DatabaseImage),
    /// Pages handed over by the copy as it reads them: page size, pages, checksum.
    Pieces(Receiver<Piece>, (PageSize, u32, Option<Checksum>)),
}

impl Source {
    /// The database's size in bytes (0 if unknown).
    fn size(&self) -> u64 {
        match self {
            Source::File(image) => image.file.as_file().metadata().map(|m| m.len()).unwrap_or(0),
            Source::Pieces(_, (page_size, pages, _)) => u64::from(*pages) * u64::from(page_size.get()),
        }
    }
}

/// A copy in a file, read through a buffer; the file is deleted once encoded.
struct FileSource {
    _image: DatabaseImage,
    file: BufReader<std::fs::File>,
}

impl std::io::Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

/// Longest a snapshot keeps the database locked to hand its pages straight to a replica:
/// writers wait for the copy (rollback journal mode), and before decision 0010 a copy of
/// 1 GiB held them about that long while it was written to a file. Past it, the rest of the
/// copy is spilled to a file at disk speed and sent from there.
const STREAM_UNDER_LOCKS_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the copy sleeps when the encoder is behind, before it looks again.
const PIECE_SEND_POLL: std::time::Duration = std::time::Duration::from_micros(200);

/// Runs of pages (up to 1 MiB each) queued between the copy and the encoder.
const COPY_PIECES_QUEUED: usize = 8;

/// What the copy hands the encoder.
enum Piece {
    /// The next pages.
    Bytes(Vec<u8>),
    /// The rest of the pages, in a file (the last piece).
    Spilled(NamedTempFile),
}

/// The copy's end of a snapshot streamed from the locked database: announces the checksum,
/// then hands runs of pages to the encoder, or spills them once the encoder has been behind
/// for too long.
struct StreamSink {
    begin: Option<oneshot::Sender<(PageSize, u32, Option<Checksum>)>>,
    pieces: SyncSender<Piece>,
    /// When the copy announced itself (it holds the locks from a moment before).
    since: Option<std::time::Instant>,
    spill: Option<(NamedTempFile, DirectWriter, u64)>,
    make_spill: Box<dyn FnMut() -> std::io::Result<NamedTempFile> + Send>,
}

impl CopySink for StreamSink {
    fn begin(&mut self, page_size: PageSize, pages: u32, checksum: Option<Checksum>) -> std::io::Result<()> {
        self.since = Some(std::time::Instant::now());
        let begin = self.begin.take().ok_or_else(|| std::io::Error::other("a copy announced itself twice"))?;
        begin.send((page_size, pages, checksum)).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    fn pages(&mut self, _first: Pgno, bytes: &[u8]) -> std::io::Result<()> {
        if let Some((_, writer, written)) = &mut self.spill {
            writer.write_at(*written, bytes)?;
            *written += bytes.len() as u64;
            return Ok(());
        }
        let mut piece = Piece::Bytes(bytes.to_vec());
        // Bounded: each pass hands the piece over, fails, or sleeps; past the time limit the
        // piece is spilled instead.
        loop {
            match self.pieces.try_send(piece) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => return Err(std::io::ErrorKind::BrokenPipe.into()),
                Err(TrySendError::Full(back)) => piece = back,
            }
            if self.since.is_some_and(|since| since.elapsed() >= STREAM_UNDER_LOCKS_MAX) {
                let file = (self.make_spill)()?;
                let writer = DirectWriter::new(file.as_file().try_clone()?)?;
                debug!("the replica is slower than the copy: spilling the rest of the snapshot");
                self.spill = Some((file, writer, 0));
                return self.pages(_first, bytes);
            }
            std::thread::sleep(PIECE_SEND_POLL);
        }
    }
}

impl StreamSink {
    /// After the copy: the spilled rest, if any, becomes the last piece.
    fn finish(mut self) -> std::io::Result<()> {
        if let Some((file, writer, written)) = self.spill.take() {
            writer.finish(written)?;
            // The encoder may have stopped (the replica went away): nothing to hand over then.
            let _ = self.pieces.send(Piece::Spilled(file));
        }
        Ok(())
    }
}

/// The encoder's end: the pages as one byte stream, from the pieces and then the spill.
struct PiecesReader {
    pieces: Receiver<Piece>,
    piece: Vec<u8>,
    at: usize,
    spilled: Option<(NamedTempFile, DirectReader)>,
}

impl PiecesReader {
    /// Whether LZ4 pays on this database, judged by its first piece (up to 1 MiB, see
    /// [`worth_compressing`] for why it matters); the piece stays to be read.
    fn first_piece_compresses_well(&mut self) -> std::io::Result<bool> {
        debug_assert!(self.piece.is_empty() && self.spilled.is_none(), "asked before the first read");
        match self.pieces.recv() {
            Ok(Piece::Bytes(bytes)) => {
                self.piece = bytes;
                self.at = 0;
                let sample = &self.piece[..self.piece.len().min(COMPRESSION_SAMPLE_BYTES)];
                Ok(replite_core::ltx::compresses_well(sample))
            }
            Ok(Piece::Spilled(file)) => {
                // Everything was spilled (the encoder started late): sent as it is.
                let reader = DirectReader::new(file.reopen()?);
                self.spilled = Some((file, reader));
                Ok(false)
            }
            // The copy failed: the encoder finds the pages short.
            Err(_) => Ok(false),
        }
    }
}

impl std::io::Read for PiecesReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some((_, spilled)) = &mut self.spilled {
            return spilled.read(buf);
        }
        // Bounded: each pass takes a piece or ends; an empty piece is skipped.
        while self.at == self.piece.len() {
            match self.pieces.recv() {
                Ok(Piece::Bytes(bytes)) => {
                    self.piece = bytes;
                    self.at = 0;
                }
                Ok(Piece::Spilled(file)) => {
                    let reader = DirectReader::new(file.reopen()?);
                    let (_, spilled) = self.spilled.insert((file, reader));
                    return spilled.read(buf);
                }
                // The copy ended (or failed: the encoder then finds the pages short).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Encoded chunks queued between the encoding thread and the stream: about 1 MiB.
const SNAPSHOT_CHUNKS_QUEUED: usize = 16;

/// Read buffer for the database copy being encoded.
const SNAPSHOT_READ_BUFFER_BYTES: usize = 1 << 20;

/// Bytes of the database sampled to decide whether LZ4 is worth running on a snapshot.
const COMPRESSION_SAMPLE_BYTES: usize = 1 << 20;

/// Whether LZ4 shrinks a sample of the database enough to pay for itself: LZ4 in LTX v1 is
/// all or nothing per file, and pages of random or already-compressed data only cost CPU on
/// both ends. The sample is taken evenly through the file; the reader is left at its start.
fn worth_compressing(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let size = file.metadata()?.len();
    let pieces = 16u64;
    let piece = (COMPRESSION_SAMPLE_BYTES as u64 / pieces) as usize;
    let mut sample = Vec::with_capacity(COMPRESSION_SAMPLE_BYTES);
    let mut buf = vec![0u8; piece];
    for i in 0..pieces {
        let offset = size / pieces * i;
        let n = file.read_at(&mut buf, offset)?;
        sample.extend_from_slice(&buf[..n]);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(replite_core::ltx::compresses_well(&sample))
}

/// Cuts what the snapshot encoder writes into stream chunks (u16 length + bytes) and hands
/// each to the sending task; a failed hand-over (the replica went away) fails the write.
/// Each chunk is built behind room for its length, so it leaves without another copy.
struct ChunkWriter {
    /// Two bytes for the length, then the chunk's payload.
    chunk: Vec<u8>,
    chunks: mpsc::Sender<Vec<u8>>,
    /// Payload bytes handed over.
    written: u64,
}

/// Bytes of a chunk's length prefix.
const CHUNK_PREFIX_BYTES: usize = 2;

impl ChunkWriter {
    fn new(chunks: mpsc::Sender<Vec<u8>>) -> ChunkWriter {
        ChunkWriter { chunk: ChunkWriter::empty_chunk(), chunks, written: 0 }
    }

    fn empty_chunk() -> Vec<u8> {
        let mut chunk = Vec::with_capacity(CHUNK_PREFIX_BYTES + MAX_CHUNK_SIZE);
        chunk.extend_from_slice(&[0; CHUNK_PREFIX_BYTES]);
        chunk
    }

    fn payload_len(&self) -> usize {
        self.chunk.len() - CHUNK_PREFIX_BYTES
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        let n = self.payload_len();
        if n == 0 {
            return Ok(());
        }
        // A chunk never exceeds MAX_CHUNK_SIZE (u16::MAX), so the cast is exact.
        self.chunk[..CHUNK_PREFIX_BYTES].copy_from_slice(&(n as u16).to_be_bytes());
        let out = std::mem::replace(&mut self.chunk, ChunkWriter::empty_chunk());
        self.chunks.blocking_send(out).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        self.written += n as u64;
        Ok(())
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A full chunk leaves only when more follows: the last one (with the trailer) stays
        // until `flush_chunk`, after the caller checked what it encoded.
        if self.payload_len() == MAX_CHUNK_SIZE {
            self.flush_chunk()?;
        }
        let n = buf.len().min(MAX_CHUNK_SIZE - self.payload_len());
        self.chunk.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
    }

    #[test]
    fn chunks_carry_their_length_and_the_last_one_waits_for_flush_chunk() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut writer = ChunkWriter::new(tx);
        let bytes = pattern(2 * MAX_CHUNK_SIZE, 1);
        writer.write_all(&bytes).expect("write");
        // Two full chunks written, but the second stays until more comes or it is flushed.
        let first = rx.try_recv().expect("the first chunk left");
        assert!(rx.try_recv().is_err(), "the last chunk waits");
        writer.flush_chunk().expect("flush");
        let second = rx.try_recv().expect("the last chunk left");
        let mut payload = Vec::new();
        for chunk in [first, second] {
            let len = usize::from(u16::from_be_bytes([chunk[0], chunk[1]]));
            assert_eq!(len, chunk.len() - 2, "the prefix is the payload's length");
            payload.extend_from_slice(&chunk[2..]);
        }
        assert_eq!(payload, bytes);
        assert_eq!(writer.written, bytes.len() as u64);
        writer.flush_chunk().expect("nothing to flush");
        assert!(rx.try_recv().is_err(), "no empty chunk");
    }

    /// A copy whose encoder falls behind past the time limit spills the rest, and the
    /// encoder reads every page in order: the queued ones, then the spill.
    #[test]
    fn a_copy_the_encoder_cannot_keep_up_with_spills_the_rest_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (begin_tx, begin_rx) = oneshot::channel();
        let (pieces_tx, pieces_rx) = std::sync::mpsc::sync_channel(2);
        let spill_dir = dir.path().to_path_buf();
        let mut sink = StreamSink {
            begin: Some(begin_tx),
            pieces: pieces_tx,
            since: None,
            spill: None,
            make_spill: Box::new(move || NamedTempFile::new_in(&spill_dir)),
        };
        let page_size = PageSize::new(4096).expect("valid");
        let runs: Vec<Vec<u8>> = (0..6u8).map(|i| pattern(256 * 4096, i)).collect();
        sink.begin(page_size, 6 * 256, Some(Checksum(Checksum::FLAG | 1))).expect("begin");
        assert_eq!(begin_rx.blocking_recv().expect("announced").1, 6 * 256);
        // The locks were taken long ago: once the queue is full, the rest is spilled.
        sink.since = Some(Instant::now() - STREAM_UNDER_LOCKS_MAX - Duration::from_millis(1));
        for (i, run) in runs.iter().enumerate() {
            sink.pages(Pgno(1 + 256 * i as u32), run).expect("handed on or spilled");
        }
        assert!(sink.spill.is_some(), "the rest was spilled");
        // The encoder reads as the copy finishes (the spill waits for room in the queue).
        let encoder = std::thread::spawn(move || {
            let mut reader = PiecesReader { pieces: pieces_rx, piece: Vec::new(), at: 0, spilled: None };
            let compress = reader.first_piece_compresses_well().expect("first piece");
            let mut read = Vec::new();
            reader.read_to_end(&mut read).expect("read");
            (compress, read)
        });
        sink.finish().expect("finish");
        let (compress, read) = encoder.join().expect("encoder thread");
        assert!(compress, "judged by the first piece, which repeats every 256 bytes");
        assert!(read == runs.concat(), "every page, in order");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0, "the spill file is gone");
    }
}
