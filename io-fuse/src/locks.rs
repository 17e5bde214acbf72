//! SQLite's locks, taken by replite itself through the mount: the lock bytes of a database
//! file (os_unix.c) and the WAL-index locks of its `-shm` file (wal.c).
//!
//! The kernel keeps the byte-range locks of the mount (see `file_system`), so replite takes
//! them the way SQLite would, on descriptors opened through the mount, as open-file-description
//! locks: those conflict with SQLite's process-owned `fcntl` locks even inside the same
//! process, and belong to the descriptor, so closing it releases them.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// SQLite's lock bytes in a database file: PENDING, then RESERVED, then the 510-byte SHARED
/// range.
pub(crate) const PENDING_BYTE: i64 = 0x4000_0000;
pub(crate) const RESERVED_BYTE: i64 = PENDING_BYTE + 1;
pub(crate) const SHARED_FIRST: i64 = PENDING_BYTE + 2;
pub(crate) const SHARED_SIZE: i64 = 510;

/// The WAL-index locks sit after the 120-byte index header (`UNIX_SHM_BASE`): byte 0 is the
/// writer's lock, byte 1 the checkpointer's, byte 2 recovery's, then the read marks.
const SHM_LOCK_BASE: i64 = 120;
pub(crate) const WAL_CKPT_LOCK: i64 = SHM_LOCK_BASE + 1;
/// The first read-mark lock that is not read mark 0 (`WAL_READ_LOCK(1)`): a reader holding it
/// shared keeps a writer from restarting the log (`walRestartLog` needs marks 1..5 exclusive).
pub(crate) const WAL_READ_MARK_1: i64 = SHM_LOCK_BASE + 4;

/// Which kind of lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Shared (`F_RDLCK`).
    Read,
    /// Exclusive (`F_WRLCK`); the descriptor must be open for writing.
    Write,
}

impl Kind {
    fn l_type(self) -> libc::c_short {
        (match self {
            Kind::Read => libc::F_RDLCK,
            Kind::Write => libc::F_WRLCK,
        }) as libc::c_short
    }
}

fn flock(l_type: libc::c_short, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data; zeroed is a valid value before the fields are set (and
    // l_pid must be 0 for OFD requests).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

fn fcntl(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor is open for the duration of the call and `fl` is valid.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes a lock on `len` bytes at `start`, waiting for conflicting holders to let go.
pub(crate) fn lock_wait(file: &File, kind: Kind, start: i64, len: i64) -> io::Result<()> {
    fcntl(file, libc::F_OFD_SETLKW, &mut flock(kind.l_type(), start, len))
}

/// Takes a lock on `len` bytes at `start` if nobody holds a conflicting one; `false` (and
/// nothing taken) otherwise. Never waits.
pub(crate) fn try_lock(file: &File, kind: Kind, start: i64, len: i64) -> io::Result<bool> {
    match fcntl(file, libc::F_OFD_SETLK, &mut flock(kind.l_type(), start, len)) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases this descriptor's lock on `len` bytes at `start`.
pub(crate) fn unlock(file: &File, start: i64, len: i64) -> io::Result<()> {
    fcntl(file, libc::F_OFD_SETLK, &mut flock(libc::F_UNLCK as libc::c_short, start, len))
}

/// Whether anyone else holds a lock on `len` bytes at `start` that an exclusive lock would
/// conflict with (SQLite's own test for a RESERVED lock, `unixCheckReservedLock`).
pub(crate) fn is_locked(file: &File, start: i64, len: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start, len);
    fcntl(file, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}
