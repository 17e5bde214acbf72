//! The FUSE filesystem: translates kernel requests into reads and writes of the data
//! directory, and into [`CommitSink`] calls at SQLite's commit points.
//!
//! One flat directory. Byte-range locks are left to the kernel (the filesystem does not ask
//! for `FUSE_POSIX_LOCKS`), so SQLite's lock calls never leave the kernel; replite takes the
//! same locks through the mount when a replica applies a transaction (see `replica`).

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use tracing::{trace, warn};

use crate::database_node;
use crate::names::{NodeKind, classify};
use crate::shared::{Handle, ROOT_INO, Shared, io_errno, lock, open_flags, refusal_errno};

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
}

impl Filesystem for ReplFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // SQLite opens the directory to fsync it after creating a rollback journal, every
        // transaction: without these two requests (OPENDIR, RELEASEDIR) per transaction the
        // directory needs no handle (`readdir` and `fsyncdir` ignore it). Lookups in the one
        // directory need no kernel-side serialisation either (the inode table has its lock).
        // Both are optional: an older kernel just keeps sending the requests.
        let no_opendir = config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT).is_ok();
        self.shared.no_opendir.store(no_opendir, Ordering::Relaxed);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
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
            // An `fstat` on a descriptor whose file was unlinked since (a dropped database an
            // application still has open): POSIX answers from the open file.
            Ok(_) => match self.shared.stale_attr(ino.0, &name) {
                Some(attr) => reply.attr(&Duration::ZERO, &attr),
                None => reply.error(Errno::ENOENT),
            },
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
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
            // The name may have been unlinked and created again since: the path is the new
            // file's, not this one's.
            if self.shared.unlinked(ino.0, kind, &db) {
                return reply.error(Errno::EROFS);
            }
            if let Err(e) = self.shared.truncate(kind, &db, size) {
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

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.shared.unlink(name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
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
        // A replica opens files for writing too: its role can change while they are open, so
        // what it refuses is each write, truncation and creation (see `Shared::write`), not the
        // descriptor. A connection opened on a replica then writes as soon as the node is
        // promoted, and the apply's lock descriptor needs no exception.
        let Some(path) = self.shared.path(kind, &db) else { return reply.error(Errno::ENOENT) };
        match OpenOptions::new().read(true).write(writable).open(path) {
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
        _req: &Request,
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
        let Some(name) = name.to_str() else { return reply.error(Errno::EINVAL) };
        let Some((kind, db)) = classify(name) else { return reply.error(Errno::EINVAL) };
        trace!(name, flags, "create");
        if kind.is_virtual() {
            return reply.error(Errno::EACCES);
        }
        // Creating a rollback journal starts a write transaction. EACCES, not EROFS: it is
        // the one errno SQLite turns into SQLITE_READONLY here (EROFS makes it retry the open
        // read-only and report SQLITE_CANTOPEN).
        if kind == NodeKind::Journal
            && let Err(refusal) = self.shared.may_start_write(db)
        {
            refusal_errno(db, &refusal);
            return reply.error(Errno::EACCES);
        }
        // WAL connections from before a demotion lock another inode than this transaction
        // would (`demoted_wal`): a rollback writer would not exclude them.
        if kind == NodeKind::Journal && !self.shared.retired_inos(db).is_empty() {
            warn!(db, "rollback write refused while WAL connections from before a demotion are open");
            return reply.error(Errno::EACCES);
        }
        // A replica's WAL and WAL index belong to its own readers of a WAL database (never
        // replicated; a replica's WAL stays empty, its writes are refused).
        if !self.shared.writes(db) && !matches!(kind, NodeKind::Wal | NodeKind::Shm) {
            return reply.error(Errno::EROFS);
        }
        let Some(path) = self.shared.path(kind, db) else { return reply.error(Errno::EACCES) };
        // A new database gets its own directory; side files are created only beside an
        // existing one (the open fails with ENOENT otherwise, as in a missing directory).
        if kind == NodeKind::Database
            && let Err(e) = self.shared.ensure_db_dir(db)
        {
            warn!(db, error = %e, "creating the database directory");
            return reply.error(io_errno(&e));
        }
        // A dropped database keeps its directory (its LTX history): a side file still needs
        // its database, or a connection left open on the dropped one could start a journal
        // that would later be rolled back over a new database of the same name.
        if kind != NodeKind::Database && !self.shared.database_path(db).exists() {
            return reply.error(Errno::ENOENT);
        }
        // The journal SQLite deleted at its last commit, kept (decision 0018): it does not
        // exist for SQLite, so an exclusive creation succeeds, and no directory entry changes.
        let reused = kind == NodeKind::Journal && self.shared.reuse_kept_journal(db, &path);
        if kind == NodeKind::Wal {
            self.shared.remove_kept_journal(db);
        }
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(if reused { 0 } else { flags & libc::O_EXCL })
            .mode(mode & !umask & 0o7777)
            .open(&path)
            .and_then(|file| file.metadata().map(|meta| (file, meta)));
        match opened {
            Ok((file, meta)) => {
                if !reused {
                    self.shared.dir_changed(db);
                }
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
        ino: INodeNo,
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
        // A dropped database (`dropped`): its connections must not read on, and write, it.
        if handle.kind == NodeKind::Database && self.shared.unlinked(ino.0, handle.kind, &handle.db) {
            return reply.error(Errno::EIO);
        }
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
        if handle.kind == NodeKind::Database
            && offset < database_node::PRESENTED_HEADER.end
            && offset + filled as u64 > database_node::PRESENTED_HEADER.start
            && !self.shared.writes(&handle.db)
        {
            let version = self.shared.replica_version(&handle.db);
            database_node::present_to_replica(offset, &mut buf[..filled], version);
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        if self.shared.unlinked(ino.0, handle.kind, &handle.db) {
            return reply.error(Errno::EROFS);
        }
        match self.shared.write(&handle, ino.0, offset, data) {
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
        self.shared.remove_handle(fh);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let handle = match self.shared.handle(fh) {
            Ok(handle) => handle,
            Err(e) => return reply.error(e),
        };
        let Some(file) = &handle.file else { return reply.ok() };
        // Only the data and the size matter to SQLite, never the timestamps a full fsync
        // would also commit (SQLite itself calls fdatasync where its build knows it).
        let sync_file = || file.sync_data().map_err(|e| io_errno(&e));
        let result = match handle.kind {
            NodeKind::Journal => {
                self.shared.journal_fsync(&handle.db);
                Ok(())
            }
            NodeKind::Database => sync_file().map(|()| {
                let st = self.shared.db_state(&handle.db);
                lock(&st).sync_seen = true;
            }),
            NodeKind::Wal => self.shared.wal_fsync(&handle.db, sync_file),
            _ => sync_file(),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    /// `ENOSYS` tells a kernel that granted `FUSE_NO_OPENDIR_SUPPORT` to open directories by
    /// itself from now on (one request ever instead of two per open); without the capability
    /// ENOSYS would fail the open, so the answer is a handle as before.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.shared.no_opendir.load(Ordering::Relaxed) {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
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

    /// SQLite fsyncs the directory after creating a journal or WAL, so that a rollback after a
    /// power loss finds the journal. The sync is paid with the journal's, before the database
    /// is written (decision 0017); a WAL's commits are in the LTX history.
    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
