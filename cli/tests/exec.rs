//! `replite mount -- CMD`: the command runs once the node is primary, sees the mount, and its
//! exit code becomes the daemon's; SIGTERM to the daemon reaches the command; the mount is
//! gone afterwards.

mod support;

use std::time::Duration;

use support::cluster::{Lease, Node};

fn mounted(node: &Node) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == node.mount.to_str()))
        .unwrap_or(false)
}

#[test]
fn the_command_runs_on_the_mount_and_its_exit_code_is_the_daemons() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(root.path(), "solo", &Lease::Static { primary_url: None });
    let db = node.db_path("app.db");
    let script = format!(
        "grep -q ' {} fuse' /proc/mounts && touch {}.ran && exit 7",
        node.mount.display(),
        root.path().join("cmd").display()
    );
    node.start_with(&["sh", "-c", &script]);
    assert_eq!(node.wait_exit(), Some(7), "{}", node.log_text());
    assert!(root.path().join("cmd.ran").exists(), "the command ran with the mount in place");
    assert!(!mounted(&node), "unmounted after the command exited");
    assert!(!db.exists());
}

#[test]
fn sigterm_is_forwarded_to_the_command_and_its_status_returned() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(root.path(), "solo", &Lease::Static { primary_url: None });
    let ready = root.path().join("ready");
    let script = format!("trap 'exit 5' TERM; touch {}; while true; do sleep 0.05; done", ready.display());
    node.start_with(&["sh", "-c", &script]);
    let deadline = std::time::Instant::now() + support::cluster::WAIT;
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "the command never started\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(), Some(5), "{}", node.log_text());
    assert!(!mounted(&node));
}
