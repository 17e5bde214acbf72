//! A rollback journal SQLite deletes at a commit is kept on disk, hidden from the mount, and
//! reused by the next transaction's journal (decision 0018).
//!
//! In DELETE mode every transaction creates its journal and deletes it at the commit point.
//! A new file's first sync must commit the file system's journal (its blocks, its size, its
//! directory entry), ~0.5 ms here; overwriting blocks an existing file already holds and
//! syncing them needs no such commit (~0.2 ms). So at a DELETE-mode commit the mount zeroes
//! the journal's header, as SQLite's own PERSIST mode does, and shows the name as deleted;
//! when SQLite creates the journal again the mount hands it the same file, stale contents and
//! all, which SQLite handles as it does a PERSIST journal left by another connection: it
//! writes its header over the old one and, before it counts its records, breaks a stale
//! header that follows them (`syncJournal`). On disk the file is never anything a PERSIST
//! journal could not be, so rolling it back after a crash (SQLite's rules, `read_hot`) is
//! unchanged. A journal larger than [`KEEP_MAX`] is deleted as before.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::journal_node::JOURNAL_HEADER_BYTES;

/// Largest journal kept for reuse: a transaction of a few hundred pages. A larger journal
/// would hold its space until the next large transaction.
pub(crate) const KEEP_MAX: u64 = 1 << 20;

/// Ends the journal at `path` as a PERSIST commit would, zeroing its header, if it is small
/// enough to keep. Returns whether it was kept; a journal that is not is left to be deleted.
pub(crate) fn retire(path: &Path) -> io::Result<bool> {
    let file = OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() > KEEP_MAX {
        return Ok(false);
    }
    file.write_all_at(&[0u8; JOURNAL_HEADER_BYTES], 0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal_node::JOURNAL_MAGIC;

    fn journal(tag: &str, len: usize) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("replite-kept-journal-{tag}-{}", std::process::id()));
        let mut bytes = vec![7u8; len];
        bytes[..8].copy_from_slice(&JOURNAL_MAGIC);
        std::fs::write(&path, bytes).expect("write journal");
        path
    }

    #[test]
    fn a_small_journal_is_kept_with_its_header_zeroed_and_the_rest_untouched() {
        let path = journal("small", 8192);
        assert!(retire(&path).expect("retire"));
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 8192);
        assert!(bytes[..JOURNAL_HEADER_BYTES].iter().all(|&b| b == 0));
        assert!(bytes[JOURNAL_HEADER_BYTES..].iter().all(|&b| b == 7));
        std::fs::remove_file(path).expect("clean up");
    }

    #[test]
    fn a_large_journal_is_not_kept_and_not_touched() {
        let path = journal("large", KEEP_MAX as usize + 1);
        assert!(!retire(&path).expect("retire"));
        assert_eq!(std::fs::read(&path).expect("read")[..8], JOURNAL_MAGIC);
        std::fs::remove_file(path).expect("clean up");
    }
}
