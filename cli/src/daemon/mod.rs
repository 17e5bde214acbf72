//! `replite mount`: the daemon. It joins the parts — the store and its recovery, the core
//! Node, the FUSE mount, the lease backend, the HTTP API and replication stream, and the
//! driver loop that owns the Node — then waits until this node is primary or in sync with
//! one, runs the configured commands, and shuts everything down cleanly when they exit or a
//! signal arrives (the lease is released, the mount unmounted).

mod exec;
mod node_id;
mod startup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use replite_core::ltx::{SQLITE_HEADER_SIZE, SqliteHeader};
use replite_core::node::Node;
use replite_core::stream::DbName;
use replite_fuse::{Mount, MountOptions, Role};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{Config, LeaseType};
use crate::driver::{Clock, CommitBridge, DiskStorage, Driver, Network, PageSums, Status, node_config};
use crate::lease::{LeaseRecord, Leaser};
use crate::store::Store;

pub use exec::{exit_code_of, run_command, split_command};
pub use node_id::{ID_FILE, load_or_create as load_node_id};

/// The default port of LiteFS's (and replite's) HTTP API.
pub const DEFAULT_PORT: u16 = 20202;

/// What `replite mount` was asked to do.
#[derive(Debug, Clone)]
pub struct MountArgs {
    /// The loaded config.
    pub config: Config,
    /// The file it came from.
    pub found: PathBuf,
    /// The command after `--`, which replaces `exec:` from the config.
    pub command: Vec<String>,
}

