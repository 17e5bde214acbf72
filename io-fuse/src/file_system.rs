//! The FUSE filesystem: translates kernel requests into reads and writes of the data
//! directory, and into [`CommitSink`] calls at SQLite's commit points.
//!
//! One flat directory. Byte-range locks are left to the kernel (the filesystem does not ask
//! for `FUSE_POSIX_LOCKS`), so SQLite's lock calls never leave the kernel; replite takes the
//! same locks through the mount when a replica applies a transaction (see `replica`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, error, trace, warn};

use crate::boundary::{CommitSink, Durability, JournalMode, Refusal};
use crate::database_node::{self, DbFile, read_page_size};
use crate::error::CaptureError;
use crate::journal_node;
use crate::names::{LAG_FILENAME, NodeKind, PRIMARY_FILENAME, classify};
use crate::virtual_node::{self, Status};
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
struct Inodes {
    by_name: HashMap<String, u64>,
    by_ino: HashMap<u64, String>,
    next: u64,
}

impl Inodes {
    fn ino(&mut self, name: &str) -> u64 {
        if let Some(&ino) = self.by_name.get(name) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_name.insert(name.to_owned(), ino);
        self.by_ino.insert(ino, name.to_owned());
        ino
    }

    fn forget_name(&mut self, name: &str) {
        self.by_name.remove(name);
    }
}

/// One open file.
#[derive(Debug)]
struct Handle {
    /// The backing file; `None` for virtual nodes.
    file: Option<File>,
    /// Keeps the kernel's passthrough registration of the backing file while this handle is
    /// open.
    _backing: Option<Arc<BackingId>>,
    kind: NodeKind,
    db: String,
}

/// What the mount tracks per database between requests.
#[derive(Debug, Default)]
pub(crate) struct DbState {
    /// A live journal was seen since the last commit point: database writes are inside a
    /// transaction SQLite can roll back.
    write_ok: bool,
    /// SQLite fsynced the journal or database since the last commit point.
    sync_seen: bool,
    /// Byte ranges written to the database inside the open rollback transaction.
    written: Vec<(u64, u64)>,
    wal: WalTrack,
    wal_open: usize,
    shm_open: usize,
}

/// State shared by every FUSE worker thread and the [`crate::Mount`] handle.
pub(crate) struct Shared {
    pub(crate) data_dir: PathBuf,
    pub(crate) read_only: bool,
    pub(crate) sink: Arc<dyn CommitSink>,
    pub(crate) cache_ttl: Duration,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    dbs: Mutex<HashMap<String, Arc<Mutex<DbState>>>>,
    pub(crate) status: RwLock<Status>,
    /// Thread id allowed to open files for writing on a read-only mount: the replica's apply,
    /// which needs a writable descriptor to take SQLite's write locks.
    pub(crate) apply_tid: AtomicI32,
    /// Whether passthrough was asked for, and whether the kernel granted it.
    passthrough_wanted: bool,
    passthrough: AtomicBool,
    /// One passthrough registration per inode, shared by all its open handles.
    backings: Mutex<HashMap<u64, Weak<BackingId>>>,
}

