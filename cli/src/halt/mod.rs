//! LiteFS's halt lock, on the primary: a replica asks the primary to stop its own writers on
//! one database (`POST /halt?name=&id=`), writes transactions locally and sends each as an
//! LTX file (`POST /tx?name=&lockID=`), then lets go (`DELETE /halt?name=&id=`). This is what
//! `litefs run -with-halt-lock-on DB -- CMD` does on a LiteFS replica.
//!
//! Halting takes SQLite's own writer locks through the mount (`replite_fuse::WriterLocks`),
//! so local writers wait in their busy handler as for any other writer; a WAL database is
//! checkpointed first, so its pages are all in the database file. A transaction is committed
//! by the Node as the primary's own (durable, replicated, acknowledged by synchronous
//! replicas) and marked with the replica's id, and only then written into the database file.
//! A halt lock lasts 30 s from its acquisition, as LiteFS's does; asking again with the same
//! id renews it. `docs/decisions/0022-halt-lock.md` has the reasoning.

mod replica;
mod routes;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as sync_mpsc;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use replite_core::ltx;
use replite_core::{NodeId, Pos};
use replite_fuse::{CapturedPage, CapturedTx, Durability, HaltError, JournalMode, Mount, Refusal, WriterLocks};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::driver::{FsRequest, HaltLockStatus, Status};

pub use replica::{LocalHalt, ReplicaHalts};
pub use routes::routes;

/// How long a halt lock lasts without being renewed (LiteFS's `HaltLockTTL`).
pub const HALT_LOCK_TTL: Duration = Duration::from_secs(30);

/// How long acquiring one may wait for writers, readers and checkpoints to get out of the
/// way (LiteFS's `HaltAcquireTimeout`).
pub const HALT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often expired halt locks are looked for.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Longest a transaction waits for the Node's verdict.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a halt lock's holder is told: LiteFS's `HaltLock` as its JSON encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The holder's id for the lock.
    pub id: i64,
    /// The primary's position when it was granted: the replica catches up to it first.
    pub pos: Pos,
    /// When it expires unless renewed.
    pub expires: SystemTime,
}

