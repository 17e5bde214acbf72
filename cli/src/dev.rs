//! `replite dev`: a local cluster in one command. Three `replite mount` daemons on 127.0.0.1,
//! each with its data and mount under one folder; the lease is a real etcd when one is
//! installed (so killing the primary shows a failover), else static. It prints where to point
//! `sqlite3`, then a live table of roles, positions and lag until Ctrl-C.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// `replite dev` options.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Folder for the nodes' data, mounts, configs and logs.
    #[arg(long, default_value = "replite-dev")]
    dir: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// First HTTP port; node N listens on PORT + N - 1.
    #[arg(long, default_value_t = 20202)]
    port: u16,
    /// Use a static lease even when etcd is installed.
    #[arg(long = "static")]
    static_lease: bool,
    /// Stop by itself after this many seconds (for scripts and tests).
    #[arg(long)]
    exit_after: Option<u64>,
}

/// How often the live view refreshes.
const REFRESH: Duration = Duration::from_secs(1);
/// Longest the cluster may take to elect a primary and bring replicas in sync.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        // Daemons first (they release the lease and unmount), etcd last.
        for (name, child) in self.0.iter_mut().rev() {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("{name} did not stop; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let dir = std::env::current_dir()?.join(&args.dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding the replite binary")?;
    let mut children = Children(Vec::new());

    let etcd = if args.static_lease { None } else { which("etcd") };
    let lease = match &etcd {
        Some(etcd) => {
            let client = args.port + 100;
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer = format!("http://127.0.0.1:{}", client + 1);
            let log = std::fs::File::create(dir.join("etcd.log"))?;
            let child = Command::new(etcd)
                .args(["--name", "dev", "--data-dir"])
                .arg(dir.join("etcd"))
                .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("dev={peer}")])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting etcd")?;
            children.0.push(("etcd".into(), child));
            wait_for_port(client)?;
            println!("lease: etcd at {endpoint} (kill the primary to watch a failover)");
            format!("  type: etcd\n  etcd:\n    endpoints: [{endpoint}]\n    key: replite/dev\n    ttl: 5s\n")
        }
        None => {
            println!("lease: static, node 1 is the primary (install etcd-server for failover)");
            String::new()
        }
    };

    let mut nodes = Vec::new();
    for n in 1..=args.nodes {
        let name = format!("node{n}");
        let port = args.port + n - 1;
        let node_dir = dir.join(&name);
        let mount = node_dir.join("mnt");
        std::fs::create_dir_all(&mount)?;
        let url = format!("http://127.0.0.1:{port}");
        let lease_yaml = if etcd.is_some() {
            format!("lease:\n  hostname: {name}\n  advertise-url: {url}\n{lease}")
        } else if n == 1 {
            format!("lease:\n  type: static\n  candidate: true\n  hostname: {name}\n  advertise-url: {url}\n")
        } else {
            format!(
                "lease:\n  type: static\n  candidate: false\n  hostname: node1\n  advertise-url: http://127.0.0.1:{}\n",
                args.port
            )
        };
        let config = node_dir.join("replite.yml");
        let yaml = format!(
            "data:\n  dir: {}\nfuse:\n  dir: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{lease_yaml}",
            node_dir.join("data").display(),
            mount.display()
        );
        std::fs::write(&config, yaml)?;
        detach_stale_mount(&mount);
        let log = std::fs::File::create(node_dir.join("log.txt"))?;
        let child = Command::new(&exe)
            .args(["mount", "-config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        children.0.push((name.clone(), child));
        nodes.push((name, url, mount));
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let statuses: Vec<_> =
            nodes.iter().map(|(_, url, _)| runtime.block_on(replite::api::get_info(url)).ok()).collect();
        if statuses.iter().all(|s| s.as_ref().is_some_and(|s| s.in_sync)) {
            break;
        }
        for (name, child) in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited ({status}); see its log under {}", dir.display());
            }
        }
        if Instant::now() > deadline {
            bail!("the cluster did not come up within {READY_TIMEOUT:?}; logs are under {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    println!("\n{} nodes are up. Point sqlite3 at any node's mount (writes go to the primary's):", nodes.len());
    for (name, url, mount) in &nodes {
        println!(
            "  {name}: sqlite3 {}    (API {url}, logs {})",
            mount.join("app.db").display(),
            dir.join(name).join("log.txt").display()
        );
    }
    println!("Press Ctrl-C to stop.\n");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook_flag(signal, &stop)?;
    }
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if args.exit_after.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<8} {:<10} {:<10} {:<36} {:>8} {:>8}",
            "NODE", "ROLE", "DATABASE", "POSITION", "LAG TX", "LAG MS"
        )?;
        for (name, url, _) in &nodes {
            match runtime.block_on(replite::api::get_info(url)) {
                Ok(s) if s.databases.is_empty() => writeln!(out, "{name:<8} {:<10} {:<10}", s.role, "-")?,
                Ok(s) => {
                    for d in &s.databases {
                        let lag = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
                        writeln!(
                            out,
                            "{name:<8} {:<10} {:<10} {:<36} {:>8} {:>8}",
                            s.role,
                            d.name,
                            d.pos,
                            lag(d.lag_txids),
                            lag(d.lag_ms)
                        )?;
                    }
                }
                Err(_) => writeln!(out, "{name:<8} {:<10}", "down")?,
            }
        }
        writeln!(out)?;
        drop(out);
        std::thread::sleep(REFRESH);
    }
    println!("stopping");
    drop(children);
    for (_, _, mount) in &nodes {
        detach_stale_mount(mount);
    }
    Ok(ExitCode::SUCCESS)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("etcd did not listen on 127.0.0.1:{port} within 20s")
}

/// A mount left by a killed earlier run would make the new mount fail.
fn detach_stale_mount(mount: &Path) {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == mount.to_str()))
        .unwrap_or(false);
    if mounted {
        let _ = Command::new("fusermount3").arg("-uz").arg(mount).status();
    }
}

/// Sets `flag` when `signal` arrives.
fn signal_hook_flag(signal: i32, flag: &std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<()> {
    signal_hook::flag::register(signal, std::sync::Arc::clone(flag)).context("installing a signal handler")?;
    Ok(())
}
