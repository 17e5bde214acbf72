//! `GET /export?name=DB` and `POST /import?name=DB`, LiteFS's paths and query: copy a database
//! out of the mount, or replace one in it.
//!
//! Both go through the mount as an ordinary SQLite client would, with SQLite's online backup
//! API, so they need nothing from the Node: an export is one read transaction (a consistent
//! copy on any node), an import is one write transaction that replite captures, gives the next
//! TXID and replicates like any other. On a replica the mount refuses writes; the handler
//! refuses an import there before reading the upload, naming the primary.
//!
//! Both stage the database in a temporary file outside the mount (the system's temporary
//! directory; `TMPDIR` moves it), so memory stays bounded whatever the database's size.
//! An import keeps the destination's journal mode and page size: the upload is converted to
//! rollback-journal mode (so its header cannot switch the destination to WAL) and, when the
//! destination exists with another page size, rebuilt at that page size first (a WAL-mode
//! destination cannot change page size, and replite's history keeps one page size).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use bytes::Bytes;
use futures_util::StreamExt;
use replite_core::Pos;
use replite_core::stream::DbName;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::driver::{Peer, Status};

/// Largest upload `/import` accepts. The upload is staged on the temporary directory's disk
/// before it is checked, so an unbounded body could fill that disk; 64 GiB is well past the
/// databases LiteFS and replite are used for (LiteFS's docs speak of a few to tens of GB).
pub const MAX_IMPORT_BYTES: u64 = 64 << 30;

/// Bytes read from the staged export per response chunk: large enough that per-chunk
/// overhead vanishes, small enough that a slow client holds little memory.
const EXPORT_CHUNK_BYTES: usize = 64 * 1024;

/// How long SQLite waits for other connections' locks before a backup step reports busy. An
/// application's write transaction holds the lock for milliseconds; a long one may hold it
/// for seconds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Backup steps retried while the database stays locked, each after SQLite's own
/// [`BUSY_TIMEOUT`] wait: together about half a minute before the request fails with 503.
const BUSY_RETRIES: u32 = 6;

/// Pause before retrying a busy backup step: SQLite has already waited [`BUSY_TIMEOUT`];
/// this only keeps a lock held by this very process (which SQLite reports at once) from
/// turning the retries into a spin.
const BUSY_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long an import waits for `<db>-pos` to show the new position. The daemon publishes it
/// in the same step that acknowledges the commit, microseconds after the backup's last write
/// returns; half a second covers a loaded machine many times over.
const POS_PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// How often `<db>-pos` is re-read while waiting for the new position.
const POS_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How many of `PRAGMA integrity_check`'s problems an import refusal quotes: the first few
/// say what is wrong; a badly damaged file can list thousands.
const INTEGRITY_PROBLEMS_SHOWN: u32 = 5;

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Names the mount keeps for a database's side files; a database cannot have one of them.
const SIDE_FILE_SUFFIXES: [&str; 4] = ["-journal", "-wal", "-shm", "-pos"];

/// What `POST /import` answers (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// The database's name.
    pub name: String,
    /// Bytes received.
    pub bytes: u64,
    /// The database's position after the import (`%016x/%016x`): what `<db>-pos` shows once
    /// it has moved past the position before the copy (so an application's commit racing the
    /// import can be the one shown); absent when there is no such file (not a replite mount).
    pub position: Option<String>,
}