/// Why a halt lock request failed, with the HTTP status it answers.
#[derive(Debug, thiserror::Error)]
pub enum HaltLockError {
    /// This node is not the primary.
    #[error("this node is not the primary")]
    NotPrimary,
    /// The lock is not held under that id (never taken, released, or expired).
    #[error("no halt lock {id} on {db}")]
    NotHeld {
        /// The database.
        db: String,
        /// The id asked for.
        id: i64,
    },
    /// The mount could not halt the database's writers.
    #[error(transparent)]
    Mount(#[from] HaltError),
    /// The LTX file is not one transaction that can be written here.
    #[error("invalid LTX file: {0}")]
    Invalid(String),
    /// The Node refused the transaction (or the database moved on).
    #[error("transaction refused: {0}")]
    Refused(String),
    /// The transaction is durable and replicated but writing it into the database file
    /// failed: the database is behind its history until recovery at the next start.
    #[error("writing the transaction into {db} failed: {reason}")]
    Write {
        /// The database.
        db: String,
        /// What failed.
        reason: String,
    },
    /// The daemon is shutting down.
    #[error("shutting down")]
    Stopped,
}

/// One database's halt lock.
struct Held {
    id: i64,
    expires: Instant,
    expires_wall: SystemTime,
    locks: WriterLocks,
}

type Slot = Arc<Mutex<Option<Held>>>;

/// The primary's halt locks, by database.
pub struct HaltLocks {
    mount: Arc<Mount>,
    requests: mpsc::UnboundedSender<FsRequest>,
    status: watch::Receiver<Status>,
    held: Mutex<HashMap<String, Slot>>,
    /// What `/info` shows of them (a slot is locked for as long as a transaction is written).
    shown: Mutex<BTreeMap<String, Shown>>,
}

/// A held lock as `/info` shows it: id, holder, expiry.
#[derive(Debug, Clone)]
struct Shown {
    id: i64,
    holder: Option<NodeId>,
    expires: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HaltLocks {
    /// Halt locks over `mount`, committing through the driver's `requests`; a task drops
    /// those that expire, and all of them when this node stops being the primary.
    pub fn new(
        mount: Arc<Mount>,
        requests: mpsc::UnboundedSender<FsRequest>,
        status: watch::Receiver<Status>,
    ) -> Arc<HaltLocks> {
        let locks = Arc::new(HaltLocks {
            mount,
            requests,
            status,
            held: Mutex::new(HashMap::new()),
            shown: Mutex::new(BTreeMap::new()),
        });
        let weak = Arc::downgrade(&locks);
        tokio::spawn(expire_until_gone(weak));
        locks
    }

    fn is_primary(&self) -> bool {
        self.status.borrow().role == "primary"
    }

    fn slot(&self, db: &str) -> Slot {
        Arc::clone(lock(&self.held).entry(db.to_owned()).or_default())
    }

    /// The locks held now, for `/info`.
    pub fn shown(&self) -> Vec<HaltLockStatus> {
        let now = Instant::now();
        lock(&self.shown)
            .iter()
            .map(|(db, s)| HaltLockStatus {
                db: db.clone(),
                id: s.id,
                with: s.holder.map_or_else(|| "a replica".to_owned(), |n| n.to_string()),
                expires_in_ms: Some(
                    u64::try_from(s.expires.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
                ),
            })
            .collect()
    }

    fn show(&self, db: &str, shown: Option<Shown>) {
        let mut all = lock(&self.shown);
        match shown {
            Some(s) => {
                all.insert(db.to_owned(), s);
            }
            None => {
                all.remove(db);
            }
        }
    }

    /// Takes (or renews) halt lock `id` on `db` for `holder` (the node that asked, if it
    /// said). Blocks: run it off the async threads.
    pub fn acquire(&self, db: &str, id: i64, holder: Option<NodeId>) -> Result<Granted, HaltLockError> {
        if !self.is_primary() {
            return Err(HaltLockError::NotPrimary);
        }
        let deadline = Instant::now() + HALT_ACQUIRE_TIMEOUT;
        let slot = self.slot(db);
        loop {
            let mut held = lock(&slot);
            match held.as_mut() {
                // A retry of a request whose answer was lost, or a renewal.
                Some(h) if h.id == id => {
                    h.expires = Instant::now() + HALT_LOCK_TTL;
                    h.expires_wall = SystemTime::now() + HALT_LOCK_TTL;
                    let expires = h.expires_wall;
                    self.show(db, Some(Shown { id, holder, expires: h.expires }));
                    drop(held);
                    return Ok(Granted { id, pos: self.position(db)?, expires });
                }
                Some(_) if Instant::now() < deadline => {
                    drop(held);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(_) => return Err(HaltError::Busy { db: db.to_owned(), lock: "another halt lock" }.into()),
                None => {
                    let locks = self.halt_writers(db, deadline)?;
                    let now = Instant::now();
                    let expires_wall = SystemTime::now() + HALT_LOCK_TTL;
                    *held = Some(Held { id, expires: now + HALT_LOCK_TTL, expires_wall, locks });
                    self.show(db, Some(Shown { id, holder, expires: now + HALT_LOCK_TTL }));
                    drop(held);
                    let pos = match self.position(db) {
                        Ok(pos) => pos,
                        Err(e) => {
                            self.release(db, id);
                            return Err(e);
                        }
                    };
                    info!(db, id, %pos, "halt lock granted: local writers wait");
                    return Ok(Granted { id, pos, expires: expires_wall });
                }
            }
        }
    }

    /// SQLite's writer locks on `db`, a WAL database checkpointed into its file first.
    fn halt_writers(&self, db: &str, deadline: Instant) -> Result<WriterLocks, HaltLockError> {
        let mut locks = self.mount.lock_writers(db, deadline)?;
        if !self.mount.is_wal_database(db)? {
            return Ok(locks);
        }
        loop {
            if !self.mount.wal_has_frames(db)? {
                self.mount.lock_wal_writer(&mut locks, deadline)?;
                // A writer may have committed between the look and the lock.
                if !self.mount.wal_has_frames(db)? {
                    return Ok(locks);
                }
                locks.release_wal_writer();
            }
            if Instant::now() >= deadline {
                return Err(HaltError::Busy { db: db.to_owned(), lock: "the WAL (its checkpoint)" }.into());
            }
            self.checkpoint(db, deadline);
        }
    }

    /// Checkpoints `db`'s WAL into its file and truncates it, as any SQLite connection would,
    /// through the mount. A checkpoint that readers or a writer keep from finishing is tried
    /// again by the caller.
    fn checkpoint(&self, db: &str, deadline: Instant) {
        use rusqlite::{Connection, OpenFlags};
        let path = self.mount.database_in_mount(db);
        let result = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).and_then(|conn| {
            conn.busy_timeout(deadline.saturating_duration_since(Instant::now()))?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0))
        });
        match result {
            Ok(0) => {}
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                warn!(db, error = %e, "checkpoint for a halt lock");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The Node's position of `db`.
    fn position(&self, db: &str) -> Result<Pos, HaltLockError> {
        let (reply, rx) = sync_mpsc::channel();
        self.requests.send(FsRequest::Position { db: db.to_owned(), reply }).map_err(|_| HaltLockError::Stopped)?;
        rx.recv_timeout(COMMIT_TIMEOUT).map_err(|_| HaltLockError::Stopped)
    }

    /// Lets go of halt lock `id` on `db`, after a transaction being written under it. A lock
    /// no longer held (released, expired, never taken) is not an error, as in LiteFS.
    pub fn release(&self, db: &str, id: i64) {
        let slot = self.slot(db);
        let mut held = lock(&slot);
        if held.as_ref().is_some_and(|h| h.id == id) {
            *held = None;
            self.show(db, None);
            info!(db, id, "halt lock released");
        }
    }

    /// Commits `ltx_bytes`, one transaction a replica made under halt lock `id` on `db`, and
    /// writes it into the database. Blocks: run it off the async threads.
    pub fn commit(&self, db: &str, id: i64, ltx_bytes: &[u8]) -> Result<Pos, HaltLockError> {
        if !self.is_primary() {
            return Err(HaltLockError::NotPrimary);
        }
        let slot = self.slot(db);
        // Held for the whole transaction: a release or expiry waits for its write.
        let held = lock(&slot);
        let Some(h) = held.as_ref().filter(|h| h.id == id && h.expires > Instant::now()) else {
            return Err(HaltLockError::NotHeld { db: db.to_owned(), id });
        };
        let wal = h.locks.holds_wal_writer();
        let Remote { tx, page1_wal, origin, base, post } = captured(db, ltx_bytes, wal)?;
        if page1_wal.is_some_and(|says_wal| says_wal != wal) {
            return Err(HaltLockError::Invalid(
                "the transaction changes the database's journal mode (rollback journal or WAL)".into(),
            ));
        }
        let (answer, verdict) = sync_mpsc::channel();
        self.requests
            .send(FsRequest::RemoteCommit {
                tx: Box::new(tx),
                remote: replite_core::node::RemoteCommit { origin, base, post: post.checksum },
                answer,
            })
            .map_err(|_| HaltLockError::Stopped)?;
        match verdict.recv_timeout(COMMIT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => return Err(HaltLockError::Refused(refusal_reason(&refusal))),
            Err(_) => return Err(HaltLockError::Refused("no verdict from the node".into())),
        }
        let written = self.mount.apply_under_halt(&h.locks, ltx_bytes, base.checksum).map_err(|e| {
            warn!(db, error = %e, "a halt lock's transaction is committed but not written into the database");
            HaltLockError::Write { db: db.to_owned(), reason: e.to_string() }
        })?;
        if written != post {
            return Err(HaltLockError::Write { db: db.to_owned(), reason: format!("reached {written}, not {post}") });
        }
        Ok(post)
    }

    /// Drops expired halt locks, and every one once this node is no longer the primary.
    fn expire(&self, now: Instant) {
        let primary = self.is_primary();
        let slots: Vec<(String, Slot)> = lock(&self.held).iter().map(|(db, s)| (db.clone(), Arc::clone(s))).collect();
        for (db, slot) in slots {
            // A transaction being written holds the slot: its lock expires after it.
            let Ok(mut held) = slot.try_lock() else { continue };
            if let Some(h) = held.as_ref()
                && (h.expires <= now || !primary)
            {
                info!(db, id = h.id, primary, "halt lock expired");
                *held = None;
                self.show(&db, None);
            }
        }
    }
}

pub(crate) fn refusal_reason(refusal: &Refusal) -> String {
    match refusal {
        Refusal::ReadOnly { reason } | Refusal::Failed { reason } | Refusal::NoSpace { reason } => reason.clone(),
    }
}

/// A replica's transaction, from its LTX file.
struct Remote {
    /// As the mount would have captured it.
    tx: CapturedTx,
    /// Whether its page 1 says WAL, if it has page 1.
    page1_wal: Option<bool>,
    /// The replica's id, as its file states it: LiteFS's replicas know their own
    /// transactions by it when the stream brings them back.
    origin: Option<replite_core::NodeId>,
    /// The position it applies on.
    base: Pos,
    /// The position it leads to.
    post: Pos,
}

/// The transaction in an LTX file, as the mount would have captured it on a database in WAL
/// mode or not (`wal`).
fn captured(db: &str, ltx_bytes: &[u8], wal: bool) -> Result<Remote, HaltLockError> {
    let mut pages = Vec::new();
    let verified = ltx::verify_visiting(ltx_bytes, |_, pgno, data| {
        pages.push(CapturedPage { pgno, data: data.to_vec() });
        Ok(())
    })
    .map_err(|e| HaltLockError::Invalid(e.to_string()))?;
    let header = verified.header();
    if header.min_txid != header.max_txid || header.min_txid.0 < 2 {
        return Err(HaltLockError::Invalid(format!(
            "one transaction after the first is expected, not {}-{}",
            header.min_txid, header.max_txid
        )));
    }
    if header.commit == 0 {
        return Err(HaltLockError::Invalid("a drop cannot be sent under a halt lock".into()));
    }
    // Page 1's read version (byte 19) says whether the database is in WAL mode.
    let page1_wal = pages.iter().find(|p| p.pgno.0 == 1).map(|p| p.data.get(19) == Some(&2));
    let tx = CapturedTx {
        db: db.to_owned(),
        page_size: header.page_size,
        commit: header.commit,
        pages,
        mode: if wal { JournalMode::Wal } else { JournalMode::Delete },
        durability: Durability::Requested,
        wal: None,
    };
    let origin = Some(header.node_id).filter(|id| id.0 != 0);
    Ok(Remote { tx, page1_wal, origin, base: verified.pre_apply_pos(), post: verified.post_apply_pos() })
}

/// Expires halt locks until the registry is gone.
async fn expire_until_gone(locks: Weak<HaltLocks>) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK_EVERY);
    loop {
        tick.tick().await;
        let Some(locks) = locks.upgrade() else { return };
        let now = Instant::now();
        // The slot locks are plain mutexes held briefly (try_lock): fine on this thread.
        locks.expire(now);
    }
}
