//! Open-file limits for the daemon. It keeps files open by design: spare LTX files ready for
//! commits (see `store::flush::SPARES_PER_DIR`, per database), every file waiting for a flush,
//! the mount's descriptors. The soft limit many service managers set (1 024) runs out at a
//! dozen busy databases, so the daemon raises it to the hard limit, as Go programs such as
//! LiteFS do at start. It also sizes the descriptor table once, before any thread starts:
//! growing it later, with threads running, waits for an RCU grace period (measured here at
//! up to 18 ms, stalling whichever commit opened the descriptor).

use std::io;
use std::sync::OnceLock;

/// The soft and hard limits the process started with, if [`raise`] changed them.
static ORIGINAL: OnceLock<libc::rlimit> = OnceLock::new();

/// Descriptor-table slots made ready at start (the table only grows).
pub const TABLE_SLOTS_AT_START: u64 = 4096;

/// Raises the soft limit on open files to the hard limit, and grows the descriptor table to
/// [`TABLE_SLOTS_AT_START`] slots (or the limit, if lower). Returns the soft limit now in
/// force. Call it before starting threads.
pub fn raise() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes into the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: `setrlimit` reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = ORIGINAL.set(limit);
        limit = raised;
    }
    let highest = TABLE_SLOTS_AT_START.min(limit.rlim_cur).saturating_sub(1);
    if let Ok(slot) = libc::c_int::try_from(highest)
        && slot > 2
    {
        // Duplicating onto the highest slot grows the table to hold it; closing it again
        // leaves the table grown. Only a slot nothing uses: a taken one is left alone.
        // SAFETY: F_GETFD only asks whether `slot` is open.
        let taken = unsafe { libc::fcntl(slot, libc::F_GETFD) } != -1;
        // SAFETY: `dup2` onto a free slot, closed again at once; no Rust owner refers to it.
        if !taken && unsafe { libc::dup2(2, slot) } == slot {
            // SAFETY: `slot` was just made by `dup2` above and nothing else owns it.
            unsafe { libc::close(slot) };
        }
    }
    Ok(limit.rlim_cur)
}

/// Gives a command the limit this process started with, as Go's `os/exec` does: a program
/// written for 1 024 descriptors (`select(2)`) keeps working under the daemon.
pub fn restore_for_child(cmd: &mut tokio::process::Command) {
    if let Some(&original) = ORIGINAL.get() {
        // SAFETY: the closure runs in the forked child before exec; `setrlimit` is
        // async-signal-safe and the closure only reads a copied struct.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const original) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_soft_limit_ends_at_the_hard_limit_and_children_get_the_old_one() {
        let mut start = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in `raise`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut start) }, 0);
        let lowered = libc::rlimit { rlim_cur: 1024.min(start.rlim_max), rlim_max: start.rlim_max };
        // SAFETY: as in `raise`; lowering a soft limit is always allowed.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lowered) }, 0);
        let soft = raise().expect("raise");
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in `raise`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) }, 0);
        assert_eq!(soft, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);

        let mut child = tokio::process::Command::new("sh");
        child.args(["-c", "ulimit -n"]);
        restore_for_child(&mut child);
        let out = child.output().await.expect("run sh");
        let shown = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let expected = if lowered.rlim_cur < lowered.rlim_max { lowered.rlim_cur } else { limit.rlim_cur };
        assert_eq!(shown, expected.to_string());
    }
}
