//! Applying a stored LTX file to its database file (replicas, and `ReplayLtx` at recovery).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};

use replite_core::ltx::{self, ApplyError};
use replite_core::stream::DbName;
use replite_core::{Checksum, PageSize, Pos, TxId};
use tracing::{debug, warn};

use crate::db_file::DbFile;
use crate::store::error::StoreError;
use crate::store::recover::{UNREADABLE_CHECKSUM, database_checksum};
use crate::store::{Store, dropped, fsutil, layout};

impl Store {
    /// Applies the stored LTX file `min-max` to `dbs/<db>/database`, which the Node believes is
    /// at `base`, and fsyncs the database. The file is verified again first (the disk may have
    /// rotted it since it was stored), and unless it is a snapshot it is applied only if the
    /// database file really is at `base` and `base` is the file's pre-apply checksum: otherwise
    /// nothing is written. Carries out `Output::ReplayLtx`.
    pub fn apply_ltx(&mut self, db: &DbName, min: TxId, max: TxId, base: Checksum) -> Result<Pos, StoreError> {
        let ltx_path = self.ltx_path(db, min, max);
        let open_ltx = || match File::open(&ltx_path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::MissingLtx { db: db.clone(), min, max }),
            Err(e) => Err(StoreError::io("open", &ltx_path)(e)),
        };
        let verified = StoreError::verify_range(db, min, max, BufReader::new(open_ltx()?))?;
        let header = *verified.header();

        let db_path = self.database_path(db);
        fsutil::ensure_dir(&layout::db_dir(&self.dir, db))?;
        let existed = db_path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&db_path)
            .map_err(StoreError::io("open", &db_path))?;
        if !existed {
            fsutil::sync_dir(&layout::db_dir(&self.dir, db))?;
        }

        let current = if header.is_snapshot() {
            // A snapshot replaces the database whatever it holds; `ltx::apply` ignores this.
            Checksum::ZERO
        } else {
            let current = self.current_checksum(db, header.page_size)?;
            if !dropped::at_base(current, base) {
                return Err(StoreError::BaseMismatch { db: db.clone(), min, max, base, database: current });
            }
            base
        };
        if header.commit == 0 {
            // A drop: nothing to write, the files go (`store/dropped.rs`).
            if !header.is_snapshot() && current != header.pre_apply_checksum {
                let source = ApplyError::PreApplyMismatch { database: current, expected: header.pre_apply_checksum };
                return Err(StoreError::Apply { db: db.clone(), min, max, source });
            }
            drop(file);
            return self.apply_drop(db, max);
        }

        let mut page_file = DbFile(file);
        let applied = ltx::apply(&mut page_file, current, BufReader::new(open_ltx()?));
        let pos = match applied {
            Ok(pos) => pos,
            Err(source) => {
                if may_have_written(&source) {
                    // The file no longer sums to what we knew; recompute before trusting it.
                    self.checksums.remove(db);
                }
                warn!(db = %db, %min, %max, error = %source, "applying LTX file failed");
                return Err(StoreError::Apply { db: db.clone(), min, max, source });
            }
        };
        if let Err(e) = page_file.0.sync_all() {
            self.checksums.remove(db);
            return Err(StoreError::io("fsync", &db_path)(e));
        }
        self.checksums.insert(db.clone(), pos.checksum);
        debug!(db = %db, %min, %max, pos = %pos, "applied LTX file");
        Ok(pos)
    }

    /// The database file's checksum: the one the store last knew, else read from the file.
    fn current_checksum(&mut self, db: &DbName, page_size: PageSize) -> Result<Checksum, StoreError> {
        if let Some(sum) = self.checksums.get(db) {
            return Ok(*sum);
        }
        let sum = database_checksum(&self.database_path(db), db, Some(page_size))?;
        if sum != UNREADABLE_CHECKSUM {
            self.checksums.insert(db.clone(), sum);
        }
        Ok(sum)
    }
}

/// Whether a failed apply may have changed the database file.
fn may_have_written(e: &ApplyError) -> bool {
    match e {
        ApplyError::Ltx { database_modified, .. } => *database_modified,
        ApplyError::PreApplyMismatch { .. } | ApplyError::PageSizeMismatch { .. } => false,
        ApplyError::PostApplyMismatch { .. } | ApplyError::Io { .. } => true,
    }
}
