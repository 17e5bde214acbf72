//! Rolling back a hot journal before the mount starts, as SQLite itself would on the next
//! open. A daemon killed while an application was inside a rollback-journal transaction leaves
//! the database file with pages of a transaction that never committed, and the journal holding
//! their originals. Recovery must checksum the committed database, and a replica's readers
//! could never roll it back themselves, so the daemon restores the originals first (read the
//! way SQLite plays a hot journal back: [`journal_node::read_hot`]), truncates to the original
//! size, and deletes the journal.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tracing::info;

use crate::journal_node;
use crate::layout::backing_path;
use crate::names::NodeKind;

/// Rolls back `db`'s hot journal in `data_dir`, if it has one; returns whether it did. Call
/// only while nothing else has the database open (before mounting).
pub fn roll_back_hot_journal(data_dir: &Path, db: &str) -> io::Result<bool> {
    let (Some(journal_path), Some(db_path)) =
        (backing_path(data_dir, NodeKind::Journal, db), backing_path(data_dir, NodeKind::Database, db))
    else {
        return Ok(false);
    };
    let journal = match File::open(&journal_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(hot) = journal_node::read_hot(&journal)? else {
        // Not hot (PERSIST's zeroed header, TRUNCATE's empty file, an unsynced header): the
        // database file was not written for it.
        std::fs::remove_file(&journal_path)?;
        return Ok(false);
    };
    let database = OpenOptions::new().read(true).write(true).open(&db_path)?;
    let page_size = hot.page_size.bytes();
    let mut page = vec![0u8; page_size];
    for &pgno in hot.originals.keys() {
        if hot.read_original(&journal, pgno, &mut page)? {
            database.write_all_at(&page, u64::from(pgno - 1) * page_size as u64)?;
        }
    }
    database.set_len(u64::from(hot.orig_pages) * page_size as u64)?;
    database.sync_all()?;
    std::fs::remove_file(&journal_path)?;
    if let Some(dir) = journal_path.parent() {
        File::open(dir)?.sync_all()?;
    }
    info!(db, pages = hot.originals.len(), orig_pages = hot.orig_pages, "rolled back a hot journal left by a crash");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

    fn checksum(nonce: u32, page: &[u8]) -> u32 {
        let mut sum = nonce;
        let mut i = page.len() as isize - 200;
        while i > 0 {
            sum = sum.wrapping_add(u32::from(page[i as usize]));
            i -= 200;
        }
        sum
    }

    fn record(pgno: u32, fill: u8, nonce: u32) -> Vec<u8> {
        let data = vec![fill; 512];
        let mut r = pgno.to_be_bytes().to_vec();
        r.extend_from_slice(&data);
        r.extend_from_slice(&checksum(nonce, &data).to_be_bytes());
        r
    }

    #[test]
    fn a_hot_journal_restores_the_originals_and_the_size_and_goes_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_dir = dir.path().join("dbs/app.db");
        std::fs::create_dir_all(&db_dir).expect("dir");
        // The crashed transaction rewrote page 2 and grew the file to 3 pages.
        let mut db = vec![1u8; 512];
        db.extend(vec![9u8; 1024]);
        std::fs::write(db_dir.join("database"), &db).expect("db");
        let mut journal = MAGIC.to_vec();
        for v in [1u32, 77, 2, 512, 512] {
            journal.extend_from_slice(&v.to_be_bytes());
        }
        journal.resize(512, 0);
        journal.extend(record(2, 2, 77));
        std::fs::write(db_dir.join("journal"), &journal).expect("journal");

        assert!(roll_back_hot_journal(dir.path(), "app.db").expect("rolls back"));
        let mut want = vec![1u8; 512];
        want.extend(vec![2u8; 512]);
        assert_eq!(std::fs::read(db_dir.join("database")).expect("db"), want);
        assert!(!db_dir.join("journal").exists());
        assert!(!roll_back_hot_journal(dir.path(), "app.db").expect("nothing left"), "only once");
    }
}
