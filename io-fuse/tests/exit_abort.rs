//! A process that exits while one of its own threads waits on its mount still exits
//! (`Mount::unmount_for_exit`, ROADMAP 9).
//!
//! The kernel answers a request a FUSE worker has already read only with that worker's reply.
//! If the process exits then, the waiting thread never gets one and never finishes exiting:
//! the process stays a zombie holding the mount's device, unkillable. This happened to the
//! daemon at shutdown (a status thread looking a file up through its own mount).
//!
//! No libtest harness: the test runs itself as a child process (a process that may hang at
//! exit cannot be the test runner), mounts there, holds a commit of the child's own at its
//! commit point in the sink, unmounts for exit and exits; the parent checks the child is gone
//! in time and left no mount behind.

mod common;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RecordingSink, TempDir};
use replite_fuse::{CommitSink, Mount, MountOptions, Role};

/// Set in the child: the directory to mount in.
const CHILD_DIR: &str = "REPLITE_EXIT_ABORT_CHILD";
/// Set to `plain` in the child to unmount as a dropped mount does (without aborting): the
/// child then hangs, which shows what the test guards against. Only for a run by hand.
const CHILD_UNMOUNT: &str = "REPLITE_EXIT_ABORT_UNMOUNT";
/// How long the child may take to exit after it started; it needs well under a second.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
    }
    match a_process_exits_while_its_own_commit_waits_on_its_mount() {
        Ok(()) => {
            println!("test a_process_exits_while_its_own_commit_waits_on_its_mount ... ok");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("test a_process_exits_while_its_own_commit_waits_on_its_mount ... FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}

fn a_process_exits_while_its_own_commit_waits_on_its_mount() -> Result<(), String> {
    let root = TempDir::new("exit-abort");
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child =
        Command::new(exe).env(CHILD_DIR, &root.0).spawn().map_err(|e| format!("starting the child: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for the child: {e}"))? {
            break status;
        }
        if started.elapsed() > EXIT_DEADLINE {
            // A hung child is a zombie whose mount is detached: only its connection's abort in
            // fusectl frees it, which this machine may not have mounted. Leave it, say so.
            return Err(format!("the child had not exited {EXIT_DEADLINE:?} after it started (pid {})", child.id()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(format!("the child failed: {status}"));
    }
    let mnt = root.0.join("mnt");
    if is_mounted(&mnt) {
        return Err(format!("{} is still mounted", mnt.display()));
    }
    Ok(())
}

/// Mounts, holds a commit of this process's own at its commit point, unmounts for exit and
/// exits. Exit code 0 when everything went as planned.
fn child(dir: &Path) -> ! {
    let data = dir.join("data");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let sink = Arc::new(RecordingSink::default());
    let options = MountOptions { role: Role::Primary, threads: 2, ..MountOptions::default() };
    let mount = Mount::new(&data, &mnt, Arc::clone(&sink) as Arc<dyn CommitSink>, &options).expect("mount");
    sink.gate.close();
    let db = mnt.join("held.db");
    // The writer's commit point (the journal's unlink) reaches the sink and stays there: its
    // request has been read by a FUSE worker, which is the case the kernel cannot undo.
    let writer = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).expect("open through the mount");
        conn.execute_batch("CREATE TABLE t(x)").map_err(|e| e.to_string())
    });
    sink.gate.wait_arrivals(1);
    if std::env::var(CHILD_UNMOUNT).is_ok_and(|v| v == "plain") {
        mount.unmount_now();
    } else {
        mount.unmount_for_exit();
        // The abort answered the held request: the writer's commit failed and it is done.
        let outcome = writer.join().expect("writer thread");
        assert!(outcome.is_err(), "the held commit cannot have succeeded: {outcome:?}");
    }
    std::process::exit(0)
}

fn is_mounted(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|line| line.split(' ').nth(1) == path.to_str())
}
