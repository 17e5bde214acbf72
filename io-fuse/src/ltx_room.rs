//! Room on the disk for a rollback transaction's LTX file, checked while SQLite writes the
//! database, where a refusal is `SQLITE_FULL`.
//!
//! A rollback-journal transaction commits at the journal's unlink, and the daemon writes the
//! transaction's LTX file then. When that file does not fit, the unlink fails with `ENOSPC`,
//! which SQLite reports as `SQLITE_IOERR_DELETE` (any failed unlink is): nothing is lost, but
//! the application is told "disk I/O error". So the mount refuses a database write with
//! `ENOSPC` once the file system's free space falls below what the transaction's LTX file will
//! need; SQLite then reports "database or disk is full" and rolls the transaction back. Free
//! space is not reserved: another writer may still take it before the commit point, which
//! then fails at the unlink as before.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes written to the database between checks of the free space (and the first write of a
/// transaction is always checked): `statvfs` costs a system call.
pub(crate) const CHECK_EVERY_BYTES: u64 = 256 << 10;

/// What an LTX file of `written` bytes of pages needs at most: the pages, a page header each
/// (one per 512 bytes at the smallest page size, rounded up generously), header and trailer,
/// and a margin for the spare files and directory blocks the write may touch.
#[must_use]
pub(crate) fn needed_for(written: u64) -> u64 {
    written + written / 32 + (64 << 10)
}

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `statvfs` is plain data, valid when zeroed.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable struct, both alive for
    // the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ltx_file_needs_its_pages_and_some_more() {
        assert!(needed_for(0) > 0);
        assert!(needed_for(100 << 20) > 100 << 20);
        assert!(needed_for(100 << 20) < 110 << 20, "not so much more that a roomy disk refuses");
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_known() {
        let free = free_bytes(Path::new(".")).expect("statvfs");
        assert!(free > 0);
        assert!(free_bytes(Path::new("/no/such/directory/here")).is_err());
    }
}
