//! What the driver shows the outside: a status snapshot (for `/info`, `replite status` and the
//! mount's `-pos`, `.primary` and `.lag` files) and the event log (`/events`, as LiteFS's
//! newline-delimited JSON).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use replite_core::node::{Event, Millis, Node, Role};
use replite_core::stream::DbName;
use replite_core::{NodeId, Pos};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::lease::LeaseRecord;

/// A node's state as the API reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// This node's id, 16 hex digits.
    pub node_id: String,
    /// Its hostname (as in the lease record).
    pub hostname: String,
    /// `primary`, `replica`, `waiting`, `recovering` or `stopped`.
    pub role: String,
    /// The epoch of the primary's term this node is in, if any.
    pub epoch: Option<u64>,
    /// The primary, when this node follows one.
    pub primary: Option<Peer>,
    /// Each database's position and lag.
    pub databases: Vec<DbStatus>,
    /// Primary, or a replica whose stream delivered everything it lacked when it connected.
    pub in_sync: bool,
    /// On a primary: each connected replica's acknowledged position per database.
    pub replicas: Vec<ReplicaStatus>,
    /// On a primary: snapshots being sent to replicas.
    #[serde(default)]
    pub snapshots: Vec<SnapshotProgress>,
    /// Where this node's HTTP proxy (`proxy.*`) is reached, when it runs: replicas forward
    /// writes there. Filled in by the API, not the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// LiteFS's `/info` field: whether this node is the primary (`role` says so too). Filled
    /// in by the API.
    #[serde(default)]
    pub is_primary: bool,
    /// LiteFS's `/info` field: whether this node may become primary. Filled in by the API.
    #[serde(default)]
    pub candidate: bool,
    /// LiteFS's `/info` field: the data directory. Filled in by the API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Halt locks: on a primary those it holds for replicas (its own writers wait), on a
    /// replica those it holds on its primary (its applications write). Filled in by the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halt_locks: Vec<HaltLockStatus>,
}

/// One halt lock (decision 0022), as `/info` and `replite status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HaltLockStatus {
    /// The database.
    pub db: String,
    /// The lock's id.
    pub id: i64,
    /// On a primary: the node holding it (its id, if it said); on a replica: the primary's URL.
    pub with: String,
    /// Milliseconds until it expires unless renewed (on the primary).
    pub expires_in_ms: Option<u64>,
}

/// A snapshot on its way to a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotProgress {
    /// The database.
    pub db: String,
    /// Bytes sent so far.
    pub sent_bytes: u64,
    /// Bytes of the snapshot file.
    pub total_bytes: u64,
}

/// Another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Its id.
    pub node_id: String,
    /// Its hostname.
    pub hostname: String,
    /// Its API URL.
    pub advertise_url: String,
}

/// One database on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DbStatus {
    /// Its name.
    pub name: String,
    /// Position, `%016x/%016x`.
    pub pos: String,
    /// TXID, as a number.
    pub txid: u64,
    /// Transactions behind the primary (replicas).
    pub lag_txids: Option<u64>,
    /// Milliseconds behind the primary (replicas).
    pub lag_ms: Option<u64>,
}

/// One replica of one database, as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// The replica's id.
    pub node_id: String,
    /// The database.
    pub db: String,
    /// Its acknowledged position, if it acknowledged one.
    pub pos: Option<String>,
    /// Transactions behind this primary.
    pub behind_txids: Option<u64>,
}

impl Status {
    /// The largest lag of any database in milliseconds (zero on a primary, which has none):
    /// what the mount's `.lag` and the proxy's health check show.
    #[must_use]
    pub fn max_lag_ms(&self) -> u64 {
        self.databases.iter().filter_map(|d| d.lag_ms).max().unwrap_or(0)
    }

    /// The status of `node`; `me` is this node's lease record, `peers` the ones it has seen.
    #[must_use]
    pub fn of(node: &Node, me: Option<&LeaseRecord>, peers: &BTreeMap<NodeId, LeaseRecord>, _now: Millis) -> Status {
        let (role, epoch, primary) = match node.role() {
            Role::Stopped => ("stopped", None, None),
            Role::Recovering => ("recovering", None, None),
            Role::Waiting => ("waiting", None, None),
            Role::Primary { epoch } => ("primary", Some(epoch.0), None),
            Role::Replica { primary, epoch } => {
                let peer = peers.get(&primary).map(|r| Peer {
                    node_id: primary.to_string(),
                    hostname: r.hostname.clone(),
                    advertise_url: r.advertise_url.clone(),
                });
                ("replica", Some(epoch.0), peer)
            }
        };
        let databases = node
            .positions()
            .map(|(name, pos)| {
                let lag = node.lag(name);
                DbStatus {
                    name: name.as_str().to_owned(),
                    pos: pos.to_string(),
                    txid: pos.txid.0,
                    lag_txids: lag.map(|l| l.txids),
                    lag_ms: lag.map(|l| l.ms),
                }
            })
            .collect();
        let replicas = node
            .replicas()
            .map(|(peer, db, acked)| ReplicaStatus {
                node_id: peer.to_string(),
                db: db.as_str().to_owned(),
                pos: acked.map(|p| p.to_string()),
                behind_txids: acked.map(|p| node.pos(db).txid.0.saturating_sub(p.txid.0)),
            })
            .collect();
        Status {
            node_id: node.id().to_string(),
            hostname: me.map(|m| m.hostname.clone()).unwrap_or_default(),
            role: role.to_owned(),
            in_sync: role == "primary" || (role == "replica" && node.upstream_ready()),
            epoch,
            primary,
            databases,
            replicas,
            // The rest is filled in by the API.
            ..Status::default()
        }
    }
}

