//! One task per replica stream: carries out that stream's outputs in the order the Node
//! emitted them (frames, LTX files read from disk, snapshots copied from the database), so a
//! slow disk read or a slow replica never holds up the driver loop or another replica.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::sync::Arc;

use bytes::Bytes;
use replite_core::ltx::{SnapshotOptions, encode_database};
use replite_core::node::DownstreamId;
use replite_core::stream::{DbName, Frame, MAX_CHUNK_SIZE, encode_frame, encode_ltx_message};
use replite_core::{Pos, TxId};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::driver::storage::Storage;

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
/// checksum (the copy may include commits acknowledged after the Node asked for it).
#[derive(Debug)]
pub struct PositionQuery {
    /// The database.
    pub db: DbName,
    /// The checksum of the copy.
    pub checksum: replite_core::Checksum,
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
}

/// Runs one replica's stream until the driver drops `cmds` (after its last command is sent)
/// or the replica goes away; then `closed` is told, so the Node forgets the stream.
pub async fn run_downstream(
    conn: DownstreamId,
    mut cmds: mpsc::UnboundedReceiver<DownstreamCmd>,
    frames: mpsc::Sender<Bytes>,
    storage: Arc<dyn Storage>,
    positions: mpsc::UnboundedSender<PositionQuery>,
    closed: mpsc::UnboundedSender<DownstreamId>,
    transfers: Transfers,
) {
    let mut writer = Writer { conn, transfers, frames, storage, positions, covered: BTreeMap::new() };
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
    /// Per database, the TXID a snapshot sent on this stream already brought the replica to:
    /// files up to it, queued before the snapshot was taken, are already in it.
    covered: BTreeMap<DbName, TxId>,
}

impl Writer {
    async fn send(&self, bytes: Vec<u8>) -> Result<(), SendError> {
        self.frames.send(Bytes::from(bytes)).await.map_err(|_| SendError::Gone)
    }

    async fn carry_out(&mut self, cmd: DownstreamCmd) -> Result<(), SendError> {
        match cmd {
            DownstreamCmd::Bytes(bytes) => self.send(bytes).await,
            DownstreamCmd::Ltx { db, min, max } => {
                if self.covered.get(&db).is_some_and(|&c| max <= c) {
                    return Ok(());
                }
                let storage = Arc::clone(&self.storage);
                let name = db.clone();
                let file = tokio::task::spawn_blocking(move || storage.read_ltx(&name, min, max))
                    .await
                    .map_err(|e| SendError::Read { what: "an LTX file", source: std::io::Error::other(e) })?
                    .map_err(|source| SendError::Read { what: "an LTX file", source })?;
                let mut out = Vec::with_capacity(file.len() + file.len() / MAX_CHUNK_SIZE * 2 + 64);
                encode_ltx_message(&db, &file, max, &mut out);
                self.send(out).await
            }
            DownstreamCmd::Snapshot { db, pos } => self.snapshot(db, pos).await,
        }
    }

    /// Copies the committed database, names its position, and encodes it as a snapshot LTX
    /// file straight into the stream in chunks: memory stays bounded whatever the size.
    async fn snapshot(&mut self, db: DbName, asked_at: Pos) -> Result<(), SendError> {
        let storage = Arc::clone(&self.storage);
        let name = db.clone();
        let image = tokio::task::spawn_blocking(move || storage.copy_committed(&name))
            .await
            .map_err(|e| SendError::Read { what: "the database", source: std::io::Error::other(e) })?
            .map_err(|source| SendError::Read { what: "the database", source })?;
        let (reply, answer) = oneshot::channel();
        let _ = self.positions.send(PositionQuery { db: db.clone(), checksum: image.checksum, reply });
        let pos = answer.await.ok().flatten().ok_or(SendError::UnknownPosition)?;
        debug_assert!(pos.txid >= asked_at.txid, "a copy cannot be older than the position it was asked at");

        let mut head = Vec::new();
        encode_frame(&Frame::Ltx { size: 0, name: db.clone() }, &mut head);
        self.send(head).await?;
        // Encoded straight into the stream, chunk by chunk: no temporary LTX file is written
        // and read back, and encoding overlaps sending. The database size stands in for the
        // total in progress reports (the encoded size is known only at the end).
        let total = image.file.as_file().metadata().map(|m| m.len()).unwrap_or(0);
        let (chunks_tx, mut chunks) = mpsc::channel::<Vec<u8>>(SNAPSHOT_CHUNKS_QUEUED);
        let name = db.clone();
        let encoder = tokio::task::spawn_blocking(move || -> Result<u64, SendError> {
            let read = |source| SendError::Read { what: "the database copy", source };
            let mut source = std::fs::File::open(image.file.path()).map_err(read)?;
            let size = source.metadata().map_err(read)?.len();
            let compress = worth_compressing(&mut source).map_err(read)?;
            debug!(db = %name, compress, "encoding a snapshot into the stream");
            let options = SnapshotOptions { max_txid: pos.txid, timestamp_ms: now_ms(), compress };
            let out = ChunkWriter { chunk: Vec::with_capacity(MAX_CHUNK_SIZE + 2), chunks: chunks_tx, written: 0 };
            let reader = BufReader::with_capacity(SNAPSHOT_READ_BUFFER_BYTES, source);
            let (mut out, _, _) = encode_database(reader, size, out, options)?;
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
        // Dropping the receiver stops an encoder still running (its next send fails).
        drop(chunks);
        let encoded = encoder.await;
        self.transfers.finish(self.conn);
        if let Some(e) = gone {
            return Err(e);
        }
        let total =
            encoded.map_err(|e| SendError::Read { what: "the database copy", source: std::io::Error::other(e) })??;
        self.send(0u16.to_be_bytes().to_vec()).await?;
        let mut tail = Vec::new();
        encode_frame(&Frame::Hwm { txid: pos.txid, name: db.clone() }, &mut tail);
        self.send(tail).await?;
        info!(%db, txid = %pos.txid, bytes = total, "snapshot sent");
        self.covered.insert(db, pos.txid);
        Ok(())
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
struct ChunkWriter {
    chunk: Vec<u8>,
    chunks: mpsc::Sender<Vec<u8>>,
    /// Payload bytes handed over.
    written: u64,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let n = self.chunk.len();
        let mut out = Vec::with_capacity(n + 2);
        // A chunk never exceeds MAX_CHUNK_SIZE (u16::MAX), so the cast is exact.
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.append(&mut self.chunk);
        self.chunks.blocking_send(out).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        self.written += n as u64;
        Ok(())
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK_SIZE - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == MAX_CHUNK_SIZE {
            self.flush_chunk()?;
        }
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
