//! State shared by the FUSE worker threads and the mount handle: names and inodes, open
//! handles, what is tracked per database between requests, and the commit-point logic that
//! turns journal and WAL operations into [`CommitSink`] calls.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo};
use tracing::{debug, error, trace, warn};

use crate::boundary::{CommitSink, Durability, JournalMode, Refusal};
use crate::database_node::{DbFile, read_page_size};
use crate::error::CaptureError;
use crate::journal_node;
use crate::kept_journal;
use crate::layout::{self, BACKED_KINDS};
use crate::ltx_room;
use crate::mount::Role;
use crate::names::{LAG_FILENAME, NodeKind, PRIMARY_FILENAME, classify, mount_name};
use crate::owed_syncs::{SyncCounters, WalSync};
use crate::unjournaled::Unjournaled;
use crate::virtual_node::{self, Status};
use crate::wal_ahead;
use crate::wal_node::{self, WalTrack};

/// Inode number of the mount's root directory.
pub(crate) const ROOT_INO: u64 = 1;

/// Locks a mutex, carrying on after a panic elsewhere: every guarded structure stays
/// consistent between statements, and a dead mount helps no one.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Names to inode numbers. A name keeps its number until it is unlinked; a file created
/// afterwards under the same name gets a new number, so the kernel never mixes the caches of
/// the two.
#[derive(Debug)]
pub(crate) struct Inodes {
    pub(crate) by_name: HashMap<String, u64>,
    pub(crate) by_ino: HashMap<u64, String>,
    pub(crate) next: u64,
}

impl Inodes {
    pub(crate) fn ino(&mut self, name: &str) -> u64 {
        if let Some(&ino) = self.by_name.get(name) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_name.insert(name.to_owned(), ino);
        self.by_ino.insert(ino, name.to_owned());
        ino
    }

    pub(crate) fn forget_name(&mut self, name: &str) {
        self.by_name.remove(name);
    }
}

/// One open file.
#[derive(Debug)]
pub(crate) struct Handle {
    /// The backing file; `None` for virtual nodes.
    pub(crate) file: Option<File>,
    /// Keeps the kernel's passthrough registration of the backing file while this handle is
    /// open.
    pub(crate) _backing: Option<Arc<BackingId>>,
    pub(crate) kind: NodeKind,
    pub(crate) db: String,
}

/// What the mount tracks per database between requests.
#[derive(Debug, Default)]
pub(crate) struct DbState {
    /// A live journal was seen since the last commit point: database writes are inside a
    /// transaction SQLite can roll back.
    pub(crate) write_ok: bool,
    /// SQLite fsynced the journal or database since the last commit point.
    pub(crate) sync_seen: bool,
    /// Byte ranges written to the database inside the open rollback transaction.
    pub(crate) written: Vec<(u64, u64)>,
    /// Their total, and the total at which the free space is checked next (`ltx_room`).
    pub(crate) written_bytes: u64,
    pub(crate) room_check_at: u64,
    /// A write of this transaction was refused for want of room: SQLite is rolling it back,
    /// and its rollback writes must go through.
    pub(crate) room_refused: bool,
    pub(crate) wal: WalTrack,
    /// Which WAL fsyncs were answered from the LTX history (decision 0017).
    pub(crate) wal_sync: WalSync,
    /// SQLite fsynced the rollback journal (or the directory) since the journal was last
    /// synced: the sync is owed before the database file is written (decision 0017).
    pub(crate) journal_owed: bool,
    /// The kernel's cache of the WAL holds the backing file's bytes up to here, stored ahead
    /// of the writer (`wal_ahead`); 0 when nothing is known to be.
    pub(crate) wal_filled_to: u64,
}

