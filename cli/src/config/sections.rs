//! The sections of the config file, one struct each, with LiteFS's defaults.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `exec:` — one command string, or a list of commands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecList(pub Vec<ExecCommand>);

/// One `exec` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecCommand {
    /// The command line.
    pub cmd: String,
    /// Run only on a node that may become primary (e.g. migrations).
    #[serde(default)]
    pub if_candidate: bool,
}

impl<'de> Deserialize<'de> for ExecList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<ExecCommand>),
        }
        match Form::deserialize(d) {
            Ok(Form::One(cmd)) => Ok(ExecList(vec![ExecCommand { cmd, if_candidate: false }])),
            Ok(Form::Many(list)) => Ok(ExecList(list)),
            Err(_) => {
                Err(serde::de::Error::custom("expected a command string or a list of {cmd, if-candidate} entries"))
            }
        }
    }
}

/// `data:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataConfig {
    /// Internal data directory.
    pub dir: PathBuf,
    /// LZ4-compress LTX files.
    pub compress: bool,
    /// How long LTX files are kept (the latest is always kept).
    #[serde(deserialize_with = "duration::deserialize")]
    pub retention: Duration,
    /// How often retention is enforced.
    #[serde(deserialize_with = "duration::deserialize")]
    pub retention_monitor_interval: Duration,
    /// replite: also drop the oldest LTX files past this many bytes per database.
    pub retention_size: Option<u64>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("/var/lib/litefs"),
            compress: true,
            retention: Duration::from_secs(600),
            retention_monitor_interval: Duration::from_secs(60),
            retention_size: None,
        }
    }
}

/// `fuse:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct FuseConfig {
    /// Mount directory applications open databases in.
    pub dir: PathBuf,
    /// Let users other than the daemon's access the mount.
    pub allow_other: bool,
    /// Log every FUSE call.
    pub debug: bool,
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig { dir: PathBuf::from("/litefs"), allow_other: false, debug: false }
    }
}

/// `http:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// Bind address of the API and replication server.
    pub addr: String,
    /// How long a snapshot transfer may take.
    #[serde(deserialize_with = "duration::deserialize_option")]
    pub snapshot_timeout: Option<Duration>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { addr: ":20202".into(), snapshot_timeout: None }
    }
}

/// `proxy:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyConfig {
    /// Bind address of the proxy; empty disables it.
    pub addr: String,
    /// The application's host:port.
    pub target: String,
    /// The database whose TXID the proxy tracks.
    pub db: String,
    /// Longest a replica may lag before reads are forwarded.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_lag: Duration,
    /// Log every request.
    pub debug: bool,
    /// Paths passed through untouched.
    pub passthrough: Vec<String>,
    /// Paths always forwarded to the primary.
    pub always_forward: Vec<String>,
    /// How long to wait for a primary before failing a write.
    #[serde(deserialize_with = "duration::deserialize")]
    pub primary_redirect_timeout: Duration,
    /// Server read timeout (0: none).
    #[serde(deserialize_with = "duration::deserialize")]
    pub read_timeout: Duration,
    /// Server read-header timeout.
    #[serde(deserialize_with = "duration::deserialize")]
    pub read_header_timeout: Duration,
    /// Server write timeout (0: none).
    #[serde(deserialize_with = "duration::deserialize")]
    pub write_timeout: Duration,
    /// Server idle timeout.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// replite's own key: how a replica's proxy sends a write on to the primary.
    pub write_forwarding: WriteForwarding,
}

/// `proxy.write-forwarding`: how a replica's proxy hands a write to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WriteForwarding {
    /// `fly-replay` on Fly.io (where `FLY_APP_NAME` is set), `forward` elsewhere.
    #[default]
    Auto,
    /// The replica sends the request to the primary's proxy and relays the answer.
    Forward,
    /// LiteFS's way: answer with a `fly-replay` header, which Fly.io's edge proxy follows.
    FlyReplay,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            addr: String::new(),
            target: String::new(),
            db: String::new(),
            max_lag: Duration::from_secs(10),
            debug: false,
            passthrough: Vec::new(),
            always_forward: Vec::new(),
            primary_redirect_timeout: Duration::from_secs(5),
            read_timeout: Duration::ZERO,
            read_header_timeout: Duration::from_secs(10),
            write_timeout: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            write_forwarding: WriteForwarding::Auto,
        }
    }
}

/// Lease backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseType {
    /// Not set: an error at start-up, as in LiteFS.
    #[default]
    #[serde(skip)]
    Unset,
    /// A fixed primary.
    Static,
    /// Consul sessions and KV, LiteFS-compatible.
    Consul,
    /// etcd v3 leases (replite).
    Etcd,
}

impl fmt::Display for LeaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseType::Unset => "(unset)",
            LeaseType::Static => "static",
            LeaseType::Consul => "consul",
            LeaseType::Etcd => "etcd",
        })
    }
}