/// Where status shows up besides the API: the mount.
pub trait Surface: Send + Sync + 'static {
    /// Positions and lag, shown within the driver's step whenever status changes: cheap, and
    /// never a kernel call (the step may run while an application's commit holds kernel
    /// locks).
    fn show_positions(&self, status: &Status);

    /// The role (writes open or close) or the primary's name changed from `before`; shown
    /// from a thread of its own, since it may invalidate kernel caches.
    fn show_role(&self, status: &Status, before: Option<&Status>);
}

impl Surface for replite_fuse::Mount {
    fn show_positions(&self, status: &Status) {
        for db in &status.databases {
            if let (Ok(name), Ok(pos)) = (DbName::new(&db.name), db.pos.parse::<Pos>()) {
                self.set_position(name.as_str(), pos);
            }
        }
        self.set_lag_ms(i64::try_from(status.max_lag_ms()).unwrap_or(i64::MAX));
    }

    fn show_role(&self, status: &Status, before: Option<&Status>) {
        let primary = status.role == "primary";
        if before.is_none_or(|b| (b.role == "primary") != primary) {
            self.set_role(if primary { replite_fuse::Role::Primary } else { replite_fuse::Role::Replica });
        }
        let hostname = status.primary.as_ref().map(|p| p.hostname.clone());
        if before.is_none_or(|b| b.primary.as_ref().map(|p| &p.hostname) != hostname.as_ref()) {
            self.set_primary(hostname);
        }
    }
}

/// How many events a slow `/events` reader may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// The event stream behind `/events`: LiteFS's `init`, `primaryChange` and `tx` events, one
/// JSON object per line, plus replite's `node` events (step-downs, resyncs, recoveries).
#[derive(Clone)]
pub struct EventLog {
    sender: broadcast::Sender<String>,
    /// The latest primary state, sent first to each new reader as the `init` event.
    current: Arc<Mutex<serde_json::Value>>,
    /// Set when the node stops: readers' streams end then (a stream open past the stop
    /// would hold the HTTP server's shutdown for its whole grace period).
    closed: Arc<watch::Sender<bool>>,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog {
            sender: broadcast::Sender::new(EVENT_BACKLOG),
            current: Arc::new(Mutex::new(json!({"isPrimary": false, "hostname": ""}))),
            closed: Arc::new(watch::Sender::new(false)),
        }
    }
}

/// One reader of an [`EventLog`].
pub struct EventReader {
    /// The `init` line.
    pub init: String,
    /// Every event from now on.
    pub events: broadcast::Receiver<String>,
    /// Becomes `true` when the node stops: no more events come.
    pub closed: watch::Receiver<bool>,
}

impl EventLog {
    /// A new reader: the `init` line, and every event from now on until the node stops.
    #[must_use]
    pub fn subscribe(&self) -> EventReader {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner).clone();
        EventReader {
            init: json!({"type": "init", "data": current}).to_string(),
            events: self.sender.subscribe(),
            closed: self.closed.subscribe(),
        }
    }

    /// The node stops: every reader's stream ends.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    fn send(&self, event: serde_json::Value) {
        // No reader is not an error.
        let _ = self.sender.send(event.to_string());
    }

    pub(crate) fn role(&self, role: Role, primary_hostname: Option<String>) {
        let is_primary = matches!(role, Role::Primary { .. });
        let data = json!({"isPrimary": is_primary, "hostname": primary_hostname.unwrap_or_default()});
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = data.clone();
        self.send(json!({"type": "primaryChange", "data": data}));
    }

    pub(crate) fn tx(&self, db: &DbName, pos: Pos, page_size: u32, commit: u32) {
        self.send(json!({
            "type": "tx",
            "db": db.as_str(),
            "data": {
                "txID": pos.txid.to_string(),
                "postApplyChecksum": pos.checksum.to_string(),
                "pageSize": page_size,
                "commit": commit,
                "timestamp": crate::timefmt::rfc3339_nano_ms(now_ms()),
            }
        }));
    }

    /// A file from the primary was applied (a drop's, with `commit` 0, too).
    pub(crate) fn applied(&self, db: &DbName, pos: Pos, facts: TxFacts) {
        self.send(json!({
            "type": "tx",
            "db": db.as_str(),
            "data": {
                "txID": pos.txid.to_string(),
                "postApplyChecksum": pos.checksum.to_string(),
                "pageSize": facts.page_size,
                "commit": facts.commit,
                "timestamp": crate::timefmt::rfc3339_nano_ms(facts.timestamp_ms),
            }
        }));
    }

    pub(crate) fn node_event(&self, event: &Event) {
        self.send(json!({"type": "node", "data": {"event": format!("{event:?}")}}));
    }
}

/// What a `tx` event says of an applied LTX file beside its position: its header's fields.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TxFacts {
    pub(crate) page_size: u32,
    /// The database's size in pages after it (0 for a drop).
    pub(crate) commit: u32,
    pub(crate) timestamp_ms: i64,
}

impl TxFacts {
    pub(crate) fn of(header: &replite_core::ltx::Header) -> TxFacts {
        TxFacts { page_size: header.page_size.get(), commit: header.commit, timestamp_ms: header.timestamp_ms }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
