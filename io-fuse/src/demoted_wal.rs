//! WAL connections that outlive a demotion.
//!
//! A connection opened in WAL mode on the primary holds SQLite's SHARED lock on the database
//! file for as long as it is open (a WAL pager never drops it between transactions), and
//! reads through its WAL index (`-shm`), not the rollback-mode view a replica shows new
//! readers. Two things follow when such a connection stays open after the node becomes a
//! replica, and both are handled here:
//!
//! 1. **Locks.** The apply takes EXCLUSIVE on the database file to keep rollback-mode readers
//!    out, which that SHARED lock would block for as long as the connection lives. So at the
//!    demotion the database's inode is *retired*: the name gets a new inode for every later
//!    open, and POSIX locks, which the kernel keeps per inode, no longer mix the old WAL
//!    connections' locks with the new rollback readers'. The old connections are kept out
//!    of an apply by the WAL index's own locks instead: every WAL read transaction holds one
//!    read mark (shared) throughout, so the apply holds all of them, and the writer,
//!    checkpointer and recovery locks, exclusively (`WalGuard`).
//! 2. **Visibility.** A WAL reader keeps its page cache while the index header is unchanged
//!    (`walIndexTryHdr` compares all 48 bytes with its copy). Under the guard the apply first
//!    folds the frames the index publishes (`mxFrame`, committed on this node as primary)
//!    into the database file, applies the LTX file, and then writes a new header: the
//!    change counter `iChange` bumped, `mxFrame` 0 (read the database file only), the salts
//!    moved on (no older frame counts again), the backfill and read marks reset as SQLite's
//!    own `walRestartHdr` leaves them, and both copies checksummed. Its next read
//!    transaction sees the new header, drops its cache and reads the applied pages whole:
//!    nothing is visible to it between the first page written and the new header.
//!
//! While retired inodes are open, a promoted node refuses to start rollback-journal write
//! transactions on that database: their locks would not exclude the old connections'.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use fuser::INodeNo;
use tracing::{debug, info, warn};

use crate::error::ApplyLtxError;
use crate::locks::{self, Kind};
use crate::mount::Mount;
use crate::names::{NodeKind, mount_name};
use crate::replica::RecordingFile;
use crate::shared::{ROOT_INO, Shared, lock};
use crate::wal_node::{self, wal_checksum};

/// The WAL index's lock bytes (`-shm` offsets 120..128): writer, checkpointer, recovery and
/// the five read marks. SQLite's DMS byte (128) is left alone: it only says a connection is
/// attached.
const WAL_LOCKS_FIRST: i64 = 120;
const WAL_LOCKS_LEN: i64 = 8;
/// One copy of the index header (`WalIndexHdr`) and the bytes its checksum covers.
const HEADER_BYTES: usize = 48;
const HEADER_SUMMED: usize = 40;
/// `WalCkptInfo` follows the two header copies: nBackfill u32, aReadMark[5] u32.
const CKPT_INFO_OFFSET: u64 = 2 * HEADER_BYTES as u64;
/// `READMARK_NOT_USED`.
const READMARK_NOT_USED: u32 = 0xffff_ffff;

impl Shared {
    /// At a demotion: retires the inode of every database a WAL connection has open (its WAL
    /// index is open), so later opens get a new one. Returns the names retired.
    pub(crate) fn retire_wal_databases(&self) -> Vec<String> {
        self.retire(self.dbs_with_open_wal_index())
    }

    /// Retires the inodes of `dbs`; returns the names retired.
    pub(crate) fn retire(&self, open: Vec<String>) -> Vec<String> {
        let mut inodes = lock(&self.inodes);
        let mut retired = lock(&self.retired);
        let mut names = Vec::new();
        for db in open {
            if let Some(ino) = inodes.by_name.remove(&db) {
                retired.insert(ino, db.clone());
                names.push(db);
            }
        }
        names
    }

    /// Inodes of `db` retired at a demotion and still open.
    pub(crate) fn retired_inos(&self, db: &str) -> Vec<u64> {
        lock(&self.retired).iter().filter(|(_, name)| name.as_str() == db).map(|(&ino, _)| ino).collect()
    }