/// State shared by every FUSE worker thread and the [`crate::Mount`] handle.
pub(crate) struct Shared {
    pub(crate) data_dir: PathBuf,
    /// Whether this node is the primary ([`Role`]); switched at run time by
    /// [`crate::Mount::set_role`]. Every request reads it afresh: a replica refuses to start
    /// or commit a write transaction, whatever the handle was opened as.
    primary: AtomicBool,
    pub(crate) sink: Arc<dyn CommitSink>,
    pub(crate) cache_ttl: Duration,
    pub(crate) inodes: Mutex<Inodes>,
    pub(crate) handles: Mutex<HashMap<u64, Arc<Handle>>>,
    pub(crate) next_fh: AtomicU64,
    pub(crate) dbs: Mutex<HashMap<String, Arc<Mutex<DbState>>>>,
    /// Open handles per WAL and WAL index, by database. Kept apart from [`DbState`], whose
    /// lock a commit holds while the sink decides: opening a file must not wait for that.
    open_counts: Mutex<HashMap<(String, bool), usize>>,
    pub(crate) status: RwLock<Status>,
    /// Whether passthrough was asked for, and whether the kernel granted it.
    pub(crate) passthrough_wanted: bool,
    pub(crate) passthrough: AtomicBool,
    /// The kernel opens directories without asking (`FUSE_NO_OPENDIR_SUPPORT` granted).
    pub(crate) no_opendir: AtomicBool,
    /// One passthrough registration per inode, shared by all its open handles.
    pub(crate) backings: Mutex<HashMap<u64, Weak<BackingId>>>,
    /// Database directories whose entries changed (a file created or removed) since the last
    /// `fsyncdir`. SQLite fsyncs "the directory" after creating a journal; in the data
    /// directory the journal sits in its database's own directory, and the mount's single
    /// directory does not say which database SQLite meant.
    pub(crate) unsynced_dirs: Mutex<BTreeSet<PathBuf>>,
    /// The change counter a replica's readers see, per database
    /// (`database_node::present_to_replica`): a new one at every apply and after every role
    /// switch, so a reader's page cache never outlives a change.
    replica_versions: Mutex<HashMap<String, u32>>,
    /// Databases a replica's applications may write, under a halt lock the replica holds on
    /// its primary (`halt`): for them the mount acts as on a primary.
    writable_on_replica: Mutex<BTreeSet<String>>,
    /// The next version to hand out. Never repeats within a mount (until it wraps after 2^32
    /// applies, as SQLite's own counter does). It starts at a random number so that a version
    /// shown on a replica is unlikely to equal a primary's stored counter seen after a
    /// promotion: the stored counters are small numbers, and equal numbers would tell a
    /// reader its cache was still valid.
    next_replica_version: AtomicU32,
    /// Per database: held (read) by a copy that reads around a live rollback journal, taken
    /// (write) by the end of a journal (commit point or the end of a rollback) once the sink
    /// has answered, just around the journal operation. See `copy`.
    journal_gates: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    /// Per database, the open rollback transaction's unjournaled originals. Its own lock, not
    /// [`DbState`]'s: a copy reads it while a commit holds that one.
    pub(crate) unjournaled: Mutex<HashMap<String, Unjournaled>>,
    /// The session's notifier, set once the session runs: a dropped database's entries are
    /// invalidated from a request handler's side thread (`dropped`).
    pub(crate) notifier: std::sync::OnceLock<fuser::Notifier>,
    /// Attributes of dropped databases' files, by their old inode, as they were when dropped:
    /// applications that still have one open `fstat` it (SQLite does at every transaction).
    /// One entry per file dropped while known to the kernel, kept for the mount's life.
    pub(crate) unlinked_attrs: Mutex<HashMap<u64, FileAttr>>,
    /// Database inodes retired at a demotion because WAL connections had them open, by inode
    /// (`demoted_wal`). Forgotten when the database's last WAL-index handle closes.
    pub(crate) retired: Mutex<HashMap<u64, String>>,
    /// How journal and WAL fsyncs were answered (decision 0017).
    pub(crate) syncs: SyncCounters,
    /// Databases whose journal SQLite deleted but the mount kept, hidden, for the next
    /// transaction to reuse (`kept_journal`, decision 0018).
    kept_journals: Mutex<BTreeSet<String>>,
}