/// Runs the daemon until its command exits (returning that command's exit code) or, with no
/// command, until SIGINT or SIGTERM.
pub async fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    let MountArgs { config, found, command } = args;
    info!(config = %found.display(), "loaded config");
    let running = start(&config).await?;
    let status = running.status.clone();

    let mut signals = exec::Signals::new().context("installing signal handlers")?;
    if !config.skip_sync {
        tokio::select! {
            ready = running.ready() => { ready?; }
            signal = signals.next() => {
                info!(?signal, "signal before the node was ready; shutting down");
                running.stop().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let s = status.borrow().clone();
    info!(role = %s.role, node = %s.node_id, "ready");

    let commands = exec::commands(&config, &command);
    let code = exec::run_all(commands, &mut signals).await;
    running.stop().await;
    Ok(code)
}

/// A started daemon.
pub struct Running {
    /// Status as it changes.
    pub status: watch::Receiver<Status>,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    mount: Arc<Mount>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    driver: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
    server_stop: tokio::sync::oneshot::Sender<()>,
    /// The HTTP proxy (`proxy.*`), when configured: its task and its stop signal.
    proxy: Option<(tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>,
}

/// Longest the mount may take to follow a role the driver published (the switch runs on the
/// status thread, moments after the status changes).
const ROLE_SWITCH_TIMEOUT: Duration = Duration::from_secs(10);

impl Running {
    /// Waits until this node is ready for applications: primary with a writable mount, or a
    /// replica in sync with its primary.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let mut status = self.status.clone();
        let role =
            status.wait_for(|s| s.in_sync).await.context("the driver stopped before the node was ready")?.role.clone();
        if role == "primary" {
            let waited = tokio::time::timeout(ROLE_SWITCH_TIMEOUT, async {
                while self.mount.role() != Role::Primary {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
            waited.await.context("the mount did not become writable after the node became primary")?;
        }
        Ok(())
    }

    /// Shuts the Node down (releasing the lease), stops the API and unmounts.
    pub async fn stop(self) {
        if let Some((task, stop)) = self.proxy {
            let _ = stop.send(());
            let _ = task.await;
        }
        let _ = self.shutdown.send(());
        if let Err(e) = self.driver.await {
            warn!(error = %e, "the driver task failed");
        }
        let _ = self.server_stop.send(());
        let _ = self.server.await;
        // Now, not when the last holder lets go: the status thread may still hold the mount
        // as the process exits, which would leave it mounted and unserved. And for exit: a
        // request of this process's own still pending on the mount is failed, not left to
        // hang the exit (ROADMAP 9).
        self.mount.unmount_for_exit();
        info!("stopped");
    }
}

/// Starts everything; the node is running (and possibly not yet in sync) when this returns.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    if config.lease.kind == LeaseType::Unset {
        bail!("lease.type is not set; use static, etcd or consul");
    }
    let data_dir = absolute(&config.data.dir)?;
    let node_id = load_node_id(&data_dir)?;
    let http_addr = bind_addr("http.addr", &config.http.addr)?;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding the HTTP API to {}", config.http.addr))?;
    let http_addr = listener.local_addr()?;
    let hostname = if config.lease.kind == LeaseType::Static && !config.lease.candidate {
        system_hostname()
    } else {
        non_empty(&config.lease.hostname).unwrap_or_else(system_hostname)
    };
    let advertise_url = if config.lease.kind == LeaseType::Static && !config.lease.candidate {
        format!("http://{hostname}:{}", http_addr.port())
    } else {
        non_empty(&config.lease.advertise_url).unwrap_or_else(|| format!("http://{hostname}:{}", http_addr.port()))
    };
    let me = LeaseRecord { hostname: hostname.clone(), advertise_url: advertise_url.clone(), node_id: Some(node_id) };
    let static_primary = if config.lease.candidate {
        me.clone()
    } else {
        LeaseRecord {
            hostname: config.lease.hostname.clone(),
            advertise_url: config.lease.advertise_url.clone(),
            node_id: None,
        }
    };
    info!(node = %node_id, %hostname, %advertise_url, data = %data_dir.display(), "starting");
    let proxy_listener = bind_proxy(config).await?;
    let proxy_url = match &proxy_listener {
        Some(listener) => Some(crate::proxy::public_url(listener.local_addr()?, &advertise_url)),
        None => None,
    };
    warn_if_unjournaled(&data_dir);
    if !config.backup.kind.is_empty() {
        // LiteFS's only kind, litefs-cloud, was retired in 2024; replite's own are not built.
        warn!(kind = %config.backup.kind, "backup is configured but replite does not take backups yet; none are taken");
    }

    roll_back_hot_journals(&data_dir)?;
    fold_wals(&data_dir)?;
    let clock = Clock::start();
    let mut node = Node::new(node_config(config, node_id, rand::random())?)?;
    let (mut store, recovery) = Store::open(&data_dir).with_context(|| format!("opening {}", data_dir.display()))?;
    let deferred = startup::recover(&mut node, &mut store, || clock.now(), recovery);

    let (bridge, fs_requests) = CommitBridge::new();
    let halt_requests = bridge.requests();
    let write_gate = bridge.gate();
    let direct_lane = bridge.lane();
    let options = MountOptions { role: Role::Replica, allow_other: config.fuse.allow_other, ..MountOptions::default() };
    let mount_dir = absolute(&config.fuse.dir)?;
    std::fs::create_dir_all(&mount_dir).with_context(|| format!("creating {}", mount_dir.display()))?;
    let mount = Arc::new(
        Mount::new(&data_dir, &mount_dir, Arc::new(bridge), &options)
            .with_context(|| format!("mounting {}", mount_dir.display()))?,
    );
    let storage = Arc::new(DiskStorage::new(store, Some(Arc::clone(&mount))));
    let leaser = Leaser::connect(config, me.clone(), static_primary).await.context("connecting the lease backend")?;

    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    let (operator_tx, operator) = mpsc::unbounded_channel();
    let sums_dir = data_dir.clone();
    let mut driver = Driver::new(node, fs_requests, leaser, storage, Box::new(move |db| load_page_sums(&sums_dir, db)))
        .with_network(Network { me, accepted, operator })
        .with_write_gate(write_gate)
        .with_direct_lane(direct_lane)
        .with_surface(Arc::clone(&mount) as Arc<dyn crate::driver::Surface>);
    driver.execute_all(deferred);
    let status = driver.status();
    let events = driver.events();

    let halt_locks = crate::halt::HaltLocks::new(Arc::clone(&mount), halt_requests.clone(), status.clone());
    let replica_halts = crate::halt::ReplicaHalts::new(Arc::clone(&mount), halt_requests, status.clone(), node_id);
    let shown_halts: crate::api::HaltLocksSource = {
        let (primary_side, replica_side) = (Arc::clone(&halt_locks), Arc::clone(&replica_halts));
        Arc::new(move || primary_side.shown().into_iter().chain(replica_side.shown()).collect())
    };
    let router = crate::http::stream_routes(accepted_tx)
        .merge(crate::api::routes(
            status.clone(),
            events,
            operator_tx,
            node_id,
            config.lease.kind != LeaseType::Static,
            Some({
                let mount = Arc::clone(&mount);
                Arc::new(move || mount.sync_counts()) as crate::api::SyncCountsSource
            }),
            crate::api::NodeFacts {
                advertise_url: advertise_url.clone(),
                data_dir: data_dir.display().to_string(),
                candidate: config.lease.candidate,
                proxy_url: proxy_url.clone(),
                halt_locks: Some(shown_halts),
            },
        ))
        .merge(crate::api::transfer::routes(mount_dir, status.clone()))
        .merge(crate::halt::routes(halt_locks, replica_halts, node_id));
    let (server_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = crate::http::serve(listener, router, shutdown).await {
            warn!(error = %e, "the HTTP server stopped");
        }
    });
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(driver.run(async move {
        let _ = shutdown_rx.await;
    }));
    info!(addr = %http_addr, "HTTP API listening");
    let proxy = proxy_listener.map(|listener| spawn_proxy(listener, config, node_id, proxy_url, status.clone()));
    Ok(Running { status, http_addr, mount, shutdown, driver, server, server_stop, proxy })
}

/// Serves the proxy on `listener` until the returned sender fires (or is dropped).
fn spawn_proxy(
    listener: tokio::net::TcpListener,
    config: &Config,
    node_id: replite_core::NodeId,
    url: Option<String>,
    status: watch::Receiver<Status>,
) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let on_fly = std::env::var_os("FLY_APP_NAME").is_some();
    let settings = crate::proxy::Settings::from_config(&config.proxy, node_id.to_string(), on_fly);
    info!(url = url.unwrap_or_default(), target = %settings.target, db = %settings.db, forwarding = ?settings.forwarding, "proxy listening");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stopped.await;
        };
        if let Err(e) = crate::proxy::serve(listener, settings, status, stopped).await {
            warn!(error = %e, "the proxy stopped");
        }
    });
    (task, stop)
}