    /// Whether `ino` is a retired database inode (still valid: not unlinked).
    pub(crate) fn is_retired(&self, ino: u64) -> bool {
        lock(&self.retired).contains_key(&ino)
    }

    /// The last handle on `db`'s WAL index closed: no WAL connection from before a demotion
    /// is left, so neither are readers of its retired inodes.
    pub(crate) fn forget_retired(&self, db: &str) {
        lock(&self.retired).retain(|_, name| name != db);
    }
}

impl Mount {
    /// The kept descriptor of `db`'s WAL index through the mount (see `Mount::shm_lockers`),
    /// opened again when the name now leads to another inode; made if missing with `create`,
    /// else `None`.
    pub(crate) fn shm_locker(&self, db: &str, create: bool) -> io::Result<Option<Arc<File>>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.mountpoint.join(mount_name(NodeKind::Shm, db));
        let current = match std::fs::metadata(&path) {
            Ok(meta) => Some(meta.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut lockers = lock(&self.shm_lockers);
        if let (Some(ino), Some((kept, file))) = (current, lockers.get(db))
            && *kept == ino
        {
            return Ok(Some(Arc::clone(file)));
        }
        if current.is_none() && !create {
            return Ok(None);
        }
        let file = std::fs::OpenOptions::new().read(true).write(true).create(create).truncate(false).open(&path)?;
        let file = Arc::new(file);
        lockers.insert(db.to_owned(), (file.metadata()?.ino(), Arc::clone(&file)));
        Ok(Some(file))
    }

    /// Retires WAL-connected databases' inodes at a demotion (see the module documentation)
    /// and makes the kernel look their names up again.
    pub(crate) fn retire_wal_databases(&self) {
        for db in self.shared.retire_wal_databases() {
            info!(db, "a WAL connection stays open through the demotion; later opens get a new inode");
            let _ = self.notifier.inval_entry(INodeNo(ROOT_INO), db.as_ref());
            self.fold_at_demotion(&db);
        }
    }

    /// Retires `db`'s inode after an apply took it out of WAL mode while WAL connections
    /// are open: they keep reading in WAL mode, holding SHARED on the file.
    pub(crate) fn retire_wal_database(&self, db: &str) {
        for db in self.shared.retire(vec![db.to_owned()]) {
            info!(db, "the database left WAL mode with WAL connections open; later opens get a new inode");
            let _ = self.notifier.inval_entry(INodeNo(ROOT_INO), db.as_ref());
        }
    }

    /// Folds the demoted primary's WAL into the database file now if no WAL transaction is
    /// in progress (else the first apply does it). Until then a connection opened on this
    /// replica finds the `-wal` and reads in WAL mode (SQLite opens a WAL that exists whatever
    /// page 1 says), holding SHARED on the new inode while open, which holds off applies.
    fn fold_at_demotion(&self, db: &str) {
        let folded = (|| -> Result<bool, ApplyLtxError> {
            let Some(guard) = WalGuard::take_now(self, db)? else { return Ok(false) };
            let err = |step| move |source| ApplyLtxError::Lock { db: db.to_owned(), step, source };
            let file = std::fs::OpenOptions::new().read(true).write(true).open(self.shared.database_path(db));
            let mut file = RecordingFile::new(file.map_err(err("open data file"))?);
            self.fold_published_wal(db, Some(&guard), &mut file)?;
            file.flush().map_err(err("write the folded pages"))?;
            file.file.sync_all().map_err(err("fsync the database"))?;
            let pages = page_count(&file.file).map_err(err("read the page size"))?;
            guard.restart(pages).map_err(err("restart the WAL index"))?;
            for ino in self.shared.retired_inos(db) {
                let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
            }
            self.remove_folded_wal(db).map_err(err("remove the WAL"))?;
            Ok(true)
        })();
        match folded {
            Ok(true) => info!(db, "folded the demoted primary's WAL"),
            Ok(false) => info!(db, "a WAL transaction is open: the first apply folds the WAL"),
            Err(e) => warn!(db, error = %e, "folding the demoted primary's WAL failed; the first apply retries"),
        }
    }
}

/// The database file's size in pages, by the page size in its header (bytes 16..18,
/// big-endian, 1 meaning 65536): the `nPage` a restarted index header gives readers.
pub(crate) fn page_count(file: &File) -> io::Result<u32> {
    let mut raw = [0u8; 2];
    file.read_exact_at(&mut raw, 16)?;
    let page_size = match u16::from_be_bytes(raw) {
        1 => 65_536,
        n => u64::from(n).max(512),
    };
    Ok(u32::try_from(file.metadata()?.len() / page_size).unwrap_or(u32::MAX))
}

/// The WAL index of a database whose WAL connections outlived a demotion, locked so that none
/// of them is inside a read transaction (and no writer or checkpointer is running).
pub(crate) struct WalGuard {
    shm: Arc<File>,
    header: [u8; HEADER_BYTES],
    /// The first lock byte held: the writer's, or the next one when a halt lock holds the
    /// writer's on a descriptor of its own ([`WalGuard::lock_index_under_halt`]).
    first: i64,
}

impl WalGuard {
    /// Takes the guard for `db` if a retired inode of it is open; waits for read transactions
    /// in progress to end (new ones wait for the guard, through SQLite's busy handler).
    pub(crate) fn take(mount: &Mount, db: &str) -> Result<Option<WalGuard>, ApplyLtxError> {
        if mount.shared.retired_inos(db).is_empty() {
            return Ok(None);
        }
        // Gone: its connections closed meanwhile.
        WalGuard::lock(mount, db, false, true)
    }

