//! A dropped database's files: the drop is an LTX file with commit size zero (see
//! `docs/decisions/0009-dropping-databases.md`); applying it removes the database file and
//! SQLite's side files, and leaves the directory with its LTX history, as LiteFS does.

use std::fs;
use std::io;

use replite_core::stream::DbName;
use replite_core::{Checksum, Pos, TxId};
use tracing::info;

use crate::store::error::StoreError;
use crate::store::{Store, fsutil, layout};

/// The files SQLite and the mount keep beside the LTX history, all removed by a drop.
const DATABASE_FILES: [&str; 4] = ["database", "journal", "wal", "shm"];

impl Store {
    /// Applies a drop (TXID `max`) to `db`, whose file is at `current`: removes the database
    /// file, its journal, WAL and WAL index, then fsyncs the directory so the removal
    /// survives a crash (a crash before that replays the drop: recovery sees the old file
    /// one transaction behind the history). Returns the position after the drop.
    pub fn apply_drop(&mut self, db: &DbName, max: TxId) -> Result<Pos, StoreError> {
        let dir = layout::db_dir(&self.dir, db);
        let mut removed = 0usize;
        for name in DATABASE_FILES {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove", &path)(e)),
            }
        }
        if removed > 0 {
            fsutil::sync_dir(&dir)?;
        }
        self.checksums.insert(db.clone(), Checksum::EMPTY);
        info!(db = %db, txid = %max, removed, "database dropped");
        Ok(Pos::new(max, Checksum::EMPTY))
    }
}

/// Whether a database file at `current` is at `base`: a missing or empty file (checksum zero)
/// is the empty database a drop leaves (`Checksum::EMPTY`).
pub(crate) fn at_base(current: Checksum, base: Checksum) -> bool {
    current == base || (current == Checksum::ZERO && base == Checksum::EMPTY)
}
