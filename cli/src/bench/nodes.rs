//! replite nodes inside the benchmark's own process: each is a whole daemon
//! (`daemon::start`: store, FUSE mount, static lease, HTTP API on 127.0.0.1, driver) under
//! its own folder. The benchmark thread plays the application through the mount and watches
//! each node's status channel directly, so waiting for a position costs no HTTP polling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::bench::workloads;
use replite::config::{Config, LeaseType};
use replite::daemon::Running;
use replite::driver::{DbStatus, Status};

/// Longest a node may take to become primary, or to connect and get in sync with an empty
/// or small primary.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a clean shutdown may take before the benchmark stops waiting for it.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a position may take to reach a replica after a workload (a 1 GiB transaction
/// on a slow shared disk included).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// A status that has not changed for this long is settled: every acknowledged commit's
/// position is published in the same driver step that answers the commit, so this is a
/// wide margin.
const SETTLE_QUIET: Duration = Duration::from_millis(30);
/// Longest `settled_txid` waits for a quiet moment.
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// One running node.
pub struct BenchNode {
    /// Its name (`single`, `primary`, `replica`, ...), also its folder's name.
    pub name: String,
    /// Where applications open its databases.
    pub mount: PathBuf,
    /// Its API URL.
    pub url: String,
    running: Option<Running>,
    status: watch::Receiver<Status>,
    handle: Handle,
}

impl BenchNode {
    /// A static-lease candidate: primary as soon as it starts. `retention`: bytes of LTX
    /// history kept (`data.retention-size`), else the daemon's default.
    pub fn start_primary(
        handle: &Handle,
        root: &Path,
        name: &str,
        retention: Option<u64>,
    ) -> anyhow::Result<BenchNode> {
        BenchNode::start_primary_with(handle, root, name, base_config(root, name, retention))
    }

    /// [`BenchNode::start_primary`] in synchronous replication with `sync`: node ids (the
    /// first is this node's, written to its `data/id`).
    pub fn start_sync_primary(handle: &Handle, root: &Path, name: &str, sync: &[u64]) -> anyhow::Result<BenchNode> {
        BenchNode::start_primary_with(handle, root, name, sync_config(root, name, sync)?)
    }

    fn start_primary_with(handle: &Handle, root: &Path, name: &str, config: Config) -> anyhow::Result<BenchNode> {
        let mut config = config;
        config.lease.candidate = true;
        // With no advertise URL the node advertises http://HOSTNAME:PORT with the port it
        // bound, so no port has to be picked (and raced for) in advance.
        config.lease.hostname = "127.0.0.1".into();
        let node = BenchNode::start(handle, root, name, &config)?;
        node.wait_until("primary", READY_TIMEOUT, |s| s.role == "primary")?;
        // Primary in the status is not yet a writable mount: wait for that too.
        if let Some(running) = &node.running {
            node.handle
                .block_on(async { tokio::time::timeout(READY_TIMEOUT, running.ready()).await })
                .map_err(|_| anyhow::anyhow!("{name}: mount not writable within {READY_TIMEOUT:?}"))??;
        }
        Ok(node)
    }

    /// A static-lease replica of the node at `primary_url`; returns once it is started (not
    /// necessarily in sync).
    pub fn start_replica(
        handle: &Handle,
        root: &Path,
        name: &str,
        primary_url: &str,
        retention: Option<u64>,
    ) -> anyhow::Result<BenchNode> {
        BenchNode::start_replica_with(handle, root, name, primary_url, base_config(root, name, retention))
    }

    /// [`BenchNode::start_replica`] in synchronous replication with `sync`: node ids (the
    /// first is this node's).
    pub fn start_sync_replica(
        handle: &Handle,
        root: &Path,
        name: &str,
        primary_url: &str,
        sync: &[u64],
    ) -> anyhow::Result<BenchNode> {
        BenchNode::start_replica_with(handle, root, name, primary_url, sync_config(root, name, sync)?)
    }

    fn start_replica_with(
        handle: &Handle,
        root: &Path,
        name: &str,
        primary_url: &str,
        config: Config,
    ) -> anyhow::Result<BenchNode> {
        let mut config = config;
        config.lease.candidate = false;
        config.lease.hostname = "bench-primary".into();
        config.lease.advertise_url = primary_url.into();
        BenchNode::start(handle, root, name, &config)
    }

    fn start(handle: &Handle, root: &Path, name: &str, config: &Config) -> anyhow::Result<BenchNode> {
        let mount = root.join(name).join("mnt");
        std::fs::create_dir_all(&mount).with_context(|| format!("creating {}", mount.display()))?;
        let running =
            handle.block_on(replite::daemon::start(config)).with_context(|| format!("starting node {name}"))?;
        let url = format!("http://{}", running.http_addr);
        let status = running.status.clone();
        Ok(BenchNode { name: name.into(), mount, url, running: Some(running), status, handle: handle.clone() })
    }