    /// Like [`WalGuard::take`] but without waiting: `None` if a WAL transaction (or
    /// checkpoint) holds one of the locks right now.
    pub(crate) fn take_now(mount: &Mount, db: &str) -> Result<Option<WalGuard>, ApplyLtxError> {
        WalGuard::lock(mount, db, false, false)
    }

    /// For a database a replica shows in WAL mode (page 1 says WAL): the WAL index's locks,
    /// taken on an index created through the mount if no connection made one yet (a
    /// connection that opens meanwhile waits for the guard, through SQLite's busy handler,
    /// before its first read transaction). Without `wait`, `None` if a read transaction or
    /// checkpoint holds one of the locks.
    pub(crate) fn lock_index(mount: &Mount, db: &str, wait: bool) -> Result<Option<WalGuard>, ApplyLtxError> {
        WalGuard::lock(mount, db, true, wait)
    }

    /// [`WalGuard::lock_index`] on a primary whose WAL writer lock a halt lock holds (on a
    /// descriptor of its own, which would conflict with this one's): every other lock of the
    /// index, waiting for them.
    pub(crate) fn lock_index_under_halt(mount: &Mount, db: &str) -> Result<WalGuard, ApplyLtxError> {
        let guard = WalGuard::lock_from(mount, db, true, true, WAL_LOCKS_FIRST + 1)?;
        Ok(guard.expect("a guard that waits for its locks always has them"))
    }

    /// The locks on `db`'s WAL index through the mount's kept descriptor (`create`: made if
    /// missing; otherwise `None` when there is none). `None` too, without `wait`, when they
    /// are held.
    fn lock(mount: &Mount, db: &str, create: bool, wait: bool) -> Result<Option<WalGuard>, ApplyLtxError> {
        WalGuard::lock_from(mount, db, create, wait, WAL_LOCKS_FIRST)
    }

