//! Real `replite mount` daemons for end-to-end tests: each node a separate process with its
//! own data directory, FUSE mount and HTTP port on 127.0.0.1, killed and unmounted on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind loopback").local_addr().expect("addr").port()
}

/// The first of `n` consecutive loopback ports that were all free a moment ago (for commands
/// that take a first port and count up from it, as `replite dev` does).
pub fn free_consecutive_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let first = free_port();
        let held: Vec<_> = (1..n).map_while(|i| TcpListener::bind(("127.0.0.1", first.checked_add(i)?)).ok()).collect();
        if held.len() == usize::from(n - 1) {
            return first;
        }
    }
    panic!("no {n} consecutive free loopback ports in 100 tries");
}

/// How a node finds the primary.
#[derive(Clone)]
pub enum Lease {
    /// `lease.type: static`; the primary's URL for replicas.
    Static { primary_url: Option<String> },
    /// `lease.type: etcd` at this endpoint, with this TTL.
    Etcd { endpoint: String, ttl: &'static str },
    /// `lease.type: consul` at this URL (Consul's 10 s minimum TTL).
    Consul { url: String },
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub mount: PathBuf,
    pub url: String,
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// The network namespace the daemon runs in (entered with `nsenter --net`, which keeps
    /// the mount namespace: its FUSE mount stays visible to the test).
    netns: Option<String>,
}

impl Node {
    /// Writes the node's config under `root/name` (not started yet).
    pub fn new(root: &Path, name: &str, lease: &Lease) -> Node {
        Node::new_with(root, name, lease, None, "")
    }

    /// Like `new`, with a fixed node id (written to `data/id` first) and extra YAML.
    pub fn new_with(root: &Path, name: &str, lease: &Lease, id: Option<u64>, extra_yaml: &str) -> Node {
        let dir = root.join(name);
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).expect("mount dir");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let lease_yaml = match lease {
            Lease::Static { primary_url: None } => {
                format!("lease:\n  type: static\n  candidate: true\n  hostname: {name}\n  advertise-url: {url}\n")
            }
            Lease::Static { primary_url: Some(p) } => {
                format!("lease:\n  type: static\n  candidate: false\n  hostname: primary\n  advertise-url: {p}\n")
            }
            Lease::Etcd { endpoint, ttl } => format!(
                "lease:\n  type: etcd\n  hostname: {name}\n  advertise-url: {url}\n  safety-margin: 500ms\n  reconnect-delay: 200ms\n  etcd:\n    endpoints: [{endpoint}]\n    key: replite/e2e\n    ttl: {ttl}\n"
            ),
            Lease::Consul { url: consul } => format!(
                "lease:\n  type: consul\n  hostname: {name}\n  advertise-url: {url}\n  reconnect-delay: 200ms\n  consul:\n    url: {consul}\n    key: litefs/e2e\n    ttl: 10s\n    lock-delay: 1s\n"
            ),
        };
        if let Some(id) = id {
            std::fs::create_dir_all(dir.join("data")).expect("data dir");
            std::fs::write(dir.join("data/id"), format!("{id:016X}\n")).expect("id file");
        }
        let yaml = format!(
            "data:\n  dir: {}\nfuse:\n  dir: {}\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  timestamp: true\n{lease_yaml}{extra_yaml}",
            dir.join("data").display(),
            mount.display()
        );
        let config = dir.join("replite.yml");
        std::fs::write(&config, yaml).expect("config");
        Node { name: name.into(), log: dir.join("log.txt"), dir, mount, url, port, config, child: None, netns: None }
    }

    /// Runs the daemon in network namespace `netns`, listening and advertising on `ip`.
    pub fn in_netns(mut self, netns: &str, ip: &str) -> Node {
        let url = format!("http://{ip}:{}", self.port);
        self.edit_config(|text| {
            text.replace(&format!("127.0.0.1:{}", self.port), &format!("{ip}:{}", self.port)).replace(&self.url, &url)
        });
        self.url = url;
        self.netns = Some(netns.to_owned());
        self
    }