impl Shared {
    pub(crate) fn new(
        data_dir: PathBuf,
        read_only: bool,
        sink: Arc<dyn CommitSink>,
        cache_ttl: Duration,
        passthrough: bool,
    ) -> Shared {
        Shared {
            data_dir,
            read_only,
            sink,
            cache_ttl,
            inodes: Mutex::new(Inodes { by_name: HashMap::new(), by_ino: HashMap::new(), next: ROOT_INO + 1 }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dbs: Mutex::new(HashMap::new()),
            status: RwLock::new(Status::default()),
            apply_tid: AtomicI32::new(0),
            passthrough_wanted: passthrough,
            passthrough: AtomicBool::new(false),
            backings: Mutex::new(HashMap::new()),
        }
    }

    /// The inode the kernel knows `name` by, if it has one.
    pub(crate) fn known_ino(&self, name: &str) -> Option<u64> {
        lock(&self.inodes).by_name.get(name).copied()
    }

    fn db_state(&self, db: &str) -> Arc<Mutex<DbState>> {
        Arc::clone(lock(&self.dbs).entry(db.to_owned()).or_default())
    }

    fn name_of(&self, ino: u64) -> Option<String> {
        lock(&self.inodes).by_ino.get(&ino).cloned()
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, handle: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if !handle.kind.is_virtual() {
            let st = self.db_state(&handle.db);
            let mut st = lock(&st);
            match handle.kind {
                NodeKind::Wal => st.wal_open += 1,
                NodeKind::Shm => st.shm_open += 1,
                _ => {}
            }
        }
        lock(&self.handles).insert(fh, Arc::new(handle));
        FileHandle(fh)
    }

    /// Whether opens of `kind` go straight to the backing file: only the WAL index (SQLite's
    /// shared memory, never replicated). Every open of such an inode must be passthrough: the
    /// kernel refuses to mix it with cached opens. A replica's databases were passthrough too
    /// until measured slower (docs/decisions/fuse-locks-and-caching.md), and their reads must
    /// pass through the daemon anyway to present WAL databases in rollback mode.
    fn passthrough_for(&self, kind: NodeKind) -> bool {
        self.passthrough.load(Ordering::Relaxed) && kind == NodeKind::Shm
    }

    /// The inode's passthrough registration, made with `register` if there is none.
    fn backing(&self, ino: u64, register: impl FnOnce() -> io::Result<BackingId>) -> io::Result<Arc<BackingId>> {
        let mut backings = lock(&self.backings);
        if let Some(id) = backings.get(&ino).and_then(Weak::upgrade) {
            return Ok(id);
        }
        let id = Arc::new(register()?);
        backings.insert(ino, Arc::downgrade(&id));
        Ok(id)
    }

    fn ttl(&self, kind: NodeKind) -> Duration {
        if kind.is_virtual() { Duration::ZERO } else { self.cache_ttl }
    }

    fn file_attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
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

    fn virtual_attr(&self, ino: u64, size: usize) -> FileAttr {
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

    fn root_attr(&self) -> FileAttr {
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

    fn virtual_contents(&self, kind: NodeKind, db: &str) -> Option<Vec<u8>> {
        if kind == NodeKind::Pos && !self.data_dir.join(db).exists() {
            return None;
        }
        let status = self.status.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        virtual_node::contents(&status, kind, db)
    }

    /// The attributes of `name`, or `None` if it does not exist.
    fn attr_of_name(&self, name: &str) -> Result<Option<FileAttr>, Errno> {
        let Some((kind, db)) = classify(name) else { return Ok(None) };
        if kind.is_virtual() {
            let Some(contents) = self.virtual_contents(kind, db) else { return Ok(None) };
            let ino = lock(&self.inodes).ino(name);
            return Ok(Some(self.virtual_attr(ino, contents.len())));
        }
        match std::fs::metadata(self.data_dir.join(name)) {
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
    fn guard_db_write(&self, db: &str, st: &mut DbState) -> Result<bool, Errno> {
        if st.write_ok {
            return Ok(true);
        }
        match journal_node::is_live(&self.data_dir.join(format!("{db}-journal"))) {
            Ok(true) => {
                st.write_ok = true;
                Ok(true)
            }
            // WAL mode: checkpoints copy already-captured commits into the database.
            Ok(false) if st.wal_open > 0 => Ok(false),
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
    fn cuts_only_dead_pages(&self, db: &str, size: u64) -> bool {
        let Ok(file) = DbFile::open(&self.data_dir, db) else { return false };
        let Ok(Some(page_size)) = read_page_size(&file, db) else { return false };
        file.commit_pages(page_size).is_ok_and(|commit| u64::from(commit) * u64::from(page_size.get()) == size)
    }

    fn commit_rollback(&self, db: &str, st: &mut DbState, mode: JournalMode) -> Result<(), Errno> {
        let durability = if st.sync_seen { Durability::Requested } else { Durability::Deferred };
        let captured = journal_node::capture(&self.data_dir, db, mode, durability, &st.written);
        let result = match captured {
            Ok(None) => Ok(()),
            Ok(Some(tx)) => {
                debug!(db, pages = tx.pages.len(), commit = tx.commit, ?mode, "rollback journal commit");
                self.sink.commit(&tx).map_err(|refusal| refusal_errno(db, &refusal))
            }
            Err(e) => Err(capture_errno(db, &e)),
        };
        if result.is_ok() {
            st.write_ok = false;
            st.sync_seen = false;
            st.written.clear();
        }
        result
    }

    fn commit_wal(&self, db: &str, st: &mut DbState, ready: wal_node::ReadyCommit) -> Result<(), Errno> {
        let path = self.data_dir.join(format!("{db}-wal"));
        let result = if st.shm_open == 0 {
            error!(
                db,
                "WAL commit without a shared-memory index: WAL with locking_mode=EXCLUSIVE cannot be replicated; \
                 refusing the commit"
            );
            Err(Errno::EPERM)
        } else {
            match wal_node::capture(&path, db, ready) {
                Ok(tx) => {
                    debug!(db, pages = tx.pages.len(), commit = tx.commit, "WAL commit");
                    self.sink.commit(&tx).map_err(|refusal| refusal_errno(db, &refusal))
                }
                Err(e) => Err(capture_errno(db, &e)),
            }
        };
        match result {
            Ok(()) => st.wal.reset(),
            Err(_) => {
                if let Err(e) = wal_node::erase_frame_header(&path, ready.frame) {
                    error!(db, error = %e, "erasing a refused WAL commit frame");
                }
            }
        }
        result
    }

    fn write(&self, handle: &Handle, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let file = handle.file.as_ref().ok_or(Errno::EACCES)?;
        let pwrite = || file.write_all_at(data, offset).map_err(|e| io_errno(&e));
        trace!(db = handle.db, kind = ?handle.kind, offset, len = data.len(), "write");
        match handle.kind {
            NodeKind::Database => {
                let st = self.db_state(&handle.db);
                let mut st = lock(&st);
                if self.guard_db_write(&handle.db, &mut st)? {
                    st.written.push((offset, data.len() as u64));
                }
                pwrite()
            }
            NodeKind::Journal => {
                let st = self.db_state(&handle.db);
                let mut st = lock(&st);
                if journal_node::is_header_zeroing(offset, data) {
                    self.commit_rollback(&handle.db, &mut st, JournalMode::Persist)?;
                }
                pwrite()
            }
            NodeKind::Wal => {
                let st = self.db_state(&handle.db);
                let mut st = lock(&st);
                let path = self.data_dir.join(format!("{}-wal", handle.db));
                st.wal.before_write(&path, offset, data).map_err(|e| capture_errno(&handle.db, &e))?;
                pwrite()?;
                match st.wal.ready_commit(offset, data.len()) {
                    Some(ready) => self.commit_wal(&handle.db, &mut st, ready),
                    None => Ok(()),
                }
            }
            _ => pwrite(),
        }
    }

    fn truncate(&self, name: &str, kind: NodeKind, db: &str, size: u64) -> Result<(), Errno> {
        let set_len = || {
            let file = OpenOptions::new().write(true).open(self.data_dir.join(name)).map_err(|e| io_errno(&e))?;
            file.set_len(size).map_err(|e| io_errno(&e))
        };
        match kind {
            NodeKind::Journal if size == 0 => {
                let st = self.db_state(db);
                let mut st = lock(&st);
                self.commit_rollback(db, &mut st, JournalMode::Truncate)?;
                set_len()
            }
            NodeKind::Database => {
                let st = self.db_state(db);
                let mut st = lock(&st);
                // SQLite shrinks the file after the commit point, cutting only pages the
                // committed header already excludes.
                if !self.cuts_only_dead_pages(db, size) {
                    self.guard_db_write(db, &mut st)?;
                }
                set_len()
            }
            NodeKind::Wal => {
                let st = self.db_state(db);
                lock(&st).wal.reset();
                set_len()
            }
            _ => set_len(),
        }
    }

    fn unlink(&self, name: &str) -> Result<(), Errno> {
        let (kind, db) = classify(name).ok_or(Errno::ENOENT)?;
        if kind.is_virtual() {
            return Err(Errno::EACCES);
        }
        let path = self.data_dir.join(name);
        let remove = || {
            std::fs::remove_file(&path).map_err(|e| io_errno(&e))?;
            lock(&self.inodes).forget_name(name);
            Ok(())
        };
        match kind {
            NodeKind::Journal => {
                let st = self.db_state(db);
                let mut st = lock(&st);
                self.commit_rollback(db, &mut st, JournalMode::Delete)?;
                remove()
            }
            NodeKind::Database => {
                self.sink.delete(db).map_err(|refusal| refusal_errno(db, &refusal))?;
                remove()
            }
            NodeKind::Wal => {
                let st = self.db_state(db);
                lock(&st).wal.reset();
                remove()
            }
            _ => remove(),
        }
    }

    fn directory_entries(&self) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.data_dir).map_err(|e| io_errno(&e))? {
            let entry = entry.map_err(|e| io_errno(&e))?;
            if let Some(name) = entry.file_name().to_str()
                && let Some((kind, db)) = classify(name)
                && !kind.is_virtual()
            {
                if kind == NodeKind::Database {
                    names.push(format!("{db}-pos"));
                }
                names.push(name.to_owned());
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
fn open_flags(kind: NodeKind) -> FopenFlags {
    match kind {
        NodeKind::Journal => FopenFlags::FOPEN_DIRECT_IO,
        _ => FopenFlags::FOPEN_KEEP_CACHE,
    }
}

fn io_errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn refusal_errno(db: &str, refusal: &Refusal) -> Errno {
    warn!(db, %refusal, "commit refused");
    match refusal {
        Refusal::ReadOnly { .. } => Errno::EROFS,
        Refusal::Failed { .. } => Errno::EIO,
    }
}

fn capture_errno(db: &str, e: &CaptureError) -> Errno {
    error!(db, error = %e, "capturing a transaction at its commit point");
    Errno::EIO
}

/// The `fuser` filesystem.
pub(crate) struct ReplFs {
    pub(crate) shared: Arc<Shared>,
}

impl ReplFs {
    fn kind_of(&self, ino: INodeNo) -> Result<(String, NodeKind, String), Errno> {
        let name = self.shared.name_of(ino.0).ok_or(Errno::ENOENT)?;
        let (kind, db) = classify(&name).ok_or(Errno::ENOENT)?;
        let db = db.to_owned();
        Ok((name, kind, db))
    }

    fn caller_may_write(&self, req: &Request) -> bool {
        !self.shared.read_only || i32::try_from(req.pid()).ok() == Some(self.shared.apply_tid.load(Ordering::SeqCst))
    }
}

impl Filesystem for ReplFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if self.shared.passthrough_wanted {
            let granted =
                config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(1).is_ok();
            if !granted {
                warn!("the kernel does not offer FUSE passthrough; serving every read through the daemon");
            }
            self.shared.passthrough.store(granted, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        let Some((kind, _)) = classify(name) else { return reply.error(Errno::ENOENT) };
        match self.shared.attr_of_name(name) {
            Ok(Some(attr)) => reply.entry(&self.shared.ttl(kind), &attr, Generation(0)),
            // A negative entry the kernel may cache: every creation goes through this mount (or,
            // on replicas, through apply, which invalidates it).
            Ok(None) => {
                let mut attr = self.shared.virtual_attr(0, 0);
                attr.ino = INodeNo(0);
                reply.entry(&self.shared.ttl(kind), &attr, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == ROOT_INO {
            return reply.attr(&Duration::from_secs(3600), &self.shared.root_attr());
        }
        let Some(name) = self.shared.name_of(ino.0) else { return reply.error(Errno::ENOENT) };
        match self.shared.attr_of_name(&name) {
            Ok(Some(attr)) if attr.ino == ino => {
                let kind = classify(&name).map_or(NodeKind::Database, |(k, _)| k);
                reply.attr(&self.shared.ttl(kind), &attr);
            }
            Ok(_) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (name, kind, db) = match self.kind_of(ino) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        if let Some(size) = size {
            if kind.is_virtual() {
                return reply.error(Errno::EACCES);
            }
            if !self.caller_may_write(req) {
                return reply.error(Errno::EROFS);
            }
            if let Err(e) = self.shared.truncate(&name, kind, &db, size) {
                return reply.error(e);
            }
        }
        // Ownership, mode and time changes are accepted and ignored: the data directory's
        // files belong to the daemon.
        match self.shared.attr_of_name(&name) {
            Ok(Some(attr)) => reply.attr(&self.shared.ttl(kind), &attr),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        if !self.caller_may_write(req) {
            return reply.error(Errno::EROFS);
        }
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.shared.unlink(name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (name, kind, db) = match self.kind_of(ino) {
            Ok(found) => found,
            Err(e) => return reply.error(e),
        };
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        trace!(name, flags = flags.0, "open");
        if kind.is_virtual() {
            if writable {
                return reply.error(Errno::EACCES);
            }
            let fh = self.shared.add_handle(Handle { file: None, _backing: None, kind, db });
            return reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
        }
        if writable && !self.caller_may_write(req) {
            return reply.error(Errno::EROFS);
        }
        match OpenOptions::new().read(true).write(writable).open(self.shared.data_dir.join(&name)) {
            Ok(file) if self.shared.passthrough_for(kind) => {
                match self.shared.backing(ino.0, || reply.open_backing(&file)) {
                    Ok(id) => {
                        let backing = Some(Arc::clone(&id));
                        let fh = self.shared.add_handle(Handle { file: Some(file), _backing: backing, kind, db });
                        reply.opened_passthrough(fh, FopenFlags::empty(), &id);
                    }
                    Err(e) => {
                        warn!(name, error = %e, "passthrough registration failed");
                        reply.error(io_errno(&e));
                    }
                }
            }
            Ok(file) => {
                let fh = self.shared.add_handle(Handle { file: Some(file), _backing: None, kind, db });
                reply.opened(fh, open_flags(kind));
            }
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        if !self.caller_may_write(req) {
            return reply.error(Errno::EROFS);
        }
        let Some(name) = name.to_str() else { return reply.error(Errno::EINVAL) };
        let Some((kind, db)) = classify(name) else { return reply.error(Errno::EINVAL) };
        trace!(name, flags, "create");
        if kind.is_virtual() {
            return reply.error(Errno::EACCES);
        }
        if kind == NodeKind::Journal
            && let Err(refusal) = self.shared.sink.may_write(db)
        {
            refusal_errno(db, &refusal);
            return reply.error(Errno::EACCES);
        }
        let path = self.shared.data_dir.join(name);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(flags & libc::O_EXCL)
            .mode(mode & !umask & 0o7777)
            .open(&path)
            .and_then(|file| file.metadata().map(|meta| (file, meta)));
        match opened {
            Ok((file, meta)) => {
                let ino = lock(&self.shared.inodes).ino(name);
                let attr = self.shared.file_attr(ino, &meta);
                let ttl = self.shared.ttl(kind);
                if self.shared.passthrough_for(kind) {
                    match self.shared.backing(ino, || reply.open_backing(&file)) {
                        Ok(id) => {
                            let backing = Some(Arc::clone(&id));
                            let handle = Handle { file: Some(file), _backing: backing, kind, db: db.to_owned() };
                            let fh = self.shared.add_handle(handle);
                            reply.created_passthrough(&ttl, &attr, Generation(0), fh, FopenFlags::empty(), &id);
                        }
                        Err(e) => reply.error(io_errno(&e)),
                    }
                    return;
                }
                let fh = self.shared.add_handle(Handle { file: Some(file), _backing: None, kind, db: db.to_owned() });
                reply.created(&ttl, &attr, Generation(0), fh, open_flags(kind));
            }
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        let Some(file) = &handle.file else {
            let contents = self.shared.virtual_contents(handle.kind, &handle.db).unwrap_or_default();
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(contents.len());
            let end = start.saturating_add(size as usize).min(contents.len());
            return reply.data(&contents[start..end]);
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno(&e)),
            }
        }
        if self.shared.read_only && handle.kind == NodeKind::Database {
            database_node::present_as_rollback(offset, &mut buf[..filled]);
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if !self.caller_may_write(req) {
            return reply.error(Errno::EROFS);
        }
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        match self.shared.write(&handle, offset, data) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = lock(&self.shared.handles).remove(&fh.0);
        if let Some(handle) = handle
            && matches!(handle.kind, NodeKind::Wal | NodeKind::Shm)
        {
            let st = self.shared.db_state(&handle.db);
            let mut st = lock(&st);
            match handle.kind {
                NodeKind::Wal => st.wal_open = st.wal_open.saturating_sub(1),
                _ => st.shm_open = st.shm_open.saturating_sub(1),
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        let Some(file) = &handle.file else { return reply.ok() };
        let synced = if datasync { file.sync_data() } else { file.sync_all() };
        if let Err(e) = synced {
            return reply.error(io_errno(&e));
        }
        match handle.kind {
            NodeKind::Journal | NodeKind::Database => {
                let st = self.shared.db_state(&handle.db);
                lock(&st).sync_seen = true;
            }
            NodeKind::Wal => {
                if let Err(refusal) = self.shared.sink.sync(&handle.db) {
                    return reply.error(refusal_errno(&handle.db, &refusal));
                }
            }
            _ => {}
        }
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = match self.shared.directory_entries() {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    /// SQLite fsyncs the directory after creating or deleting a rollback journal
    /// (`synchronous=FULL`); the data directory gets the same fsync.
    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match File::open(&self.shared.data_dir).and_then(|dir| dir.sync_all()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