    fn lock_from(
        mount: &Mount,
        db: &str,
        create: bool,
        wait: bool,
        first: i64,
    ) -> Result<Option<WalGuard>, ApplyLtxError> {
        let err = |step| move |source| ApplyLtxError::Lock { db: db.to_owned(), step, source };
        let len = WAL_LOCKS_FIRST + WAL_LOCKS_LEN - first;
        let Some(shm) = mount.shm_locker(db, create).map_err(err("open the WAL index through the mount"))? else {
            return Ok(None);
        };
        if wait {
            locks::lock_wait(&shm, Kind::Write, first, len).map_err(err("WAL index locks"))?;
        } else if !locks::try_lock(&shm, Kind::Write, first, len).map_err(err("WAL index locks"))? {
            return Ok(None);
        }
        // From here the guard releases the locks whatever happens.
        let mut guard = WalGuard { shm, header: [0; HEADER_BYTES], first };
        match guard.shm.read_exact_at(&mut guard.header, 0) {
            Ok(()) => {}
            // No connection has initialised it: nothing to restart, the locks are what count.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => guard.header = [0; HEADER_BYTES],
            Err(e) => return Err(err("read the WAL index header")(e)),
        }
        Ok(Some(guard))
    }

    /// The frames SQLite has published (`mxFrame`), when the header is valid.
    pub(crate) fn published_frames(&self) -> io::Result<Option<u32>> {
        wal_node::read_index_max_frame(&self.shm)
    }

    /// Writes the header that sends every WAL reader to the database file with an empty
    /// cache: `iChange` + 1, `mxFrame` 0, `nPage` = `pages`, salt 1 + 1 and salt 2 changed,
    /// checksum, both copies; then the checkpoint info as after a log restart.
    ///
    /// An index whose header is not valid (never initialised) is left alone: SQLite runs its
    /// recovery over it before any read, and a header made from garbage would be trusted.
    pub(crate) fn restart(&self, pages: u32) -> io::Result<()> {
        if self.published_frames()?.is_none() {
            return Ok(());
        }
        let mut h = self.header;
        let get = |h: &[u8; HEADER_BYTES], at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let put = |h: &mut [u8; HEADER_BYTES], at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        let (change, salt1, salt2) = (get(&h, 8), get(&h, 32), get(&h, 36));
        put(&mut h, 8, change.wrapping_add(1));
        h[12] = 1;
        put(&mut h, 16, 0);
        put(&mut h, 20, pages);
        put(&mut h, 32, salt1.wrapping_add(1));
        put(&mut h, 36, salt2.rotate_left(7) ^ 0x5a5a_5a5a);
        let (s1, s2) = wal_checksum(cfg!(target_endian = "big"), &h[..HEADER_SUMMED], (0, 0));
        put(&mut h, 40, s1);
        put(&mut h, 44, s2);
        let mut info = Vec::with_capacity(24);
        for v in [0u32, 0, 0, READMARK_NOT_USED, READMARK_NOT_USED, READMARK_NOT_USED] {
            info.extend_from_slice(&v.to_ne_bytes());
        }
        // SQLite writes the second copy first and reads the first first, so a reader never
        // sees two equal copies of a header half written.
        self.shm.write_all_at(&h, HEADER_BYTES as u64)?;
        self.shm.write_all_at(&h, 0)?;
        self.shm.write_all_at(&info, CKPT_INFO_OFFSET)?;
        debug!(pages, "WAL index restarted for readers from before the demotion");
        Ok(())
    }
}

impl Mount {
    /// Under the guard, once the WAL's frames are in the (fsynced) database file: removes the
    /// WAL. A connection opened later then finds no `-wal` and reads in rollback mode, as on
    /// any replica (SQLite opens a WAL that exists whatever page 1 says, and would run WAL
    /// recovery over its stale frames); the open ones keep their descriptor and, with
    /// `mxFrame` 0, never read it.
    pub(crate) fn remove_folded_wal(&self, db: &str) -> io::Result<()> {
        match std::fs::remove_file(self.shared.wal_path(db)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let name = mount_name(NodeKind::Wal, db);
        lock(&self.shared.inodes).forget_name(&name);
        self.shared.dir_changed(db);
        self.shared.sync_dirs()?;
        let _ = self.notifier.inval_entry(INodeNo(ROOT_INO), name.as_ref());
        Ok(())
    }
}

impl Drop for WalGuard {
    fn drop(&mut self) {
        let _ = locks::unlock(&self.shm, self.first, WAL_LOCKS_FIRST + WAL_LOCKS_LEN - self.first);
    }
}
