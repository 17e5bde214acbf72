//! The halt lock on a replica: `replite run -with-halt-lock-on DB -- CMD` asks its own node
//! (`POST /local-halt?name=`) to take a halt lock on its primary, and the node lets its
//! applications write DB while it holds it, sending each commit to the primary. LiteFS's CLI
//! asks through a byte-range lock on `DB-lock` in the mount instead; replite's mount leaves
//! byte-range locks to the kernel, so it asks over HTTP.
//!
//! Taking it: the primary grants a halt lock at its position (`POST /halt`), this replica
//! waits until it is there too, then the driver loads the database's page checksums and
//! sends the commits on (the Node: `core::node::halt`), and the mount lets writes through. The lock
//! is renewed at the primary every 10 s while held, so a command may run longer than the
//! lock's 30 s. Letting go (`DELETE /local-halt`, or the command's connection closing): a WAL
//! database is checkpointed while still writable, the mount refuses writes again, the driver
//! stops sending, and the primary is told (`DELETE /halt`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc as sync_mpsc;
use std::time::{Duration, Instant};

use replite_core::stream::{DbName, HEADER_NODE_ID};
use replite_core::{Checksum, NodeId, Pos, TxId};
use replite_fuse::Mount;
use serde::Deserialize;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tracing::{info, warn};

use super::{HALT_ACQUIRE_TIMEOUT, HaltLockError};
use crate::driver::{FsRequest, HaltLockStatus, Status};

/// How often a held lock is renewed at the primary (a third of its lifetime).
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// How often the holder's connection is written to, so that its end is noticed.
pub(super) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A lock this replica holds on its primary.
struct Holding {
    id: i64,
    primary_url: String,
    /// Ends the renewals.
    stop: Option<oneshot::Sender<()>>,
}

/// What `POST /local-halt` answers: the lock, or that this node is the primary (no lock is
/// needed there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalHalt {
    /// This node is the primary: its applications write anyway.
    Primary,
    /// Lock `id` on the primary, granted at `pos`.
    Held {
        /// The lock's id.
        id: i64,
        /// The position it was granted at.
        pos: Pos,
    },
}

/// The halt locks this node holds on its primary, by database.
pub struct ReplicaHalts {
    mount: Arc<Mount>,
    requests: mpsc::UnboundedSender<FsRequest>,
    status: watch::Receiver<Status>,
    me: NodeId,
    http: reqwest::Client,
    held: Mutex<HashMap<String, Holding>>,
    /// What `/info` shows of them: id and primary, by database.
    shown: std::sync::Mutex<BTreeMap<String, (i64, String)>>,
}

#[derive(Deserialize)]
struct GrantedJson {
    id: i64,
    pos: PosJson,
}

#[derive(Deserialize)]
struct PosJson {
    #[serde(rename = "TXID")]
    txid: String,
    #[serde(rename = "PostApplyChecksum")]
    checksum: String,
}

fn hex(s: &str) -> Result<u64, HaltLockError> {
    u64::from_str_radix(s, 16).map_err(|_| HaltLockError::Refused(format!("the primary answered a bad position {s:?}")))
}

