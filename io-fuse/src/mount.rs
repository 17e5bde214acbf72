//! A running mount: the FUSE session, and the handle the daemon uses to tell the mount about
//! positions, the primary and lag, and to apply replicated transactions.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, Notifier};

use crate::owed_syncs::SyncCounts;
use replite_core::types::Pos;
use tracing::{debug, info, warn};

use crate::boundary::CommitSink;
use crate::error::MountError;
use crate::file_system::ReplFs;
use crate::names::{NodeKind, classify};
use crate::shared::{Shared, lock};

/// Bytes of SQLite's database header, at the start of page 1.
pub(crate) const DATABASE_HEADER_BYTES: i64 = 100;

/// What a node does with its databases. Set at mount ([`MountOptions::role`]) and switched
/// with [`Mount::set_role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Applications write; every commit goes to the [`CommitSink`].
    Primary,
    /// Applications only read: no write transaction may start or commit (SQLite reports
    /// `SQLITE_READONLY`, or `SQLITE_IOERR_*` where no errno can make it say so), and
    /// transactions arrive through [`Mount::apply_ltx`].
    Replica,
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Primary or replica, until [`Mount::set_role`] says otherwise.
    pub role: Role,
    /// FUSE worker threads. A commit holds one worker until the sink answers, so more than one
    /// keeps readers moving meanwhile.
    pub threads: usize,
    /// How long the kernel may cache names and attributes. Every change reaches the kernel
    /// through this mount or is invalidated explicitly, so this can be long.
    pub cache_ttl: Duration,
    /// Let users other than the mounting one in (needs `user_allow_other` for non-root).
    pub allow_other: bool,
    /// Use FUSE passthrough (Linux 6.9+, `CONFIG_FUSE_PASSTHROUGH`, needs CAP_SYS_ADMIN) where
    /// replite need not see the I/O: WAL indexes, and a replica's databases. Falls back to the
    /// plain path when the kernel does not offer it.
    pub passthrough: bool,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            role: Role::Primary,
            threads: 2,
            cache_ttl: Duration::from_secs(3600),
            allow_other: false,
            passthrough: false,
        }
    }
}

/// A mounted replite filesystem. Dropping it unmounts (lazily if files are still open).
pub struct Mount {
    pub(crate) shared: Arc<Shared>,
    pub(crate) notifier: Notifier,
    pub(crate) mountpoint: PathBuf,
    /// Serialises applies, and keeps each database's descriptor through the mount (with the
    /// inode it was opened on) between them: opening and closing it per apply cost four FUSE
    /// requests to this very daemon on the replication path.
    pub(crate) apply_lock: Mutex<HashMap<String, (u64, std::fs::File)>>,
    /// The same for WAL indexes (`-shm`), whose locks keep WAL connections out of an apply
    /// (`demoted_wal::WalGuard`). Kept open for the same reason, and one more: closing any
    /// descriptor of a file drops every POSIX lock the closing process holds on it, so an
    /// application in the daemon's own process (the tests) would lose its read locks.
    pub(crate) shm_lockers: Mutex<HashMap<String, (u64, std::sync::Arc<std::fs::File>)>>,
    /// Descriptors of databases opened through the mount by copies that read around a writer,
    /// kept open until closing them is safe (see `Mount::park_locker`).
    pub(crate) parked_lockers: Mutex<HashMap<String, Vec<std::fs::File>>>,
    session: Mutex<Option<BackgroundSession>>,
}