/// Why an import or export failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// `name` is missing from the query.
    #[error("name is required")]
    NameMissing,
    /// `name` is not a database name.
    #[error("database name {name:?} is invalid: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such database in the mount.
    #[error("database {name:?} does not exist")]
    NotFound {
        /// The name given.
        name: String,
    },
    /// This node may not write; imports go to the primary.
    #[error("this node is {role}, not the primary: {}", primary_hint(.primary.as_ref()))]
    NotPrimary {
        /// This node's role.
        role: String,
        /// The primary, when known.
        primary: Option<Peer>,
    },
    /// The upload is over [`MAX_IMPORT_BYTES`].
    #[error("the upload is larger than the import limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The upload is not a SQLite database.
    #[error("the upload is not a SQLite database: {reason}")]
    NotSqlite {
        /// Why not.
        reason: String,
    },
    /// The upload is a SQLite database that fails `PRAGMA integrity_check`.
    #[error("the upload fails SQLite's integrity check: {problems}")]
    Integrity {
        /// The first problems SQLite reported, joined with "; ".
        problems: String,
    },
    /// Other connections kept the database locked.
    #[error("database {name:?} stayed locked by other connections; try again")]
    Busy {
        /// The database.
        name: String,
    },
    /// The request body could not be read (the client went away, or sent a broken body).
    #[error("reading the request body: {source}")]
    Body {
        /// Why.
        #[source]
        source: axum::Error,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// SQLite failed.
    #[error("{what} {}: {source}", path.display())]
    Sqlite {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The blocking task doing the copy panicked or was cancelled.
    #[error("the copy task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl TransferError {
    /// The HTTP status this error answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            TransferError::NameMissing
            | TransferError::BadName { .. }
            | TransferError::NotSqlite { .. }
            | TransferError::Integrity { .. }
            | TransferError::Body { .. } => StatusCode::BAD_REQUEST,
            TransferError::NotFound { .. } => StatusCode::NOT_FOUND,
            TransferError::NotPrimary { .. } => StatusCode::CONFLICT,
            TransferError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TransferError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            TransferError::Io { .. } | TransferError::Sqlite { .. } | TransferError::Task(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TransferError {
        let path = path.to_path_buf();
        move |source| TransferError::Io { what, path, source }
    }

    fn sqlite(what: &'static str, path: &Path) -> impl FnOnce(rusqlite::Error) -> TransferError {
        let path = path.to_path_buf();
        move |source| TransferError::Sqlite { what, path, source }
    }
}

impl IntoResponse for TransferError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            warn!(error = %self, "import/export failed");
        }
        (status, format!("{self}\n")).into_response()
    }
}

fn primary_hint(primary: Option<&Peer>) -> String {
    match primary {
        Some(p) => format!("import on the primary, {} ({})", p.hostname, p.advertise_url),
        None => "no primary is known right now".to_owned(),
    }
}

#[derive(Clone)]
struct Transfer {
    mount_dir: Arc<PathBuf>,
    status: watch::Receiver<Status>,
}

#[derive(Deserialize)]
struct NameQuery {
    name: Option<String>,
}

/// The routes `GET /export` and `POST /import` over the databases in `mount_dir`; `status`
/// says whether this node is the primary (imports are refused elsewhere).
pub fn routes(mount_dir: PathBuf, status: watch::Receiver<Status>) -> Router {
    Router::new()
        .route("/export", routing::get(export))
        .route("/import", routing::post(import))
        .with_state(Transfer { mount_dir: Arc::new(mount_dir), status })
}

/// Checks a database name: one path component (core's rule, shared with the stream) that is
/// not one of the mount's side files.
fn database_name(query: Result<Query<NameQuery>, QueryRejection>) -> Result<DbName, TransferError> {
    let name = query.ok().and_then(|Query(q)| q.name).ok_or(TransferError::NameMissing)?;
    let db = DbName::new(&name).map_err(|e| TransferError::BadName { name: name.clone(), reason: e.to_string() })?;
    if let Some(suffix) = SIDE_FILE_SUFFIXES.iter().find(|s| name.ends_with(*s)) {
        return Err(TransferError::BadName {
            name,
            reason: format!("names ending in {suffix:?} are SQLite's or replite's side files"),
        });
    }
    if name == replite_fuse::PRIMARY_FILENAME || name == replite_fuse::LAG_FILENAME {
        return Err(TransferError::BadName { name, reason: "the mount's own status file".to_owned() });
    }
    Ok(db)
}

