//! Folding a WAL left by a crash into its database file before the mount starts, so that
//! recovery, which checksums only the database file, sees every durable transaction.
//!
//! Committed WAL transactions live in `wal` until a checkpoint copies them into the database.
//! Not every one of them is durable for replite: the mount writes a commit frame before the
//! sink answers, so a crash can leave a committed transaction in the WAL that was never
//! acknowledged and has no LTX file. The fold keeps exactly the longest prefix of the WAL's
//! commits whose database checksum is a position of the durable history (the caller's
//! `is_durable`), found by one read of the database file and one walk over the WAL with the
//! checksum kept incrementally; it writes that prefix's pages into the file, truncates it to
//! that commit's size, and deletes the WAL and its index. Later frames are dropped: nobody
//! was told they were durable unless an LTX file says so, and then the prefix reaches them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use replite_core::ltx::{DatabaseChecksum, page_checksum};
use replite_core::types::{Checksum, PageSize, Pgno};
use tracing::{info, warn};

use crate::layout::backing_path;
use crate::names::NodeKind;
use crate::wal_node::{self, FRAME_HEADER_SIZE, WalFrames};

/// What [`fold_wal`] did with a database's WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldedWal {
    /// Commits of the WAL now in the database file (the longest durable prefix).
    pub commits_folded: u32,
    /// Valid commits after that prefix, dropped: none reached a durable position.
    pub commits_dropped: u32,
    /// The database file's size in pages and its checksum after the fold; `None` when the
    /// WAL had no valid header (SQLite reads such a log as empty) and the file was not read.
    pub database: Option<(u32, Checksum)>,
}

/// The database as the walk over the WAL sees it after each commit: the file's pages, each
/// replaced by its latest frame so far, cut or extended (with zeros) to the commit's size.
/// That is what a SQLite reader at that commit reads, and what a checkpoint of it writes.
struct Image {
    /// Page checksums of the database file, page 1 first.
    file: Vec<Checksum>,
    /// Page checksums of the latest frame of each page the walk has applied.
    frames: BTreeMap<u32, Checksum>,
    /// The size in pages after the last commit applied.
    pages: u32,
    /// The database checksum of pages `1..=pages`.
    sum: DatabaseChecksum,
    zeros: Vec<u8>,
}

impl Image {
    fn read(database: &File, page_size: PageSize) -> io::Result<Image> {
        let len = database.metadata()?.len();
        let page_bytes = u64::from(page_size.get());
        if !len.is_multiple_of(page_bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the database file ({len} bytes) is not whole pages of the WAL's page size {page_size}"),
            ));
        }
        let pages = u32::try_from(len / page_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "database file of more than 2^32 pages"))?;
        let mut sum = DatabaseChecksum::new(page_size);
        let mut file = Vec::with_capacity(pages as usize);
        let mut page = vec![0u8; page_size.bytes()];
        for pgno in 1..=pages {
            database.read_exact_at(&mut page, Pgno(pgno).offset(page_size))?;
            let page_sum = page_checksum(Pgno(pgno), &page);
            sum.toggle(Pgno(pgno), page_sum);
            file.push(page_sum);
        }
        let zeros = vec![0u8; page_size.bytes()];
        Ok(Image { file, frames: BTreeMap::new(), pages, sum, zeros })
    }

    /// The checksum page `pgno` has now, inside the size or not.
    fn page(&self, pgno: u32) -> Checksum {
        if let Some(&sum) = self.frames.get(&pgno) {
            return sum;
        }
        match pgno.checked_sub(1).and_then(|i| self.file.get(i as usize)) {
            Some(&sum) => sum,
            None => page_checksum(Pgno(pgno), &self.zeros),
        }
    }

    /// Applies one transaction's frames, in WAL order, then its commit size.
    fn commit(&mut self, frames: &[(u32, Checksum)], commit: u32) {
        for &(pgno, new) in frames {
            if pgno <= self.pages {
                self.sum.toggle(Pgno(pgno), self.page(pgno));
                self.sum.toggle(Pgno(pgno), new);
            }
            self.frames.insert(pgno, new);
        }
        let (from, to) = if commit < self.pages { (commit, self.pages) } else { (self.pages, commit) };
        for pgno in from.saturating_add(1)..=to {
            self.sum.toggle(Pgno(pgno), self.page(pgno));
        }
        self.pages = commit;
    }
}