impl Shared {
    pub(crate) fn new(
        data_dir: PathBuf,
        role: Role,
        sink: Arc<dyn CommitSink>,
        cache_ttl: Duration,
        passthrough: bool,
    ) -> Shared {
        Shared {
            data_dir,
            primary: AtomicBool::new(role == Role::Primary),
            sink,
            cache_ttl,
            inodes: Mutex::new(Inodes { by_name: HashMap::new(), by_ino: HashMap::new(), next: ROOT_INO + 1 }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dbs: Mutex::new(HashMap::new()),
            open_counts: Mutex::new(HashMap::new()),
            status: RwLock::new(Status::default()),
            passthrough_wanted: passthrough,
            passthrough: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            backings: Mutex::new(HashMap::new()),
            unsynced_dirs: Mutex::new(BTreeSet::new()),
            replica_versions: Mutex::new(HashMap::new()),
            writable_on_replica: Mutex::new(BTreeSet::new()),
            next_replica_version: AtomicU32::new(random_u32()),
            journal_gates: Mutex::new(HashMap::new()),
            unjournaled: Mutex::new(HashMap::new()),
            notifier: std::sync::OnceLock::new(),
            unlinked_attrs: Mutex::new(HashMap::new()),
            retired: Mutex::new(HashMap::new()),
            syncs: SyncCounters::default(),
            kept_journals: Mutex::new(BTreeSet::new()),
        }
    }

    /// What this node is right now.
    pub(crate) fn role(&self) -> Role {
        if self.primary.load(Ordering::SeqCst) { Role::Primary } else { Role::Replica }
    }

    /// Switches the role; returns the previous one.
    pub(crate) fn swap_role(&self, role: Role) -> Role {
        if self.primary.swap(role == Role::Primary, Ordering::SeqCst) { Role::Primary } else { Role::Replica }
    }

    pub(crate) fn is_primary(&self) -> bool {
        self.role() == Role::Primary
    }

    /// Whether applications may write `db` here: on a primary, or under a halt lock.
    pub(crate) fn writes(&self, db: &str) -> bool {
        self.is_primary() || self.writable_on_replica(db)
    }

    /// Whether `db` is a replica's database its applications may write under a halt lock.
    pub(crate) fn writable_on_replica(&self, db: &str) -> bool {
        lock(&self.writable_on_replica).contains(db)
    }

    /// Lets a replica's applications write `db` (under a halt lock), or no longer.
    pub(crate) fn set_writable_on_replica(&self, db: &str, writable: bool) {
        let mut set = lock(&self.writable_on_replica);
        if writable {
            set.insert(db.to_owned());
        } else {
            set.remove(db);
        }
    }

    /// The change counter a replica's readers see for `db` now.
    pub(crate) fn replica_version(&self, db: &str) -> u32 {
        *lock(&self.replica_versions)
            .entry(db.to_owned())
            .or_insert_with(|| self.next_replica_version.fetch_add(1, Ordering::Relaxed))
    }

    /// Gives `db` a new version: its pages changed (an apply wrote some). Called while the
    /// apply still holds SQLite's EXCLUSIVE lock, before the kernel's cache of page 1 is
    /// dropped: the first reader after the apply then sees the new number.
    pub(crate) fn new_replica_version(&self, db: &str) {
        let version = self.next_replica_version.fetch_add(1, Ordering::Relaxed);
        lock(&self.replica_versions).insert(db.to_owned(), version);
    }

    /// Forgets every version: the role changed, and with it what readers were shown.
    pub(crate) fn forget_replica_versions(&self) {
        lock(&self.replica_versions).clear();
    }

    /// Whether `db`'s journal is kept on disk but deleted for SQLite (decision 0018).
    pub(crate) fn journal_kept(&self, db: &str) -> bool {
        lock(&self.kept_journals).contains(db)
    }

    /// SQLite creates `db`'s journal: whether it gets the kept one at `path` (which then shows
    /// again). A kept journal something else removed since is created anew.
    pub(crate) fn reuse_kept_journal(&self, db: &str, path: &Path) -> bool {
        lock(&self.kept_journals).remove(db) && path.exists()
    }

    /// A WAL is being created for `db`: a WAL database has no use for a kept journal.
    pub(crate) fn remove_kept_journal(&self, db: &str) {
        if !lock(&self.kept_journals).remove(db) {
            return;
        }
        match std::fs::remove_file(self.journal_path(db)) {
            Ok(()) => self.dir_changed(db),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(db, error = %e, "removing a kept journal"),
        }
    }

    /// The gate between copies and the end of `db`'s rollback journals.
    pub(crate) fn journal_gate(&self, db: &str) -> Arc<RwLock<()>> {
        Arc::clone(lock(&self.journal_gates).entry(db.to_owned()).or_default())
    }

    /// Runs `end`, an operation that ends a rollback journal (unlink, truncation to zero,
    /// zeroing its header), once no copy is reading around that journal. Only after the sink
    /// has answered: a copy must never wait for a commit held at its commit point.
    fn ending_journal<T>(&self, db: &str, end: impl FnOnce() -> T) -> T {
        let gate = self.journal_gate(db);
        let _ending = gate.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ended = end();
        lock(&self.unjournaled).remove(db);
        ended
    }

    /// Before a database write inside a rollback transaction: keeps the page's original if
    /// SQLite has not journaled it (see `unjournaled`).
    fn keep_unjournaled_original(&self, db: &str, file: &File, offset: u64, len: usize) {
        let mut unjournaled = lock(&self.unjournaled);
        let entry = unjournaled.entry(db.to_owned()).or_default();
        let Some(pgno) = entry.needs_original(offset, len) else { return };
        let mut original = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut original[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(db, pgno, error = %e, "reading an unjournaled original");
                    entry.incomplete = true;
                    return;
                }
            }
        }
        original.truncate(filled);
        entry.keep(pgno, original);
    }

    /// Whether a write transaction on `db` may start: never on a replica (the policy side is
    /// not asked, it has no say in what a replica's applications do), else the sink decides.
    pub(crate) fn may_start_write(&self, db: &str) -> Result<(), Refusal> {
        if !self.writes(db) {
            return Err(replica_refusal());
        }
        self.sink.may_write(db)
    }

    /// The backing file of `kind` of database `db`; `None` for virtual files.
    pub(crate) fn path(&self, kind: NodeKind, db: &str) -> Option<PathBuf> {
        layout::backing_path(&self.data_dir, kind, db)
    }

    pub(crate) fn database_path(&self, db: &str) -> PathBuf {
        layout::database_path(&self.data_dir, db)
    }

    pub(crate) fn journal_path(&self, db: &str) -> PathBuf {
        self.path(NodeKind::Journal, db).expect("journals have backing files")
    }

    pub(crate) fn wal_path(&self, db: &str) -> PathBuf {
        self.path(NodeKind::Wal, db).expect("WALs have backing files")
    }

    /// Makes sure database `db` has its directory, creating `dbs/` and `dbs/<db>/` as needed.
    /// Each new directory's parent is fsynced before this returns, so a file made durable
    /// inside it can never be lost with a directory entry that was not.
    pub(crate) fn ensure_db_dir(&self, db: &str) -> io::Result<()> {
        // A lookup first: `mkdir` locks the parent directory even when the entry exists, and
        // waits for whoever holds it (a replica's every apply comes here).
        if layout::db_dir(&self.data_dir, db).is_dir() {
            return Ok(());
        }
        let dbs = layout::dbs_dir(&self.data_dir);
        for (dir, parent) in [(dbs.clone(), self.data_dir.clone()), (layout::db_dir(&self.data_dir, db), dbs)] {
            match std::fs::create_dir(&dir) {
                Ok(()) => File::open(&parent)?.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Notes that an entry of `db`'s directory changed, for the next `fsyncdir`.
    pub(crate) fn dir_changed(&self, db: &str) {
        lock(&self.unsynced_dirs).insert(layout::db_dir(&self.data_dir, db));
    }

    /// Fsyncs every database directory whose entries changed since the last call.
    pub(crate) fn sync_dirs(&self) -> io::Result<()> {
        let dirs = std::mem::take(&mut *lock(&self.unsynced_dirs));
        for (i, dir) in dirs.iter().enumerate() {
            let synced = match File::open(dir) {
                Ok(file) => file.sync_all(),
                // Removed since (its database was deleted by hand): nothing left to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                // Not durable yet: the next fsyncdir must try these again.
                lock(&self.unsynced_dirs).extend(dirs.into_iter().skip(i));
                return Err(e);
            }
        }
        Ok(())
    }

    /// The inode the kernel knows `name` by, if it has one.
    pub(crate) fn known_ino(&self, name: &str) -> Option<u64> {
        lock(&self.inodes).by_name.get(name).copied()
    }

    pub(crate) fn db_state(&self, db: &str) -> Arc<Mutex<DbState>> {
        Arc::clone(lock(&self.dbs).entry(db.to_owned()).or_default())
    }

    pub(crate) fn name_of(&self, ino: u64) -> Option<String> {
        lock(&self.inodes).by_ino.get(&ino).cloned()
    }

    pub(crate) fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    pub(crate) fn add_handle(&self, handle: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if matches!(handle.kind, NodeKind::Wal | NodeKind::Shm) {
            *lock(&self.open_counts).entry((handle.db.clone(), handle.kind == NodeKind::Wal)).or_default() += 1;
        }
        lock(&self.handles).insert(fh, Arc::new(handle));
        FileHandle(fh)
    }

    /// Points every open handle on database `db` at the file now at its backing path (the
    /// old file was replaced by a rename): each descriptor is replaced in place (`dup3`) by
    /// one opened on the new file with the same access mode, so a handle never reads a file
    /// the database no longer is. Returns how many were moved.
    pub(crate) fn reopen_database_handles(&self, db: &str) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // The handles' Arcs keep their descriptors open (so their numbers cannot be reused)
        // while they are replaced, even if the kernel releases a handle meanwhile.
        let open: Vec<Arc<Handle>> = lock(&self.handles)
            .values()
            .filter(|h| h.kind == NodeKind::Database && h.db == db && h.file.is_some())
            .cloned()
            .collect();
        let path = self.database_path(db);
        for handle in &open {
            let Some(old) = &handle.file else { continue };
            // SAFETY: fcntl(F_GETFL) only reads the flags of a descriptor this handle owns.
            let flags = unsafe { libc::fcntl(old.as_raw_fd(), libc::F_GETFL) };
            if flags < 0 {
                return Err(io::Error::last_os_error());
            }
            let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
            let new = OpenOptions::new().read(true).write(writable).open(&path)?;
            // SAFETY: both descriptors are open and owned (the old one by `handle`, which the
            // Arc keeps alive); dup3 atomically makes the old number refer to the new file.
            if unsafe { libc::dup3(new.as_raw_fd(), old.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(open.len())
    }

    /// Forgets the handle `fh` (the kernel released it).
    pub(crate) fn remove_handle(&self, fh: FileHandle) {
        let handle = lock(&self.handles).remove(&fh.0);
        if let Some(handle) = handle
            && matches!(handle.kind, NodeKind::Wal | NodeKind::Shm)
        {
            let key = (handle.db.clone(), handle.kind == NodeKind::Wal);
            let mut counts = lock(&self.open_counts);
            if let Some(n) = counts.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&key);
                    if handle.kind == NodeKind::Shm {
                        drop(counts);
                        self.forget_retired(&handle.db);
                    }
                }
            }
        }
    }

    /// Databases whose WAL index (`-shm`) has an open handle: WAL connections are attached.
    pub(crate) fn dbs_with_open_wal_index(&self) -> Vec<String> {
        lock(&self.open_counts).keys().filter(|(_, wal)| !wal).map(|(db, _)| db.clone()).collect()
    }

    /// How many handles on `db`'s WAL (`wal`) or WAL index (`!wal`) are open.
    pub(crate) fn open_count(&self, db: &str, wal: bool) -> usize {
        lock(&self.open_counts).get(&(db.to_owned(), wal)).copied().unwrap_or(0)
    }

    /// Whether opens of `kind` go straight to the backing file: only the WAL index (SQLite's
    /// shared memory, never replicated). Every open of such an inode must be passthrough: the
    /// kernel refuses to mix it with cached opens. A replica's databases were passthrough too
    /// until measured slower (docs/decisions/fuse-locks-and-caching.md), and their reads must
    /// pass through the daemon anyway to present WAL databases in rollback mode.
    pub(crate) fn passthrough_for(&self, kind: NodeKind) -> bool {
        self.passthrough.load(Ordering::Relaxed) && kind == NodeKind::Shm
    }

    /// The inode's passthrough registration, made with `register` if there is none.
    pub(crate) fn backing(
        &self,
        ino: u64,
        register: impl FnOnce() -> io::Result<BackingId>,
    ) -> io::Result<Arc<BackingId>> {
        let mut backings = lock(&self.backings);
        if let Some(id) = backings.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let id = Arc::new(register()?);
        backings.insert(ino, Arc::downgrade(&id));
        Ok(id)
    }

    pub(crate) fn ttl(&self, kind: NodeKind) -> Duration {
        if kind.is_virtual() { Duration::ZERO } else { self.cache_ttl }
    }

    pub(crate) fn file_attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        let time = |secs: i64, nsecs: i64| {
            UNIX_EPOCH + Duration::new(u64::try_from(secs).unwrap_or(0), u32::try_from(nsecs).unwrap_or(0))
        };
        FileAttr {
            ino: INodeNo(ino),
            size: meta.len(),
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: 1,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(crate) fn virtual_attr(&self, ino: u64, size: usize) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: size as u64,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o444,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(crate) fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(ROOT_INO),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(crate) fn virtual_contents(&self, kind: NodeKind, db: &str) -> Option<Vec<u8>> {
        if kind == NodeKind::Pos && !self.database_path(db).exists() {
            return None;
        }
        // LiteFS's convention, which applications test: `.primary` exists only on replicas.
        if kind == NodeKind::Primary && self.is_primary() {
            return None;
        }
        let status = self.status.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        virtual_node::contents(&status, kind, db)
    }

    /// The attributes of `name`, or `None` if it does not exist.
    pub(crate) fn attr_of_name(&self, name: &str) -> Result<Option<FileAttr>, Errno> {
        let Some((kind, db)) = classify(name) else { return Ok(None) };
        if kind.is_virtual() {
            let Some(contents) = self.virtual_contents(kind, db) else { return Ok(None) };
            let ino = lock(&self.inodes).ino(name);
            return Ok(Some(self.virtual_attr(ino, contents.len())));
        }
        let Some(path) = self.path(kind, db) else { return Ok(None) };
        if kind == NodeKind::Journal && self.journal_kept(db) {
            return Ok(None);
        }
        match std::fs::metadata(path) {
            Ok(meta) => {
                let ino = lock(&self.inodes).ino(name);
                Ok(Some(self.file_attr(ino, &meta)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_errno(&e)),
        }
    }

    /// Database writes must sit inside a transaction SQLite can roll back and replite can see.
    /// Returns whether the write belongs to a rollback transaction (and must be captured).
    pub(crate) fn guard_db_write(&self, db: &str, st: &mut DbState) -> Result<bool, Errno> {
        if st.write_ok {
            return Ok(true);
        }
        match journal_node::is_live(&self.journal_path(db)) {
            Ok(true) => {
                st.write_ok = true;
                Ok(true)
            }
            // WAL mode: checkpoints copy already-captured commits into the database. A replica
            // allows them too: a demoted primary's WAL connections must be able to drain their
            // WAL into the database when they close, or later readers would take its stale
            // frames over the pages replication writes.
            Ok(false) if self.open_count(db, true) > 0 => Ok(false),
            // Not SQLite rolling back a transaction, not a checkpoint: a plain write, which a
            // replica refuses as a read-only filesystem would.
            Ok(false) if !self.writes(db) => Err(Errno::EROFS),
            Ok(false) => {
                error!(
                    db,
                    "database write outside a rollback journal or WAL transaction: journal_mode=OFF and \
                     journal_mode=MEMORY cannot be replicated; refusing the write"
                );
                Err(Errno::EPERM)
            }
            Err(e) => {
                error!(db, error = %e, "checking the journal before a database write");
                Err(Errno::EIO)
            }
        }
    }

    /// Whether truncating `db` to `size` bytes removes only pages past its committed size.
    pub(crate) fn cuts_only_dead_pages(&self, db: &str, size: u64) -> bool {
        let Ok(file) = DbFile::open(&self.data_dir, db) else { return false };
        let Ok(Some(page_size)) = read_page_size(&file, db) else { return false };
        file.commit_pages(page_size).is_ok_and(|commit| u64::from(commit) * u64::from(page_size.get()) == size)
    }

    pub(crate) fn commit_rollback(&self, db: &str, st: &mut DbState, mode: JournalMode) -> Result<(), Errno> {
        let durability = if st.sync_seen { Durability::Requested } else { Durability::Deferred };
        let captured = journal_node::capture(&self.data_dir, db, mode, durability, &st.written);
        let result = match captured {
            // Nothing changed: a commit of no pages, or the journal of a transaction SQLite has
            // just rolled back (which a replica must let SQLite finish, or the journal stays hot).
            Ok(None) => Ok(()),
            // A transaction that began while this node was primary: it may not commit now.
            Ok(Some(_)) if !self.writes(db) => Err(refusal_errno(db, &replica_refusal())),
            Ok(Some(tx)) => {
                debug!(db, pages = tx.pages.len(), commit = tx.commit, ?mode, "rollback journal commit");
                self.sink.commit(&tx).map_err(|refusal| refusal_errno(db, &refusal))
            }
            Err(e) => Err(capture_errno(db, &e)),
        };
        if result.is_ok() {
            st.write_ok = false;
            st.sync_seen = false;
            st.journal_owed = false;
            st.written.clear();
            st.written_bytes = 0;
            st.room_check_at = 0;
            st.room_refused = false;
        }
        result
    }

    /// On a primary, inside a rollback transaction: refuses the write with `ENOSPC` (SQLite:
    /// `SQLITE_FULL`) when the transaction's LTX file would no longer fit (`ltx_room`). The
    /// write stays recorded: SQLite rolls the transaction back, rewriting it among others.
    fn check_ltx_room(&self, db: &str, st: &mut DbState) -> Result<(), Errno> {
        if st.room_refused || st.written_bytes < st.room_check_at || !self.writes(db) {
            return Ok(());
        }
        st.room_check_at = st.written_bytes + ltx_room::CHECK_EVERY_BYTES;
        let needed = ltx_room::needed_for(st.written_bytes);
        match ltx_room::free_bytes(&self.data_dir) {
            Ok(free) if free < needed => {
                st.room_refused = true;
                warn!(
                    db,
                    free,
                    needed,
                    "refusing a database write: the transaction's LTX file would not fit (No space left on device)"
                );
                Err(Errno::ENOSPC)
            }
            Ok(_) => Ok(()),
            // Not knowing is no reason to refuse: the commit point reports a real ENOSPC.
            Err(e) => {
                debug!(db, error = %e, "statvfs of the data directory");
                Ok(())
            }
        }
    }

    /// SQLite fsynced `db`'s WAL. Every commit in it is durable in the LTX history once the
    /// sink answers; the WAL file itself is synced (`sync_file`) only where SQLite relies on
    /// the order of its writes (decision 0017).
    pub(crate) fn wal_fsync(&self, db: &str, sync_file: impl FnOnce() -> Result<(), Errno>) -> Result<(), Errno> {
        self.sink.sync(db).map_err(|refusal| refusal_errno(db, &refusal))?;
        let st = self.db_state(db);
        let mut st = lock(&st);
        let needed = st.wal_sync.fsync_needs_wal_sync();
        if needed {
            sync_file()?;
            // With the WAL's directory entry: SQLite's own `fsyncdir` is not carried out.
            self.sync_dirs().map_err(|e| io_errno(&e))?;
            st.wal_sync.settled();
        }
        self.syncs.wal(needed);
        Ok(())
    }

    /// SQLite fsynced `db`'s rollback journal: answered at once, the sync owed until the
    /// database file is written (decision 0017).
    pub(crate) fn journal_fsync(&self, db: &str) {
        let st = self.db_state(db);
        let mut st = lock(&st);
        st.sync_seen = true;
        st.journal_owed = true;
        self.syncs.journal(false);
    }

    /// Pays an owed journal sync before the database file is written: the journal, then the
    /// database directories whose entries changed (the journal's own, so that a rollback after
    /// a power loss finds it).
    fn sync_journal_before_database_write(&self, db: &str, st: &mut DbState) -> Result<(), Errno> {
        if !st.journal_owed {
            return Ok(());
        }
        if let Err(e) = self.sync_side_file(&self.journal_path(db)) {
            warn!(db, error = %e, "syncing the rollback journal before the database is written");
            return Err(io_errno(&e));
        }
        st.journal_owed = false;
        self.syncs.journal(true);
        Ok(())
    }

    /// Syncs a journal or WAL's data, if it exists (none: nothing to lose), then the database
    /// directories whose entries changed: SQLite's own `fsyncdir` is not carried out.
    fn sync_side_file(&self, path: &Path) -> io::Result<()> {
        match File::open(path).and_then(|file| file.sync_data()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
        self.sync_dirs()
    }

    /// Syncs `db`'s WAL before the database file is written (a checkpoint) if a fsync of the
    /// WAL was answered from the LTX history alone since it was last synced (decision 0017).
    fn sync_wal_before_checkpoint(&self, db: &str, st: &mut DbState) -> Result<(), Errno> {
        if !st.wal_sync.database_write_needs_wal_sync() {
            return Ok(());
        }
        if let Err(e) = self.sync_side_file(&self.wal_path(db)) {
            warn!(db, error = %e, "syncing the WAL before a checkpoint writes the database");
            return Err(io_errno(&e));
        }
        st.wal_sync.settled();
        self.syncs.wal(true);
        Ok(())
    }

    /// A commit frame is complete in the WAL, written through `wal` (the writer's open file).
    pub(crate) fn commit_wal(
        &self,
        db: &str,
        st: &mut DbState,
        wal: &File,
        ready: wal_node::ReadyCommit,
    ) -> Result<(), Errno> {
        let path = self.wal_path(db);
        let result = if self.open_count(db, false) == 0 {
            error!(
                db,
                "WAL commit without a shared-memory index: WAL with locking_mode=EXCLUSIVE cannot be replicated; \
                 refusing the commit"
            );
            Err(Errno::EPERM)
        } else {
            match wal_node::capture(wal, &path, db, ready) {
                Ok(tx) => {
                    debug!(db, pages = tx.pages.len(), commit = tx.commit, "WAL commit");
                    self.sink.commit(&tx).map_err(|refusal| refusal_errno(db, &refusal))
                }
                Err(e) => Err(capture_errno(db, &e)),
            }
        };
        match result {
            Ok(()) => st.wal.reset(),
            Err(errno) => {
                st.wal.refuse(ready.frame, errno);
                if let Err(e) = wal_node::erase_frame_header(&path, ready.frame) {
                    error!(db, error = %e, "erasing a refused WAL commit frame");
                }
            }
        }
        result
    }

    pub(crate) fn write(&self, handle: &Handle, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let file = handle.file.as_ref().ok_or(Errno::EACCES)?;
        let pwrite = || {
            file.write_all_at(data, offset).map_err(|e| {
                warn!(db = handle.db, kind = ?handle.kind, offset, error = %e, "writing through to the data directory");
                io_errno(&e)
            })
        };
        trace!(db = handle.db, kind = ?handle.kind, offset, len = data.len(), "write");
        match handle.kind {
            NodeKind::Database => {
                let st = self.db_state(&handle.db);
                let mut st = lock(&st);
                self.sync_journal_before_database_write(&handle.db, &mut st)?;
                self.sync_wal_before_checkpoint(&handle.db, &mut st)?;
                if self.guard_db_write(&handle.db, &mut st)? {
                    st.written.push((offset, data.len() as u64));
                    st.written_bytes += data.len() as u64;
                    self.keep_unjournaled_original(&handle.db, file, offset, data.len());
                    self.check_ltx_room(&handle.db, &mut st)?;
                }
                pwrite()
            }
            NodeKind::Journal => {
                let st = self.db_state(&handle.db);
                let mut st = lock(&st);
                if journal_node::is_header_zeroing(offset, data) {
                    self.commit_rollback(&handle.db, &mut st, JournalMode::Persist)?;
                    return self.ending_journal(&handle.db, pwrite);
                } else if journal_node::is_fresh_header(offset, data) {
                    lock(&self.unjournaled).remove(&handle.db);
                    // A transaction starts in a journal that outlives transactions (TRUNCATE,
                    // PERSIST): ask before the database is touched, as at journal creation.
                    self.may_start_write(&handle.db).map_err(|refusal| refusal_errno(&handle.db, &refusal))?;
                }
                lock(&self.unjournaled).entry(handle.db.clone()).or_default().journal_write(offset, data);
                pwrite()
            }
            NodeKind::Wal => {
                let st = self.db_state(&handle.db);
                let mut st = lock(&st);
                if !self.writes(&handle.db) {
                    // Every WAL write starts or continues a write transaction (checkpoints
                    // write the database, not the WAL): a replica refuses them all, so an open
                    // transaction can never reach its commit frame. SQLite reports
                    // SQLITE_IOERR_WRITE and drops the transaction, which lived only in memory
                    // and in frames past the last commit.
                    st.wal.reset();
                    return Err(refusal_errno(&handle.db, &replica_refusal()));
                }
                let path = self.wal_path(&handle.db);
                let was_open = st.wal.in_transaction();
                st.wal.before_write(&path, offset, data).map_err(|e| capture_errno(&handle.db, &e))?;
                if !was_open && st.wal.in_transaction() {
                    // The first write of a transaction: ask before anything reaches the WAL.
                    if let Err(refusal) = self.may_start_write(&handle.db) {
                        st.wal.reset();
                        return Err(refusal_errno(&handle.db, &refusal));
                    }
                }
                let completed = st.wal.completed_frame(offset, data.len());
                if let Some(frame) = completed
                    && let Some(errno) = st.wal.refused(frame)
                {
                    warn!(db = handle.db, frame, "refusing the rest of a refused WAL commit");
                    return Err(errno);
                }
                st.wal_sync.wal_written(offset);
                pwrite()?;
                self.fill_wal_ahead(&handle.db, &mut st, ino, file, offset + data.len() as u64);
                let Some(frame) = completed else { return Ok(()) };
                match st.wal.ready_commit(file, &path, frame) {
                    Ok(Some(ready)) => {
                        let frame = ready.frame;
                        let result = self.commit_wal(&handle.db, &mut st, file, ready);
                        if result.is_err() {
                            self.drop_cached_header(&handle.db, ino, frame, offset);
                        }
                        result
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(capture_errno(&handle.db, &e)),
                }
            }
            _ => pwrite(),
        }
    }

    /// Stores the WAL's bytes ahead of a write that ended at `end` into the kernel's cache
    /// (`wal_ahead`). Only a cost saving: a failure is logged and the write stands.
    fn fill_wal_ahead(&self, db: &str, st: &mut DbState, ino: u64, wal: &File, end: u64) {
        let Some(range) = wal_ahead::range_to_fill(st.wal_filled_to, end) else { return };
        let Some(notifier) = self.notifier.get() else { return };
        if let Err(e) = wal_ahead::fill(notifier, ino, wal, range.clone()) {
            debug!(db, ?range, error = %e, "storing the WAL ahead of the writer in the kernel's cache");
        }
        // Not tried again for this range either way: a failure only costs requests.
        st.wal_filled_to = range.end;
    }

    /// A refused commit frame's header at `frame` was erased in the backing file while the
    /// write at `request_start` is answered with an error, which makes the kernel drop the
    /// cache pages that write covers. A cache page before them holding part of the header
    /// (filled ahead, `wal_ahead`) is dropped here, or a reader on this node could still find
    /// the refused commit. That page is not one the request holds locked.
    fn drop_cached_header(&self, db: &str, ino: u64, frame: u64, request_start: u64) {
        let Some(range) = wal_ahead::header_outside_request(frame, request_start) else { return };
        let Some(notifier) = self.notifier.get() else { return };
        let (offset, len) = (range.start as i64, (range.end - range.start) as i64);
        if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), offset, len) {
            warn!(db, frame, error = %e, "dropping a refused commit frame's header from the kernel's cache");
        }
    }

    pub(crate) fn truncate(&self, kind: NodeKind, db: &str, size: u64) -> Result<(), Errno> {
        let path = self.path(kind, db).ok_or(Errno::EACCES)?;
        let set_len = || {
            let file = OpenOptions::new().write(true).open(&path).map_err(|e| io_errno(&e))?;
            file.set_len(size).map_err(|e| io_errno(&e))
        };
        match kind {
            NodeKind::Journal if size == 0 => {
                let st = self.db_state(db);
                let mut st = lock(&st);
                self.commit_rollback(db, &mut st, JournalMode::Truncate)?;
                self.ending_journal(db, set_len)
            }
            NodeKind::Database => {
                let st = self.db_state(db);
                let mut st = lock(&st);
                self.sync_journal_before_database_write(db, &mut st)?;
                self.sync_wal_before_checkpoint(db, &mut st)?;
                // SQLite shrinks the file after the commit point, cutting only pages the
                // committed header already excludes.
                if !self.cuts_only_dead_pages(db, size) {
                    self.guard_db_write(db, &mut st)?;
                }
                set_len()
            }
            NodeKind::Wal => {
                let st = self.db_state(db);
                let mut st = lock(&st);
                st.wal.reset();
                st.wal_filled_to = 0;
                set_len()?;
                // An empty WAL holds nothing a crash could lose; a shorter one still does.
                if size == 0 {
                    st.wal_sync.settled();
                }
                Ok(())
            }
            _ => set_len(),
        }
    }

    pub(crate) fn unlink(&self, name: &str) -> Result<(), Errno> {
        let (kind, db) = classify(name).ok_or(Errno::ENOENT)?;
        if kind.is_virtual() {
            return Err(Errno::EACCES);
        }
        let path = self.path(kind, db).ok_or(Errno::EACCES)?;
        let remove = || {
            std::fs::remove_file(&path).map_err(|e| io_errno(&e))?;
            lock(&self.inodes).forget_name(name);
            self.dir_changed(db);
            Ok(())
        };
        match kind {
            NodeKind::Journal => {
                if self.journal_kept(db) {
                    return Err(Errno::ENOENT);
                }
                let st = self.db_state(db);
                let mut st = lock(&st);
                self.commit_rollback(db, &mut st, JournalMode::Delete)?;
                self.ending_journal(db, || match kept_journal::retire(&path) {
                    Ok(true) => {
                        lock(&self.kept_journals).insert(db.to_owned());
                        lock(&self.inodes).forget_name(name);
                        Ok(())
                    }
                    Ok(false) => remove(),
                    Err(e) => Err(io_errno(&e)),
                })
            }
            NodeKind::Database => {
                if !self.is_primary() {
                    return Err(Errno::EROFS);
                }
                self.sink.delete(db).map_err(|refusal| refusal_errno(db, &refusal))?;
                self.drop_database(db)
            }
            NodeKind::Wal => {
                let st = self.db_state(db);
                let mut st = lock(&st);
                st.wal.reset();
                st.wal_filled_to = 0;
                remove()?;
                st.wal_sync.settled();
                Ok(())
            }
            _ => remove(),
        }
    }

    pub(crate) fn directory_entries(&self) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let mut names = Vec::new();
        let dbs = match std::fs::read_dir(layout::dbs_dir(&self.data_dir)) {
            Ok(dbs) => Some(dbs),
            // No database was ever created.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_errno(&e)),
        };
        for entry in dbs.into_iter().flatten() {
            let entry = entry.map_err(|e| io_errno(&e))?;
            // A directory whose name the mount cannot show (not UTF-8, or one that would read as
            // a side file of another database) is not a database of this mount.
            let Some(db) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if classify(&db) != Some((NodeKind::Database, db.as_str())) {
                continue;
            }
            for kind in BACKED_KINDS {
                let Some(path) = self.path(kind, &db) else { continue };
                if !path.exists() || (kind == NodeKind::Journal && self.journal_kept(&db)) {
                    continue;
                }
                if kind == NodeKind::Database {
                    names.push(mount_name(NodeKind::Pos, &db));
                }
                names.push(mount_name(kind, &db));
            }
        }
        names.push(LAG_FILENAME.to_owned());
        if self.virtual_contents(NodeKind::Primary, "").is_some() {
            names.push(PRIMARY_FILENAME.to_owned());
        }
        names.sort();
        let mut inodes = lock(&self.inodes);
        let mut entries =
            vec![(ROOT_INO, FileType::Directory, ".".to_owned()), (ROOT_INO, FileType::Directory, "..".to_owned())];
        entries.extend(names.into_iter().map(|name| (inodes.ino(&name), FileType::RegularFile, name)));
        Ok(entries)
    }
}

/// How the kernel should cache an opened file. Databases, WALs and WAL indexes keep their page
/// cache across opens: every write reaches it through this mount, and replicas invalidate what
/// they apply. The rollback journal is written once and read only to roll back, so its writes
/// skip the page cache: the kernel then sends each of SQLite's writes as one request instead of
/// splitting writes that straddle a cache page.
///
/// No file needs a FLUSH at close: writes reach the daemon synchronously, and byte-range locks
/// live in the kernel, which drops them at close without asking. `FOPEN_NOFLUSH` saves that
/// round trip (one per transaction in DELETE mode, which closes the journal every time).
pub(crate) fn open_flags(kind: NodeKind) -> FopenFlags {
    let caching = match kind {
        NodeKind::Journal => FopenFlags::FOPEN_DIRECT_IO,
        _ => FopenFlags::FOPEN_KEEP_CACHE,
    };
    caching | FopenFlags::FOPEN_NOFLUSH
}

/// A random number, from the standard library's per-process hash keys.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let hash = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (hash ^ (hash >> 32)) as u32
}

/// The refusal a replica gives: the same a sink gives a node that may not write.
pub(crate) fn replica_refusal() -> Refusal {
    Refusal::ReadOnly { reason: "this node is a replica".to_owned() }
}

pub(crate) fn io_errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

pub(crate) fn refusal_errno(db: &str, refusal: &Refusal) -> Errno {
    warn!(db, %refusal, "commit refused");
    match refusal {
        Refusal::ReadOnly { .. } => Errno::EROFS,
        Refusal::Failed { .. } => Errno::EIO,
        Refusal::NoSpace { .. } => Errno::ENOSPC,
    }
}

pub(crate) fn capture_errno(db: &str, e: &CaptureError) -> Errno {
    error!(db, error = %e, "capturing a transaction at its commit point");
    Errno::EIO
}