async fn export(State(t): State<Transfer>, query: Result<Query<NameQuery>, QueryRejection>) -> Response {
    match export_response(&t, query).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn export_response(
    t: &Transfer,
    query: Result<Query<NameQuery>, QueryRejection>,
) -> Result<Response, TransferError> {
    let db = database_name(query)?;
    let path = t.mount_dir.join(db.as_str());
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(TransferError::NotFound { name: db.as_str().to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TransferError::NotFound { name: db.as_str().to_owned() });
        }
        Err(e) => return Err(TransferError::io("reading", &path)(e)),
    }
    let name = db.as_str().to_owned();
    let (file, len) = tokio::task::spawn_blocking(move || snapshot(&path, &name)).await??;
    info!(db = %db.as_str(), bytes = len, "exporting a database");
    let body = Body::from_stream(chunks(tokio::fs::File::from_std(file)));
    Ok((
        [(header::CONTENT_TYPE, "application/vnd.sqlite3".to_owned()), (header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response())
}

/// A consistent copy of the database at `path` in an unnamed temporary file (deleted when
/// closed), and its length: one backup step is one read transaction.
fn snapshot(path: &Path, name: &str) -> Result<(std::fs::File, u64), TransferError> {
    let src = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(TransferError::sqlite("opening", path))?;
    src.busy_timeout(BUSY_TIMEOUT).map_err(TransferError::sqlite("configuring", path))?;
    let staged = tempfile::Builder::new()
        .prefix(".replite-export-")
        .tempfile()
        .map_err(TransferError::io("creating a temporary file for", path))?;
    let mut dst = Connection::open(staged.path()).map_err(TransferError::sqlite("opening", staged.path()))?;
    // The copy is thrown away if anything fails, so it needs no journal.
    dst.query_row("PRAGMA journal_mode = OFF", [], |_| Ok(()))
        .map_err(TransferError::sqlite("configuring", staged.path()))?;
    copy_database(&src, &mut dst, name, path)?;
    drop(dst);
    let file = staged.reopen().map_err(TransferError::io("reopening", staged.path()))?;
    let len = file.metadata().map_err(TransferError::io("reading", staged.path()))?.len();
    // Unlinks the name; the open file stays readable until the response is sent.
    drop(staged);
    Ok((file, len))
}

/// The file's bytes in chunks of [`EXPORT_CHUNK_BYTES`], ending at its end or first error.
fn chunks(file: tokio::fs::File) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0; EXPORT_CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Copies every page of `src` into `dst` in one backup step, so in one read transaction on
/// `src` and one write transaction on `dst`, retrying while either is locked.
fn copy_database(src: &Connection, dst: &mut Connection, name: &str, path: &Path) -> Result<(), TransferError> {
    let backup = Backup::new(src, dst).map_err(TransferError::sqlite("starting a backup of", path))?;
    for _ in 0..=BUSY_RETRIES {
        match backup.step(-1).map_err(TransferError::sqlite("copying", path))? {
            StepResult::Done => return Ok(()),
            // Busy or Locked: retry. (-1 copies every page in one step, so More cannot come;
            // were it to, another step continues where this one stopped.)
            _ => std::thread::sleep(BUSY_RETRY_PAUSE),
        }
    }
    Err(TransferError::Busy { name: name.to_owned() })
}

async fn import(
    State(t): State<Transfer>,
    query: Result<Query<NameQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match import_database(&t, query, &headers, body).await {
        Ok(imported) => axum::Json(imported).into_response(),
        Err(e) => e.into_response(),
    }
}

fn require_primary(status: &watch::Receiver<Status>) -> Result<(), TransferError> {
    let status = status.borrow();
    if status.role == "primary" {
        return Ok(());
    }
    Err(TransferError::NotPrimary { role: status.role.clone(), primary: status.primary.clone() })
}

async fn import_database(
    t: &Transfer,
    query: Result<Query<NameQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Imported, TransferError> {
    let db = database_name(query)?;
    require_primary(&t.status)?;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_IMPORT_BYTES) {
        return Err(TransferError::TooLarge { limit: MAX_IMPORT_BYTES });
    }
    let staged = tempfile::Builder::new().prefix(".replite-import-").tempfile().map_err(|source| {
        TransferError::Io { what: "creating a temporary file", path: std::env::temp_dir(), source }
    })?;
    let bytes = receive(body, staged.path()).await?;
    let path = t.mount_dir.join(db.as_str());
    let pos_path = t.mount_dir.join(format!("{}-pos", db.as_str()));
    let before = read_pos(&pos_path).await;
    // The role may have changed during a long upload.
    require_primary(&t.status)?;
    let name = db.as_str().to_owned();
    let copied = tokio::task::spawn_blocking(move || replace_database(staged.path(), &path, &name)).await?;
    match copied {
        Err(TransferError::Sqlite { source, .. }) if source.sqlite_error_code() == Some(ErrorCode::ReadOnly) => {
            // The mount refused the write: this node stopped being primary meanwhile.
            let status = t.status.borrow();
            return Err(TransferError::NotPrimary { role: status.role.clone(), primary: status.primary.clone() });
        }
        other => other?,
    }
    let position = wait_for_new_pos(&pos_path, before).await.map(|p| p.to_string());
    info!(db = %db.as_str(), bytes, position = ?position, "imported a database");
    Ok(Imported { name: db.as_str().to_owned(), bytes, position })
}

/// Writes the request body to `path`, refusing it past [`MAX_IMPORT_BYTES`]; the byte count.
async fn receive(body: Body, path: &Path) -> Result<u64, TransferError> {
    let mut file =
        tokio::fs::OpenOptions::new().write(true).open(path).await.map_err(TransferError::io("opening", path))?;
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    // Ends with the body; the size check bounds how long a body can be.
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| TransferError::Body { source })?;
        total += chunk.len() as u64;
        if total > MAX_IMPORT_BYTES {
            return Err(TransferError::TooLarge { limit: MAX_IMPORT_BYTES });
        }
        file.write_all(&chunk).await.map_err(TransferError::io("writing", path))?;
    }
    file.flush().await.map_err(TransferError::io("writing", path))?;
    Ok(total)
}

/// Checks the staged upload and copies it over the database at `target` (created if
/// missing) in one write transaction.
fn replace_database(upload: &Path, target: &Path, name: &str) -> Result<(), TransferError> {
    check_header(upload)?;
    let src = Connection::open_with_flags(upload, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| TransferError::NotSqlite { reason: e.to_string() })?;
    check_integrity(&src)?;
    // A WAL-mode header would be copied as is and switch the destination to WAL mode.
    src.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(TransferError::sqlite("switching to rollback-journal mode", upload))?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut dst = Connection::open_with_flags(target, flags).map_err(TransferError::sqlite("opening", target))?;
    dst.busy_timeout(BUSY_TIMEOUT).map_err(TransferError::sqlite("configuring", target))?;
    let existing = std::fs::metadata(target).map_err(TransferError::io("reading", target))?.len() > 0;
    if existing {
        let page_size = |c: &Connection, p: &Path| {
            c.query_row("PRAGMA page_size", [], |r| r.get::<_, u32>(0))
                .map_err(TransferError::sqlite("reading the page size of", p))
        };
        let (want, have) = (page_size(&dst, target)?, page_size(&src, upload)?);
        if want != have {
            src.pragma_update(None, "page_size", want)
                .map_err(TransferError::sqlite("setting the page size of", upload))?;
            src.execute_batch("VACUUM")
                .map_err(TransferError::sqlite("rebuilding at the database's page size", upload))?;
        }
    }
    copy_database(&src, &mut dst, name, target)
}

fn check_header(path: &Path) -> Result<(), TransferError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(TransferError::io("opening", path))?;
    let mut magic = [0; SQLITE_MAGIC.len()];
    let mut filled = 0;
    // At most 16 reads, each of at least one byte, or the file ended.
    while filled < magic.len() {
        match file.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TransferError::io("reading", path)(e)),
        }
    }
    match filled {
        0 => Err(TransferError::NotSqlite { reason: "the upload is empty".to_owned() }),
        n if n < magic.len() || &magic != SQLITE_MAGIC => {
            Err(TransferError::NotSqlite { reason: "it does not start with \"SQLite format 3\"".to_owned() })
        }
        _ => Ok(()),
    }
}

