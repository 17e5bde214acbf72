//! Where each file of the mount lives in the data directory: LiteFS's layout (v0.5 `db.go`),
//! which the daemon's store (cli/src/store/layout.rs) uses too.
//!
//! ```text
//! <data_dir>/dbs/<name>/database    <name>           in the mount
//! <data_dir>/dbs/<name>/journal     <name>-journal
//! <data_dir>/dbs/<name>/wal         <name>-wal
//! <data_dir>/dbs/<name>/shm         <name>-shm
//! <data_dir>/dbs/<name>/ltx/        the daemon's LTX files; never touched here
//! ```
//!
//! [`backing_path`] is the only place that maps a name to a path: the daemon reads the same
//! database files through [`database_path`], and a second copy of the mapping could drift.

use std::path::{Path, PathBuf};

use crate::names::NodeKind;

/// The directory holding one directory per database.
pub(crate) const DBS_DIR: &str = "dbs";

/// The file names inside a database's directory, in LiteFS's spelling.
const DATABASE_FILE: &str = "database";
const JOURNAL_FILE: &str = "journal";
const WAL_FILE: &str = "wal";
const SHM_FILE: &str = "shm";

/// `<data_dir>/dbs`.
pub(crate) fn dbs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DBS_DIR)
}

/// `<data_dir>/dbs/<db>`: the directory of database `db` and its side files.
pub(crate) fn db_dir(data_dir: &Path, db: &str) -> PathBuf {
    dbs_dir(data_dir).join(db)
}

/// The file in the data directory that backs `kind` of database `db`; `None` for the files
/// replite makes up (`<db>-pos`, `.primary`, `.lag`).
pub(crate) fn backing_path(data_dir: &Path, kind: NodeKind, db: &str) -> Option<PathBuf> {
    let file = match kind {
        NodeKind::Database => DATABASE_FILE,
        NodeKind::Journal => JOURNAL_FILE,
        NodeKind::Wal => WAL_FILE,
        NodeKind::Shm => SHM_FILE,
        NodeKind::Pos | NodeKind::Primary | NodeKind::Lag => return None,
    };
    Some(db_dir(data_dir, db).join(file))
}

/// Where database `db` of a mount over `data_dir` is stored: `<data_dir>/dbs/<db>/database`.
/// The daemon uses this to read and write the same file the mount serves.
#[must_use]
pub fn database_path(data_dir: &Path, db: &str) -> PathBuf {
    backing_path(data_dir, NodeKind::Database, db).expect("a database is backed by a file")
}

/// The kinds of file that have a backing file, in the order a directory listing shows them.
pub(crate) const BACKED_KINDS: [NodeKind; 4] = [NodeKind::Database, NodeKind::Journal, NodeKind::Wal, NodeKind::Shm];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_litefs_paths() {
        let d = Path::new("/data");
        assert_eq!(database_path(d, "app.db"), Path::new("/data/dbs/app.db/database"));
        assert_eq!(backing_path(d, NodeKind::Journal, "app.db").unwrap(), Path::new("/data/dbs/app.db/journal"));
        assert_eq!(backing_path(d, NodeKind::Wal, "app.db").unwrap(), Path::new("/data/dbs/app.db/wal"));
        assert_eq!(backing_path(d, NodeKind::Shm, "app.db").unwrap(), Path::new("/data/dbs/app.db/shm"));
        assert_eq!(backing_path(d, NodeKind::Pos, "app.db"), None);
    }
}