/// `lease:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LeaseConfig {
    /// `static`, `consul` or `etcd`.
    #[serde(rename = "type")]
    pub kind: LeaseType,
    /// This node's hostname, for applications forwarding writes.
    pub hostname: String,
    /// URL other nodes reach this node's API at.
    pub advertise_url: String,
    /// Whether this node may become primary (static: whether it is).
    pub candidate: bool,
    /// Promote this node once it is in sync.
    pub promote: bool,
    /// Wait after losing the primary before reconnecting or taking over.
    #[serde(deserialize_with = "duration::deserialize")]
    pub reconnect_delay: Duration,
    /// Wait after a forced demotion before trying to become primary again.
    #[serde(deserialize_with = "duration::deserialize")]
    pub demote_delay: Duration,
    /// Replicate only these databases (non-candidates only).
    pub databases: Vec<String>,
    /// replite: stop accepting writes this long before the lease expires (clock-drift margin).
    #[serde(deserialize_with = "duration::deserialize")]
    pub safety_margin: Duration,
    /// Consul settings.
    pub consul: ConsulConfig,
    /// etcd settings (replite).
    pub etcd: EtcdConfig,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            kind: LeaseType::Unset,
            hostname: String::new(),
            advertise_url: String::new(),
            candidate: true,
            promote: false,
            reconnect_delay: Duration::from_secs(1),
            demote_delay: Duration::from_secs(10),
            databases: Vec::new(),
            safety_margin: Duration::from_secs(1),
            consul: ConsulConfig::default(),
            etcd: EtcdConfig::default(),
        }
    }
}

/// `lease.consul:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConsulConfig {
    /// Consul's HTTP API URL.
    pub url: String,
    /// KV key holding the primary.
    pub key: String,
    /// Session TTL.
    #[serde(deserialize_with = "duration::deserialize")]
    pub ttl: Duration,
    /// Session lock delay.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lock_delay: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            url: String::new(),
            key: String::new(),
            ttl: Duration::from_secs(10),
            lock_delay: Duration::from_secs(1),
        }
    }
}

/// `lease.etcd:` (replite).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster.
    pub endpoints: Vec<String>,
    /// Key holding the primary.
    pub key: String,
    /// Lease TTL.
    #[serde(deserialize_with = "duration::deserialize")]
    pub ttl: Duration,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password.
    pub password: Option<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: Vec::new(),
            key: String::new(),
            ttl: Duration::from_secs(10),
            username: None,
            password: None,
        }
    }
}

/// `backup:` (LiteFS's keys; replite's object-store backups come later).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackupConfig {
    /// Backup type; empty disables backups.
    #[serde(rename = "type")]
    pub kind: String,
    /// Directory, for `file` backups.
    pub path: String,
    /// Service URL.
    pub url: String,
    /// Cluster name.
    pub cluster: String,
    /// Auth token.
    pub auth_token: String,
}

/// `log:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Include timestamps.
    pub timestamp: bool,
    /// Debug logging.
    pub debug: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, timestamp: false, debug: false }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// `tracing:` — LiteFS's rotating trace file. Accepted so LiteFS configs load; replite logs
/// through `tracing` instead.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct TracingConfig {
    /// Enabled.
    pub enabled: bool,
    /// File path.
    pub path: String,
    /// Size per file, MB.
    pub max_size: u32,
    /// Files kept.
    pub max_count: u32,
    /// Compress rotated files.
    pub compress: bool,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig { enabled: true, path: String::new(), max_size: 64, max_count: 8, compress: true }
    }
}

/// `replication:` (replite).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReplicationConfig {
    /// Synchronous replication.
    pub sync: SyncConfig,
    /// Refuse writes once no candidate has acknowledged within this window (0: no bound).
    #[serde(deserialize_with = "duration::deserialize")]
    pub async_window: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig { sync: SyncConfig::default(), async_window: Duration::ZERO }
    }
}

/// What a synchronous commit does when acknowledgements do not arrive in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncTimeoutPolicy {
    /// Keep the commit waiting (and writes blocked) until enough replicas acknowledge.
    #[default]
    Block,
    /// Fall back to asynchronous replication, with a metric and an event.
    Degrade,
}

/// `replication.sync:`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyncConfig {
    /// Replicas that must have a transaction durable before its commit returns (0: async).
    /// With `candidates` it must be their number less one, or 0 (implied).
    pub replicas: u32,
    /// The node ids (16 hex digits, as in `<data.dir>/id` and `replite status`) of every
    /// node that may become primary. Synchronous replication is on when this lists two or
    /// more: a commit returns only once every other candidate has it durably, so whichever
    /// candidate wins the next election holds every acknowledged transaction.
    pub candidates: Vec<String>,
    /// How long a commit waits for them.
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// What happens after the timeout.
    pub on_timeout: SyncTimeoutPolicy,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            replicas: 0,
            candidates: Vec::new(),
            timeout: Duration::from_secs(5),
            on_timeout: SyncTimeoutPolicy::Block,
        }
    }
}
