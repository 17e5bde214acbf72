//! `ltx apply`: LTX files applied in order to a database file. Every file is verified in full
//! before the first page is written, and each must continue from the database's checksum, so
//! a bad file is refused with the database untouched.

use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::Path;

use anyhow::{Context, bail};
use replite_core::ltx::{self, PageFile};
use replite_core::{Checksum, PageSize};

use replite::db_file::DbFile;

pub fn run(db_path: &Path, paths: &[impl AsRef<Path>]) -> anyhow::Result<()> {
    let mut verified = Vec::with_capacity(paths.len());
    for path in paths {
        let path = path.as_ref();
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let v = ltx::verify(BufReader::new(file)).with_context(|| format!("{}", path.display()))?;
        verified.push((path, v));
    }
    for pair in verified.windows(2) {
        let (prev, next) = (&pair[0].1, &pair[1].1);
        if !next.header().is_snapshot() && prev.post_apply_pos() != next.pre_apply_pos() {
            bail!(
                "{}: starts at {} but {} ends at {}",
                pair[1].0.display(),
                next.pre_apply_pos(),
                pair[0].0.display(),
                prev.post_apply_pos()
            );
        }
    }

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(db_path)
        .with_context(|| format!("open {}", db_path.display()))?;
    let mut db = DbFile(file);
    for (path, v) in &verified {
        let current = current_checksum(&mut db, v.header().page_size)
            .with_context(|| format!("{}: checksum", db_path.display()))?;
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        ltx::apply(&mut db, current, BufReader::new(file)).with_context(|| format!("{}", path.display()))?;
    }
    db.0.sync_all().with_context(|| format!("sync {}", db_path.display()))?;
    Ok(())
}

/// The database's checksum (zero for an empty file, as a snapshot's pre-apply checksum is).
fn current_checksum(db: &mut DbFile, page_size: PageSize) -> anyhow::Result<Checksum> {
    if db.size()? == 0 {
        return Ok(Checksum::ZERO);
    }
    let reader = BufReader::new(db.0.try_clone()?);
    let mut reader = reader;
    std::io::Seek::rewind(&mut reader)?;
    Ok(ltx::checksum_database(reader, page_size)?)
}