fn check_integrity(conn: &Connection) -> Result<(), TransferError> {
    let not_sqlite = |e: rusqlite::Error| TransferError::NotSqlite { reason: e.to_string() };
    let mut stmt = conn.prepare(&format!("PRAGMA integrity_check({INTEGRITY_PROBLEMS_SHOWN})")).map_err(not_sqlite)?;
    let rows: Vec<String> =
        stmt.query_map([], |r| r.get(0)).map_err(not_sqlite)?.collect::<Result<_, _>>().map_err(not_sqlite)?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    // SQLite heads the list with "*** in database main ***" and may put several problems in
    // one row, one per line; the refusal is one line.
    let problems: Vec<&str> =
        rows.iter().flat_map(|r| r.lines()).filter(|l| !l.is_empty() && !l.starts_with("*** in database")).collect();
    Err(TransferError::Integrity { problems: problems.join("; ") })
}

async fn read_pos(path: &Path) -> Option<Pos> {
    tokio::fs::read_to_string(path).await.ok()?.trim().parse().ok()
}

/// The position `<db>-pos` shows once it differs from `before`, or what it shows after
/// [`POS_PUBLISH_TIMEOUT`].
async fn wait_for_new_pos(path: &Path, before: Option<Pos>) -> Option<Pos> {
    let deadline = Instant::now() + POS_PUBLISH_TIMEOUT;
    let mut now = read_pos(path).await;
    while now == before && Instant::now() < deadline {
        tokio::time::sleep(POS_POLL_INTERVAL).await;
        now = read_pos(path).await;
    }
    now
}