/// The proxy's listener, when `proxy.target` is set (LiteFS runs the proxy only then).
async fn bind_proxy(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if config.proxy.target.is_empty() {
        debug!("no proxy target set, skipping the proxy");
        return Ok(None);
    }
    let addr = bind_addr("proxy.addr", &config.proxy.addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the proxy to {}", config.proxy.addr))?;
    Ok(Some(listener))
}

/// Undoes what a crash left half-written: a transaction's pages in a database file whose
/// journal still holds their originals. Runs before recovery checksums the files.
/// A new LTX file is made durable with one fsync (decision 0008), which relies on a
/// journaling file system committing its name with it.
fn warn_if_unjournaled(data_dir: &Path) {
    match crate::fs_kind::of(data_dir) {
        Ok(kind) if kind.is_unjournaled_ext4() => warn!(
            data = %data_dir.display(),
            fs = %kind,
            "the data directory is on ext4 without a journal: after a power loss a file made durable \
             with one fsync may lose its name, and creating files gets slow after many deletions; \
             use a journaling file system"
        ),
        Ok(kind) => debug!(fs = %kind, "data directory's file system"),
        Err(e) => debug!(error = %e, "could not tell the data directory's file system"),
    }
}

fn roll_back_hot_journals(data_dir: &Path) -> anyhow::Result<()> {
    let dbs = crate::store::layout::dbs_dir(data_dir);
    let entries = match std::fs::read_dir(&dbs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dbs.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dbs.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        replite_fuse::roll_back_hot_journal(data_dir, &name)
            .with_context(|| format!("rolling back the hot journal of {name}"))?;
    }
    Ok(())
}

/// Folds into each database file the transactions a crash left in its WAL, as far as the
/// durable history reaches: the longest prefix of the WAL's commits whose database checksum
/// is the post-apply checksum of a verified LTX file. Commits past it (one the mount wrote
/// before the sink answered, so never acknowledged) are dropped with the WAL. Runs after the
/// hot-journal rollback and before recovery checksums the files, with nothing mounted.
fn fold_wals(data_dir: &Path) -> anyhow::Result<()> {
    let dbs = crate::store::layout::dbs_dir(data_dir);
    let entries = match std::fs::read_dir(&dbs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dbs.display())),
    };
    let mut with_wal = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dbs.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let wal = entry.path().join(crate::store::layout::WAL_FILE);
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            with_wal.push(name);
        }
    }
    if with_wal.is_empty() {
        return Ok(());
    }
    // Only the LTX files are needed; the database checksums it reports are of the files
    // before the fold, and `Store::open` recovers again after it.
    let recovery = crate::store::recover(data_dir).with_context(|| format!("reading {}", data_dir.display()))?;
    for name in with_wal {
        let durable: std::collections::BTreeSet<replite_core::Checksum> = DbName::new(&name)
            .ok()
            .and_then(|db| recovery.dbs.get(&db))
            .map(|rec| rec.ltx.iter().map(|f| f.post).collect())
            .unwrap_or_default();
        replite_fuse::fold_wal(data_dir, &name, |sum| durable.contains(&sum))
            .with_context(|| format!("folding the WAL of {name} into its database"))?;
    }
    Ok(())
}

/// A database's page checksums from its file under the LiteFS layout.
fn load_page_sums(data_dir: &Path, db: &DbName) -> std::io::Result<Option<PageSums>> {
    let path = replite_fuse::database_path(data_dir, db.as_str());
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut head = [0u8; SQLITE_HEADER_SIZE];
    let n = replite_core::ltx::read_full(&mut file, &mut head)?;
    if n == 0 {
        return Ok(None);
    }
    let header = SqliteHeader::parse(&head[..n]).map_err(std::io::Error::other)?;
    let file = std::fs::File::open(&path)?;
    PageSums::read(std::io::BufReader::new(file), header.page_size).map(Some)
}

/// LiteFS's address form (`key` names it in errors): `:20202` means every interface.
fn bind_addr(key: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    let full = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_owned() };
    full.parse().with_context(|| format!("{key} {addr:?} is not HOST:PORT or :PORT"))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir().context("reading the current directory")?.join(path))
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// How long `replite mount` waits for a clean shutdown before giving up on it.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litefs_style_addresses_bind_every_interface() {
        assert_eq!(bind_addr("http.addr", ":20202").expect("parses"), "0.0.0.0:20202".parse().expect("addr"));
        assert_eq!(bind_addr("http.addr", "127.0.0.1:9").expect("parses"), "127.0.0.1:9".parse().expect("addr"));
        let error = bind_addr("proxy.addr", "nonsense").expect_err("refused").to_string();
        assert!(error.contains("proxy.addr"), "{error}");
    }
}