impl Mount {
    /// Mounts the databases of `data_dir` at `mountpoint`.
    pub fn new(
        data_dir: &Path,
        mountpoint: &Path,
        sink: Arc<dyn CommitSink>,
        options: &MountOptions,
    ) -> Result<Mount, MountError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| MountError::DataDir { path: data_dir.to_owned(), source })?;
        let data_dir =
            data_dir.canonicalize().map_err(|source| MountError::DataDir { path: data_dir.to_owned(), source })?;
        let shared = Arc::new(Shared::new(data_dir, options.role, sink, options.cache_ttl, options.passthrough));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("replite".to_owned()),
            MountOption::Subtype("replite".to_owned()),
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        if options.allow_other {
            config.acl = fuser::SessionACL::All;
        }
        config.n_threads = Some(options.threads.max(1));
        config.clone_fd = true;
        let fs = ReplFs { shared: Arc::clone(&shared) };
        let session = fuser::spawn_mount(fs, mountpoint, &config)
            .map_err(|source| MountError::Mount { path: mountpoint.to_owned(), source })?;
        let notifier = session.notifier();
        let _ = shared.notifier.set(notifier.clone());
        info!(mountpoint = %mountpoint.display(), role = ?options.role, "mounted");
        Ok(Mount {
            shared,
            notifier,
            mountpoint: mountpoint.to_owned(),
            apply_lock: Mutex::new(HashMap::new()),
            shm_lockers: Mutex::new(HashMap::new()),
            parked_lockers: Mutex::new(HashMap::new()),
            session: Mutex::new(Some(session)),
        })
    }

    /// Where the mount is.
    #[must_use]
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// How SQLite's fsyncs of journals and WALs have been answered since the mount started
    /// (decision 0017).
    #[must_use]
    pub fn sync_counts(&self) -> SyncCounts {
        self.shared.syncs.get()
    }

    /// What this node is now.
    #[must_use]
    pub fn role(&self) -> Role {
        self.shared.role()
    }

    /// Makes this node a primary or a replica without remounting. Takes effect for every
    /// request from now on, on files already open too.
    ///
    /// As a replica, no write transaction starts or commits, whatever a file was opened as:
    /// creating a rollback journal fails with `EACCES` (SQLite: `SQLITE_READONLY`); a fresh
    /// journal header, a WAL frame or a commit point fails with `EROFS` (`SQLITE_IOERR_*`).
    /// A transaction caught in flight is refused at its commit point without reaching the
    /// [`CommitSink`], and SQLite's rollback of it is let through. Checkpoints are let through
    /// too, so a demoted primary's WAL connections can drain their WAL when they close.
    ///
    /// As a primary, writes start again and every commit goes to the sink; the daemon stops
    /// calling [`Mount::apply_ltx`], which refuses to run on a primary.
    ///
    /// `.primary` exists only on a replica; the daemon names the new primary with
    /// [`Mount::set_primary`] after a demotion (this node does not know it).
    ///
    /// Like [`Mount::set_primary`], this may block while a commit is held at its commit point:
    /// the kernel's invalidation of the `.primary` entry takes the mount directory's lock,
    /// which a rollback commit point (unlinking a journal) holds until the sink answers. So
    /// it must not be called from the thread that answers the [`CommitSink`].
    pub fn set_role(&self, role: Role) {
        let before = self.shared.swap_role(role);
        if before == role {
            return;
        }
        info!(mountpoint = %self.mountpoint.display(), ?before, ?role, "role switched");
        if role == Role::Replica {
            self.retire_wal_databases();
        }
        // Replica readers see WAL databases as rollback-journal ones, with the mount's change
        // counter (page 1's header, see `database_node::present_to_replica`); what the kernel
        // cached of page 1 was shown for the old role. A demoted node's versions start afresh:
        // the primary changed pages since any it showed before.
        self.shared.forget_replica_versions();
        let databases: Vec<u64> = lock(&self.shared.inodes)
            .by_name
            .iter()
            .filter(|(name, _)| matches!(classify(name), Some((NodeKind::Database, _))))
            .map(|(_, &ino)| ino)
            .collect();
        for ino in databases {
            if let Err(e) = self.notifier.inval_inode(fuser::INodeNo(ino), 0, DATABASE_HEADER_BYTES) {
                debug!(ino, error = %e, "page 1 invalidation");
            }
        }
        // Whether `.primary` exists depends on the role.
        let _ = self.notifier.inval_entry(fuser::INodeNo(crate::shared::ROOT_INO), crate::PRIMARY_FILENAME.as_ref());
    }

    /// Sets what `<db>-pos` shows.
    pub fn set_position(&self, db: &str, pos: Pos) {
        self.shared
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .positions
            .insert(db.to_owned(), pos);
    }

    /// Sets what `.primary` shows on a replica; `None` removes it. A primary never shows it.
    pub fn set_primary(&self, primary: Option<String>) {
        self.shared.status.write().unwrap_or_else(std::sync::PoisonError::into_inner).primary = primary;
        let _ = self.notifier.inval_entry(fuser::INodeNo(crate::shared::ROOT_INO), crate::PRIMARY_FILENAME.as_ref());
    }

    /// Sets what `.lag` shows.
    pub fn set_lag_ms(&self, lag_ms: i64) {
        self.shared.status.write().unwrap_or_else(std::sync::PoisonError::into_inner).lag_ms = lag_ms;
    }

    /// Unmounts now, reporting failure (files still open make a plain unmount fail).
    pub fn unmount(self) -> io::Result<()> {
        self.unmount_shared()
    }

    /// Unmounts now although others still hold this mount (a daemon stopping: a thread that
    /// outlives it must not keep the mount alive past the process, which would leave it
    /// mounted with nobody serving it). Whatever they ask of it afterwards fails. With files
    /// still open the unmount is done lazily (detached now, gone when they close), as at drop.
    pub fn unmount_now(&self) {
        if let Err(e) = self.unmount_shared() {
            warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed; detaching lazily");
            lazy_unmount(&self.mountpoint);
        }
    }

    /// Unmounts for a process about to exit. If the mount is still busy, the FUSE connection
    /// is aborted first (a forced unmount), then the mount is detached. Aborting fails every
    /// request still pending on it, including one a FUSE worker has already read: a request
    /// of this process's own (a thread of the daemon looking a file up through its mount) is
    /// never answered once the process starts exiting, and its thread waits for that answer
    /// without end, so the process could never finish exiting. Applications still holding
    /// files in the mount see `ENOTCONN` at once instead of when the process has exited.
    pub fn unmount_for_exit(&self) {
        let Err(e) = self.unmount_shared() else { return };
        warn!(
            mountpoint = %self.mountpoint.display(),
            error = %e,
            "unmount failed; aborting the FUSE connection and detaching"
        );
        force_unmount(&self.mountpoint);
        lazy_unmount(&self.mountpoint);
    }

    fn unmount_shared(&self) -> io::Result<()> {
        // Descriptors through the mount would keep it busy.
        lock(&self.parked_lockers).clear();
        lock(&self.apply_lock).clear();
        lock(&self.shm_lockers).clear();
        match lock(&self.session).take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount_now();
    }
}

/// A forced unmount of a FUSE file system aborts its connection before the kernel checks
/// whether the mount is busy (`fuse_umount_begin`), so pending requests fail even when the
/// unmount itself does not happen. Not an error when the mount is already gone.
fn force_unmount(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else { return };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_FORCE) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            warn!(mountpoint = %mountpoint.display(), error = %e, "forced unmount failed");
        }
    }
}

fn lazy_unmount(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else { return };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        warn!(mountpoint = %mountpoint.display(), error = %io::Error::last_os_error(), "lazy unmount failed");
    }
}
