//! A real etcd server (Debian's `etcd-server`) for one test: loopback ports, a temporary data
//! directory, killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest an etcd start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct EtcdServer {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind loopback").local_addr().expect("addr").port()
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        EtcdServer::start_on("127.0.0.1")
    }

    /// An etcd whose clients connect to `ip` (its peer port stays on loopback).
    pub fn start_on(ip: &str) -> EtcdServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://{ip}:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path())
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server)");
        let server = EtcdServer { child, endpoint, _dir: dir };
        server.wait_until_healthy();
        server
    }

    fn wait_until_healthy(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd did not start listening on {} within {START_TIMEOUT:?}", self.endpoint);
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
