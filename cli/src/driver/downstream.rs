//! One task per replica stream: carries out that stream's outputs in the order the Node
//! emitted them (frames, LTX files read from disk, snapshots copied from the database), so a
//! slow disk read or a slow replica never holds up the driver loop or another replica.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
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

    /// Copies the committed database, names its position, encodes it as a snapshot LTX file
    /// on disk and streams that file in chunks: memory stays bounded whatever the size.
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

        let encoded = tokio::task::spawn_blocking(move || -> Result<_, SendError> {
            let read = |source| SendError::Read { what: "the database copy", source };
            let source = std::fs::File::open(image.file.path()).map_err(read)?;
            let size = source.metadata().map_err(read)?.len();
            let out = tempfile::NamedTempFile::new_in(image.file.path().parent().unwrap_or(std::path::Path::new(".")))
                .map_err(read)?;
            // LZ4 only if the database's first pages shrink (LTX v1 compresses a whole file
            // or nothing; incompressible pages would only grow and cost a decode).
            let mut sample = vec![0u8; replite_core::ltx::LZ4_SAMPLE_BYTES];
            let sampled = std::os::unix::fs::FileExt::read_at(&source, &mut sample, 0).map_err(read)?;
            let compress = replite_core::ltx::lz4_pays(&sample[..sampled]);
            let options = SnapshotOptions { max_txid: pos.txid, timestamp_ms: now_ms(), compress };
            let (out, _, _) = encode_database(BufReader::new(source), size, std::io::BufWriter::new(out), options)?;
            out.into_inner().map_err(|e| read(e.into_error()))
        })
        .await
        .map_err(|e| SendError::Read { what: "the database copy", source: std::io::Error::other(e) })??;

        let mut head = Vec::new();
        encode_frame(&Frame::Ltx { size: 0, name: db.clone() }, &mut head);
        self.send(head).await?;
        let mut file = encoded.reopen().map_err(|source| SendError::Read { what: "the snapshot", source })?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = vec![0u8; MAX_CHUNK_SIZE];
        let started = std::time::Instant::now();
        let mut last_report = started;
        let mut sent = 0u64;
        let result = loop {
            let n = match read_some(&mut file, &mut buf) {
                Ok(n) => n,
                Err(source) => break Err(SendError::Read { what: "the snapshot", source }),
            };
            let mut chunk = Vec::with_capacity(n + 2);
            chunk.extend_from_slice(&(n as u16).to_be_bytes());
            chunk.extend_from_slice(&buf[..n]);
            if let Err(e) = self.send(chunk).await {
                break Err(e);
            }
            sent += n as u64;
            self.transfers.update(self.conn, &db, sent, total);
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = std::time::Instant::now();
                info!(%db, sent, total, secs = started.elapsed().as_secs(), "sending snapshot");
            }
            if n == 0 {
                break Ok(());
            }
        };
        self.transfers.finish(self.conn);
        result?;
        let mut tail = Vec::new();
        encode_frame(&Frame::Hwm { txid: pos.txid, name: db.clone() }, &mut tail);
        self.send(tail).await?;
        info!(%db, txid = %pos.txid, bytes = total, "snapshot sent");
        self.covered.insert(db, pos.txid);
        Ok(())
    }
}

/// Fills `buf` as far as the file allows (zero at its end).
fn read_some(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