/// The prefix of the WAL the fold keeps.
#[derive(Debug, Clone, Copy)]
struct Prefix {
    /// Frames it spans (0: none, the file as it is).
    frames: u32,
    commits: u32,
    pages: u32,
    checksum: Checksum,
}

/// Folds into `db`'s database file in `data_dir` the longest prefix of its WAL's commits
/// whose resulting database checksum `is_durable` accepts (the file as it is, with no frame,
/// when none does), truncates the file to that commit's size, fsyncs it, and deletes `wal`
/// and `shm`. `None` when there is no WAL or it is empty: nothing to do. Call only while
/// nothing else has the database open (before mounting), after any hot journal is rolled
/// back.
///
/// The checksum of each prefix is kept incrementally (each frame's page checksum toggled in
/// for the one it replaces), so the database file is read once and written once. Frames are
/// read the way SQLite's WAL recovery reads them ([`WalFrames`]): a torn frame, or one with an
/// older generation's salts, ends the log. Memory: a checksum per page of the file and per
/// distinct page in the WAL, plus a frame.
pub fn fold_wal(data_dir: &Path, db: &str, is_durable: impl Fn(Checksum) -> bool) -> io::Result<Option<FoldedWal>> {
    let (Some(wal_path), Some(shm_path), Some(db_path)) = (
        backing_path(data_dir, NodeKind::Wal, db),
        backing_path(data_dir, NodeKind::Shm, db),
        backing_path(data_dir, NodeKind::Database, db),
    ) else {
        return Ok(None);
    };
    let wal = match File::open(&wal_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if wal.metadata()?.len() == 0 {
        return Ok(None);
    }
    let folded = match WalFrames::open(&wal, None)? {
        None => FoldedWal { commits_folded: 0, commits_dropped: 0, database: None },
        Some(frames) => fold_frames(&wal, frames, &db_path, &is_durable)?,
    };
    drop(wal);
    std::fs::remove_file(&wal_path)?;
    match std::fs::remove_file(&shm_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = wal_path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let (folded_commits, dropped) = (folded.commits_folded, folded.commits_dropped);
    match folded.database {
        None => info!(db, "deleted a WAL without a valid header left by a crash"),
        Some((pages, checksum)) if dropped > 0 => warn!(db, folded = folded_commits, dropped, pages, %checksum,
            "folded the WAL left by a crash; dropped commits that reached no durable position"),
        Some((pages, checksum)) => {
            info!(db, folded = folded_commits, pages, %checksum, "folded the WAL left by a crash");
        }
    }
    Ok(Some(folded))
}

fn fold_frames(
    wal: &File,
    mut frames: WalFrames,
    db_path: &Path,
    is_durable: &impl Fn(Checksum) -> bool,
) -> io::Result<FoldedWal> {
    let page_size = frames.page_size;
    let database = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(db_path)?;
    let mut image = Image::read(&database, page_size)?;
    let mut best = Prefix { frames: 0, commits: 0, pages: image.pages, checksum: image.sum.value() };
    let mut commits = 0u32;
    let mut open: Vec<(u32, Checksum)> = Vec::new();
    let mut frame = vec![0u8; frames.frame_len()];
    while let Some(f) = frames.next_frame(wal, &mut frame)? {
        open.push((f.pgno, page_checksum(Pgno(f.pgno), &frame[FRAME_HEADER_SIZE as usize..])));
        if f.commit == 0 {
            continue;
        }
        image.commit(&open, f.commit);
        open.clear();
        commits += 1;
        if is_durable(image.sum.value()) {
            best = Prefix { frames: f.number, commits, pages: f.commit, checksum: image.sum.value() };
        }
    }
    if best.frames > 0 {
        let Some(committed) = wal_node::read_committed(wal, Some(best.frames))? else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the WAL changed while it was folded"));
        };
        if committed.commit != best.pages {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the WAL changed while it was folded"));
        }
        let lock = page_size.lock_pgno();
        let mut page = vec![0u8; page_size.bytes()];
        for (&pgno, &offset) in committed.pages.range(..=best.pages) {
            if Pgno(pgno) == lock {
                continue;
            }
            wal.read_exact_at(&mut page, offset)?;
            database.write_all_at(&page, Pgno(pgno).offset(page_size))?;
        }
        database.set_len(u64::from(best.pages) * u64::from(page_size.get()))?;
        database.sync_all()?;
        debug_assert_eq!(
            replite_core::ltx::checksum_database(io::BufReader::new(File::open(db_path)?), page_size)?,
            best.checksum,
            "the folded file has the checksum the walk computed"
        );
    }
    Ok(FoldedWal {
        commits_folded: best.commits,
        commits_dropped: commits - best.commits,
        database: Some((best.pages, best.checksum)),
    })
}

#[cfg(test)]
mod tests {
    use replite_core::ltx::checksum_database;

    use super::*;
    use crate::wal_node::tests::wal_bytes;

    const SALTS: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    /// A data directory with `app.db`'s database file, WAL and WAL index.
    fn data_dir(database: &[u8], wal: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_dir = dir.path().join("dbs/app.db");
        std::fs::create_dir_all(&db_dir).expect("dir");
        std::fs::write(db_dir.join("database"), database).expect("database");
        std::fs::write(db_dir.join("wal"), wal).expect("wal");
        std::fs::write(db_dir.join("shm"), [0u8; 64]).expect("shm");
        dir
    }

    fn pages(fills: &[u8]) -> Vec<u8> {
        fills.iter().flat_map(|&fill| vec![fill; 512]).collect()
    }

    fn checksum(bytes: &[u8]) -> Checksum {
        checksum_database(bytes, PageSize::new(512).expect("page size")).expect("whole pages")
    }

    fn database(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(dir.path().join("dbs/app.db/database")).expect("database")
    }

    fn side_files_gone(dir: &tempfile::TempDir) -> bool {
        let db_dir = dir.path().join("dbs/app.db");
        !db_dir.join("wal").exists() && !db_dir.join("shm").exists()
    }

    #[test]
    fn only_the_commits_up_to_the_last_durable_position_are_folded() {
        // Commit 1 writes pages 2 and 3; commit 2 (never acknowledged: no LTX) rewrites page 2.
        let wal = wal_bytes(512, &[(2, 0, 0xa), (3, 3, 0xb), (2, 3, 0xc)], SALTS);
        let dir = data_dir(&pages(&[1, 2]), &wal);
        let durable = checksum(&pages(&[1, 0xa, 0xb]));
        assert_ne!(durable, checksum(&pages(&[1, 0xc, 0xb])));

        let folded = fold_wal(dir.path(), "app.db", |sum| sum == durable).expect("folds").expect("a WAL");
        assert_eq!(folded, FoldedWal { commits_folded: 1, commits_dropped: 1, database: Some((3, durable)) });
        assert_eq!(database(&dir), pages(&[1, 0xa, 0xb]));
        assert!(side_files_gone(&dir));
        assert_eq!(fold_wal(dir.path(), "app.db", |_| true).expect("nothing left"), None, "only once");
    }

    #[test]
    fn a_wal_with_no_durable_commit_leaves_the_file_as_it_is() {
        let wal = wal_bytes(512, &[(2, 0, 0xa), (3, 3, 0xb)], SALTS);
        let dir = data_dir(&pages(&[1, 2]), &wal);
        let folded = fold_wal(dir.path(), "app.db", |_| false).expect("folds").expect("a WAL");
        let file_sum = checksum(&pages(&[1, 2]));
        assert_eq!(folded, FoldedWal { commits_folded: 0, commits_dropped: 1, database: Some((2, file_sum)) });
        assert_eq!(database(&dir), pages(&[1, 2]));
        assert!(side_files_gone(&dir));
    }

    #[test]
    fn a_torn_last_frame_ends_the_log_before_its_commit() {
        let mut wal = wal_bytes(512, &[(2, 2, 0xa), (1, 2, 0xb)], SALTS);
        let last_page = 32 + (24 + 512) + 24 + 300;
        wal[last_page] ^= 0xff;
        let dir = data_dir(&pages(&[1, 2]), &wal);
        let first = checksum(&pages(&[1, 0xa]));
        let second = checksum(&pages(&[0xb, 0xa]));

        let folded = fold_wal(dir.path(), "app.db", |sum| sum == first || sum == second).expect("folds");
        assert_eq!(folded, Some(FoldedWal { commits_folded: 1, commits_dropped: 0, database: Some((2, first)) }));
        assert_eq!(database(&dir), pages(&[1, 0xa]));
        assert!(side_files_gone(&dir));
    }

    #[test]
    fn frames_with_an_older_generations_salts_are_not_folded() {
        // A restarted log: one commit with new salts over a longer log of the last generation.
        let old = wal_bytes(512, &[(2, 2, 0xa), (1, 2, 0xb), (2, 2, 0xc)], SALTS);
        let mut wal = wal_bytes(512, &[(2, 2, 0xd)], [9, 9, 9, 9, 9, 9, 9, 9]);
        wal.extend_from_slice(&old[wal.len()..]);
        let dir = data_dir(&pages(&[1, 2]), &wal);

        let folded = fold_wal(dir.path(), "app.db", |_| true).expect("folds").expect("a WAL");
        let sum = checksum(&pages(&[1, 0xd]));
        assert_eq!(folded, FoldedWal { commits_folded: 1, commits_dropped: 0, database: Some((2, sum)) });
        assert_eq!(database(&dir), pages(&[1, 0xd]));
    }

    #[test]
    fn the_checksum_kept_per_commit_follows_the_size_down_and_up() {
        // Commit 1 grows to 5 pages without writing page 4 (zeros), commit 2 shrinks to 2,
        // commit 3 grows to 4 by writing page 4: page 3 is the file's again, as SQLite reads it.
        let wal = wal_bytes(512, &[(2, 0, 0xa), (5, 5, 0xb), (1, 2, 0xc), (4, 4, 0xd)], SALTS);
        let dir = data_dir(&pages(&[1, 2, 3]), &wal);
        let states = [pages(&[1, 0xa, 3, 0, 0xb]), pages(&[0xc, 0xa]), pages(&[0xc, 0xa, 3, 0xd])];
        let sums: Vec<Checksum> = states.iter().map(|s| checksum(s)).collect();
        let seen = std::cell::RefCell::new(Vec::new());

        let folded = fold_wal(dir.path(), "app.db", |sum| {
            seen.borrow_mut().push(sum);
            true
        });
        assert_eq!(seen.into_inner(), sums, "each commit's database checksum");
        let folded = folded.expect("folds").expect("a WAL");
        assert_eq!(folded, FoldedWal { commits_folded: 3, commits_dropped: 0, database: Some((4, sums[2])) });
        assert_eq!(database(&dir), states[2]);
    }

    #[test]
    fn a_wal_without_a_valid_header_is_deleted_and_the_file_untouched() {
        let mut wal = wal_bytes(512, &[(2, 2, 0xa)], SALTS);
        wal[0] ^= 0xff;
        let dir = data_dir(&pages(&[1, 2]), &wal);
        let folded = fold_wal(dir.path(), "app.db", |_| true).expect("folds").expect("a WAL");
        assert_eq!(folded, FoldedWal { commits_folded: 0, commits_dropped: 0, database: None });
        assert_eq!(database(&dir), pages(&[1, 2]));
        assert!(side_files_gone(&dir));
    }
}