    /// Rewrites the node's config file (before `start`).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(&self.config, edit(text)).expect("config");
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts `replite mount` with `command` after `--` (none: run until signalled).
    pub fn start_with(&mut self, command: &[&str]) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let mut command_line = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(env!("CARGO_BIN_EXE_replite"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_replite")),
        };
        let child = command_line
            .args(["mount", "-config"])
            .arg(&self.config)
            .args(if command.is_empty() { &[][..] } else { &["--"][..] })
            .args(command)
            .env("REPLITE_LOG", "info,replite=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start replite");
        self.child = Some(child);
    }

    /// SIGKILL: no clean shutdown, no lease release; the mount is detached afterwards.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        detach(&self.mount);
    }

    /// Waits (bounded) for the daemon to exit by itself; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // No detach here: callers check that the daemon unmounted by itself.
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                detach(&self.mount);
                panic!("{} did not exit within {WAIT:?}\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGTERM, and wait (bounded) for the exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                detach(&self.mount);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        detach(&self.mount);
        panic!("{} did not stop within {WAIT:?} of SIGTERM\n{}", self.name, self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/info`, or `None` while the node does not answer.
    pub fn info(&self) -> Option<Value> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let status = runtime.block_on(replite::api::get_info(&self.url)).ok()?;
        serde_json::to_value(status).ok()
    }

    /// Waits (bounded) until `/info` satisfies `cond`, and returns it.
    pub fn wait_for(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(info) = self.info()
                && cond(&info)
            {
                return info;
            }
            if Instant::now() > deadline {
                panic!("{}: not {what} within {WAIT:?}; last /info {:?}\n{}", self.name, self.info(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn role(&self) -> Option<String> {
        self.info().and_then(|i| i["role"].as_str().map(str::to_owned))
    }

    pub fn db_path(&self, db: &str) -> PathBuf {
        self.mount.join(db)
    }

    /// The position `/info` reports for `db`.
    pub fn pos(&self, db: &str) -> Option<String> {
        let info = self.info()?;
        info["databases"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == db)
            .and_then(|d| d["pos"].as_str().map(str::to_owned))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Lazily unmounts a FUSE mount a dead daemon left behind.
pub fn detach(mount: &Path) {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == mount.to_str()))
        .unwrap_or(false);
    if mounted {
        let _ = Command::new("fusermount3").arg("-uz").arg(mount).status();
    }
}

/// Asserts that a refused commit is what a node that may not write answers: a read-only error,
/// or an I/O error when the refusal came at the commit point itself.
pub fn assert_refused_commit(e: &rusqlite::Error) {
    assert!(
        matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::SystemIoFailure)),
        "a refused commit is a read-only or I/O error: {e:?}"
    );
}

/// Runs `replite ARGS…` to completion.
pub fn replite(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_replite")).args(args).output().expect("run replite")
}

/// The config lines of synchronous replication over these candidate ids, blocking on timeout.
pub fn sync_yaml(ids: &[u64]) -> String {
    format!(
        "replication:\n  sync:\n    candidates: [{}]\n    timeout: 10s\n    on-timeout: block\n",
        ids.iter().map(|i| format!("{i:016X}")).collect::<Vec<_>>().join(", ")
    )
}

/// Opens (creating it if needed) a database through the mount of a node `/info` just called
/// primary. The mount follows the role a moment after `/info` shows it (the switch runs on
/// the daemon's status thread), and until then creating a database there is refused: retried
/// for up to [`WAIT`].
pub fn open_on_primary(node: &Node, db: &str) -> rusqlite::Connection {
    let deadline = Instant::now() + WAIT;
    loop {
        match rusqlite::Connection::open(node.db_path(db)) {
            Ok(conn) => return conn,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("opening {db} on {}: {e}\n{}", node.name, node.log_text()),
        }
    }
}