    /// Waits (bounded) until the status satisfies `cond`.
    pub fn wait_until(&self, what: &str, timeout: Duration, cond: impl FnMut(&Status) -> bool) -> anyhow::Result<()> {
        let mut rx = self.status.clone();
        let waited = self.handle.block_on(async { tokio::time::timeout(timeout, rx.wait_for(cond)).await });
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => bail!("node {}: the driver stopped while waiting until {what}", self.name),
            Err(_) => bail!("node {}: not {what} within {timeout:?}; status {:?}", self.name, *self.status.borrow()),
        }
    }

    /// A receiver of this node's status, for tight waits (lag).
    pub fn status_receiver(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The runtime the node runs on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// `db`'s status on this node, if it has the database.
    pub fn db(&self, db: &str) -> Option<DbStatus> {
        db_status(&self.status.borrow(), db).cloned()
    }

    /// `db`'s TXID once the status has stopped changing.
    pub fn settled_txid(&self, db: &str) -> u64 {
        let mut rx = self.status.clone();
        let start = Instant::now();
        self.handle.block_on(async {
            loop {
                let txid = db_status(&rx.borrow_and_update(), db).map_or(0, |d| d.txid);
                if start.elapsed() > SETTLE_MAX {
                    return txid;
                }
                match tokio::time::timeout(SETTLE_QUIET, rx.changed()).await {
                    Err(_) | Ok(Err(_)) => return txid,
                    Ok(Ok(())) => {}
                }
            }
        })
    }

    /// Waits (bounded) until `db` is at `txid` or later.
    pub fn wait_txid(&self, db: &str, txid: u64, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until(&format!("at TXID {txid} of {db}"), timeout, |s| {
            db_status(s, db).is_some_and(|d| d.txid >= txid)
        })
    }

    /// Fails unless `db` settles at exactly `txid`: every transaction the workload made was
    /// captured as one, and nothing else.
    pub fn expect_txid(&self, db: &str, txid: u64) -> anyhow::Result<()> {
        self.wait_txid(db, txid, CATCH_UP_TIMEOUT)?;
        let settled = self.settled_txid(db);
        if settled != txid {
            bail!("node {}: {db} settled at TXID {settled}, expected {txid}", self.name);
        }
        Ok(())
    }

    /// Stops the node (lease released, API closed) and makes sure its mount is gone.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(running) = self.running.take() else { return };
        if self.handle.block_on(async { tokio::time::timeout(STOP_TIMEOUT, running.stop()).await }).is_err() {
            eprintln!("bench: node {} did not stop within {STOP_TIMEOUT:?}", self.name);
        }
        // The mount goes away when the driver's last reference to it is dropped, which a
        // thread of its own does a moment after the driver stops.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while is_mounted(&self.mount) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_mounted(&self.mount) {
            let _ = std::process::Command::new("fusermount3").arg("-uz").arg(&self.mount).status();
        }
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Waits until `replica` has `db` at the primary's settled position (same TXID and checksum).
pub fn catch_up(primary: &BenchNode, replica: &BenchNode, db: &str) -> anyhow::Result<()> {
    let txid = primary.settled_txid(db);
    let want = primary.db(db).map(|d| d.pos).unwrap_or_default();
    replica.wait_until(&format!("at {want} of {db}"), CATCH_UP_TIMEOUT, |s| {
        db_status(s, db).is_some_and(|d| d.txid >= txid)
    })?;
    let got = replica.db(db).map(|d| d.pos).unwrap_or_default();
    if got != want {
        bail!("{db}: replica {} is at {got}, primary {} at {want}", replica.name, primary.name);
    }
    Ok(())
}

/// Row count of `db` read through `node`'s mount (read-only, so it works on replicas).
pub fn rows_on(node: &BenchNode, db: &str) -> anyhow::Result<u64> {
    let conn = workloads::open_read_only(&node.mount.join(db))?;
    workloads::count_rows(&conn)
}

fn db_status<'a>(status: &'a Status, db: &str) -> Option<&'a DbStatus> {
    status.databases.iter().find(|d| d.name == db)
}

fn base_config(root: &Path, name: &str, retention: Option<u64>) -> Config {
    let dir = root.join(name);
    let mut config = Config::default();
    if retention.is_some() {
        config.data.retention_size = retention;
    }
    config.data.dir = dir.join("data");
    config.fuse.dir = dir.join("mnt");
    config.http.addr = "127.0.0.1:0".into();
    config.lease.kind = LeaseType::Static;
    config
}

/// A node in synchronous replication: `ids[0]` is its own id (written to `data/id`), and
/// every listed node must have a commit durably before it returns.
fn sync_config(root: &Path, name: &str, ids: &[u64]) -> anyhow::Result<Config> {
    let mut config = base_config(root, name, None);
    std::fs::create_dir_all(&config.data.dir).with_context(|| format!("creating {}", config.data.dir.display()))?;
    let id_file = config.data.dir.join(replite::daemon::ID_FILE);
    std::fs::write(&id_file, format!("{:016X}\n", ids[0])).with_context(|| format!("writing {}", id_file.display()))?;
    config.replication.sync.candidates = ids.iter().map(|id| format!("{id:016X}")).collect();
    config.replication.sync.timeout = Duration::from_secs(10);
    Ok(config)
}

fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1).is_some_and(|p| Path::new(p) == path)))
        .unwrap_or(false)
}