impl ReplicaHalts {
    /// Halt locks over `mount`, sent through the driver's `requests`.
    pub fn new(
        mount: Arc<Mount>,
        requests: mpsc::UnboundedSender<FsRequest>,
        status: watch::Receiver<Status>,
        me: NodeId,
    ) -> Arc<ReplicaHalts> {
        let http = reqwest::Client::builder().timeout(HALT_ACQUIRE_TIMEOUT * 2).build().unwrap_or_default();
        Arc::new(ReplicaHalts {
            mount,
            requests,
            status,
            me,
            http,
            held: Mutex::new(HashMap::new()),
            shown: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The locks this replica holds now, for `/info`.
    pub fn shown(&self) -> Vec<HaltLockStatus> {
        let shown = self.shown.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shown
            .iter()
            .map(|(db, (id, primary))| HaltLockStatus {
                db: db.clone(),
                id: *id,
                with: primary.clone(),
                expires_in_ms: None,
            })
            .collect()
    }

    fn show(&self, db: &str, held: Option<(i64, String)>) {
        let mut shown = self.shown.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match held {
            Some(h) => {
                shown.insert(db.to_owned(), h);
            }
            None => {
                shown.remove(db);
            }
        }
    }

    /// Takes a halt lock on `db` at the primary and lets this replica's applications write
    /// it; [`LocalHalt::Primary`] on the primary.
    pub async fn acquire(self: &Arc<Self>, db: &str) -> Result<LocalHalt, HaltLockError> {
        let name = DbName::new(db).map_err(|e| HaltLockError::Invalid(format!("invalid database name: {e}")))?;
        let (role, primary) = {
            let status = self.status.borrow();
            (status.role.clone(), status.primary.clone())
        };
        if role == "primary" {
            return Ok(LocalHalt::Primary);
        }
        let Some(primary) = primary.filter(|_| role == "replica") else {
            return Err(HaltLockError::Refused("this node follows no primary right now".into()));
        };
        let mut held = self.held.lock().await;
        if held.contains_key(db) {
            return Err(HaltLockError::Refused(format!("a halt lock on {db} is already held here")));
        }
        let primary_url = primary.advertise_url.trim_end_matches('/').to_owned();
        let id = loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 {
                break id;
            }
        };
        let pos = self.request_at_primary(reqwest::Method::POST, &primary_url, db, id).await?;
        if let Err(e) = self.start_writing(&name, id, &primary_url, pos).await {
            let _ = self.request_at_primary(reqwest::Method::DELETE, &primary_url, db, id).await;
            return Err(e);
        }
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(renew(Arc::clone(self), db.to_owned(), id, primary_url.clone(), stopped));
        self.show(db, Some((id, primary_url.clone())));
        held.insert(db.to_owned(), Holding { id, primary_url, stop: Some(stop) });
        info!(db, id, %pos, "halt lock held on the primary: this replica writes the database");
        Ok(LocalHalt::Held { id, pos })
    }

    /// Waits until this replica is at `pos` (where the primary halted), then lets writes in.
    async fn start_writing(&self, db: &DbName, id: i64, primary_url: &str, pos: Pos) -> Result<(), HaltLockError> {
        let deadline = Instant::now() + HALT_ACQUIRE_TIMEOUT;
        loop {
            let here = self.position(db.as_str()).await?;
            if here == pos {
                break;
            }
            if here.txid > pos.txid || Instant::now() >= deadline {
                return Err(HaltLockError::Refused(format!("this replica is at {here}, the primary halted at {pos}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let request = |answer| FsRequest::HaltHeld {
            db: db.as_str().to_owned(),
            id,
            primary_url: primary_url.to_owned(),
            pos,
            answer,
        };
        self.ask(request).await?;
        let (mount, name) = (Arc::clone(&self.mount), db.as_str().to_owned());
        let _ = tokio::task::spawn_blocking(move || mount.set_writable_under_halt(&name, true)).await;
        Ok(())
    }

    /// Whether lock `id` on `db` is still held here.
    pub async fn holds(&self, db: &str, id: i64) -> bool {
        self.held.lock().await.get(db).is_some_and(|h| h.id == id)
    }

    /// Lets go of lock `id` on `db` (`None`: whichever is held); nothing if not held.
    pub async fn release(&self, db: &str, id: Option<i64>) {
        let mut held = self.held.lock().await;
        let Some(mut holding) = held.remove(db) else { return };
        if id.is_some_and(|id| id != holding.id) {
            held.insert(db.to_owned(), holding);
            return;
        }
        if let Some(stop) = holding.stop.take() {
            let _ = stop.send(());
        }
        self.show(db, None);
        let (mount, name) = (Arc::clone(&self.mount), db.to_owned());
        let _ = tokio::task::spawn_blocking(move || {
            checkpoint_if_wal(&mount, &name);
            mount.set_writable_under_halt(&name, false);
        })
        .await;
        if let Err(e) = self.ask(|answer| FsRequest::HaltDropped { db: db.to_owned(), answer }).await {
            warn!(db, error = %e, "dropping a halt lock in the driver");
        }
        match self.request_at_primary(reqwest::Method::DELETE, &holding.primary_url, db, holding.id).await {
            Ok(_) => info!(db, id = holding.id, "halt lock released"),
            Err(e) => {
                warn!(db, id = holding.id, error = %e, "releasing a halt lock at the primary (it expires by itself)")
            }
        }
    }

    /// `POST` (take or renew: the lock's position) or `DELETE` (release) lock `id` on `db`
    /// at the primary.
    async fn request_at_primary(
        &self,
        method: reqwest::Method,
        primary_url: &str,
        db: &str,
        id: i64,
    ) -> Result<Pos, HaltLockError> {
        let url = format!("{primary_url}/halt?name={db}&id={id}");
        let response = self
            .http
            .request(method.clone(), &url)
            .header(HEADER_NODE_ID, format!("{}", self.me))
            .send()
            .await
            .map_err(|e| HaltLockError::Refused(format!("{method} {url}: {e}")))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(HaltLockError::Refused(format!("the primary answered {status}: {}", body.trim())));
        }
        if method == reqwest::Method::DELETE {
            return Ok(Pos::ZERO);
        }
        let granted: GrantedJson = serde_json::from_str(&body)
            .map_err(|e| HaltLockError::Refused(format!("the primary's answer {body:?}: {e}")))?;
        if granted.id != id {
            return Err(HaltLockError::Refused(format!("the primary granted lock {}, not {id}", granted.id)));
        }
        Ok(Pos::new(TxId(hex(&granted.pos.txid)?), Checksum(hex(&granted.pos.checksum)?)))
    }

    async fn position(&self, db: &str) -> Result<Pos, HaltLockError> {
        let (reply, rx) = sync_mpsc::channel();
        self.requests.send(FsRequest::Position { db: db.to_owned(), reply }).map_err(|_| HaltLockError::Stopped)?;
        tokio::task::spawn_blocking(move || rx.recv_timeout(HALT_ACQUIRE_TIMEOUT))
            .await
            .map_err(|_| HaltLockError::Stopped)?
            .map_err(|_| HaltLockError::Stopped)
    }

    async fn ask(&self, make: impl FnOnce(crate::driver::Answer) -> FsRequest) -> Result<(), HaltLockError> {
        let (answer, verdict) = sync_mpsc::channel();
        self.requests.send(make(answer)).map_err(|_| HaltLockError::Stopped)?;
        match tokio::task::spawn_blocking(move || verdict.recv_timeout(HALT_ACQUIRE_TIMEOUT)).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(refusal))) => Err(HaltLockError::Refused(super::refusal_reason(&refusal))),
            _ => Err(HaltLockError::Stopped),
        }
    }
}

/// Renews lock `id` at the primary until told to stop; a renewal the primary refuses (the
/// lock expired, the primary changed) lets go here too.
async fn renew(halts: Arc<ReplicaHalts>, db: String, id: i64, primary_url: String, mut stopped: oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = halts.request_at_primary(reqwest::Method::POST, &primary_url, &db, id).await {
            warn!(db, id, error = %e, "renewing a halt lock failed: letting go");
            halts.release(&db, Some(id)).await;
            return;
        }
    }
}

/// A WAL database written under a halt lock: its frames are checkpointed into the database
/// file before the replica stops writing it, as a primary's connection would, so that
/// replication finds an empty WAL. A checkpoint readers keep from finishing is left to the
/// next apply, which folds the WAL's published frames into the file.
fn checkpoint_if_wal(mount: &Mount, db: &str) {
    if !mount.is_wal_database(db).unwrap_or(false) {
        return;
    }
    use rusqlite::{Connection, OpenFlags};
    let result =
        Connection::open_with_flags(mount.database_in_mount(db), OpenFlags::SQLITE_OPEN_READ_WRITE).and_then(|conn| {
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0))
        });
    match result {
        Ok(0) => {}
        Ok(_) => warn!(db, "the WAL written under a halt lock is still in use: the next apply folds it"),
        Err(e) => warn!(db, error = %e, "checkpointing the WAL written under a halt lock"),
    }
}
