//! Where things live under `data.dir` (LiteFS's layout, plus one file of replite's own):
//!
//! ```text
//! <data.dir>/epoch                              highest lease epoch seen: 16 hex digits + "\n"
//! <data.dir>/dbs/<name>/database                the database file
//! <data.dir>/dbs/<name>/wal                     SQLite's WAL (the mount's); folded at start
//! <data.dir>/dbs/<name>/ltx/%016x-%016x.ltx     LTX files by TXID range
//! <data.dir>/dbs/<name>/commit-log              recent small LTX files, made durable cheaply
//! <any of the above>.tmp                        a write in progress; deleted at recovery
//! ```

use std::path::{Path, PathBuf};

use replite_core::TxId;
use replite_core::stream::DbName;
use replite_core::types::format_ltx_filename;

/// Name of the epoch file in `data.dir`.
pub const EPOCH_FILE: &str = "epoch";
/// Name of the directory holding one directory per database.
pub const DBS_DIR: &str = "dbs";
/// Name of the database file inside a database's directory.
pub const DATABASE_FILE: &str = "database";
/// Name of the WAL inside a database's directory (written by the mount; the daemon folds
/// what a crash left of it into the database file before recovery).
pub const WAL_FILE: &str = "wal";
/// Name of the LTX directory inside a database's directory.
pub const LTX_DIR: &str = "ltx";
/// Per database: the commit log, a preallocated file where small LTX files are made durable
/// by overwriting allocated blocks (replite's own file; see `store::commit_log`).
pub const COMMIT_LOG_FILE: &str = "commit-log";
/// Per database: the TXID a replica moved back by a snapshot must reach before it may take
/// the lease (replite's own file; absent when there is none).
pub const REJOIN_FILE: &str = "rejoin";

/// `<data.dir>/dbs`.
#[must_use]
pub fn dbs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DBS_DIR)
}

/// `<data.dir>/dbs/<name>`.
#[must_use]
pub fn db_dir(data_dir: &Path, db: &DbName) -> PathBuf {
    dbs_dir(data_dir).join(db.as_str())
}

/// `<data.dir>/dbs/<name>/database`.
#[must_use]
pub fn database_path(data_dir: &Path, db: &DbName) -> PathBuf {
    db_dir(data_dir, db).join(DATABASE_FILE)
}

/// `<data.dir>/dbs/<name>/ltx`.
#[must_use]
pub fn ltx_dir(data_dir: &Path, db: &DbName) -> PathBuf {
    db_dir(data_dir, db).join(LTX_DIR)
}

/// `<data.dir>/dbs/<name>/ltx/<min>-<max>.ltx`.
#[must_use]
pub fn ltx_path(data_dir: &Path, db: &DbName, min: TxId, max: TxId) -> PathBuf {
    ltx_dir(data_dir, db).join(format_ltx_filename(min, max))
}

/// `<data.dir>/epoch`.
#[must_use]
pub fn epoch_path(data_dir: &Path) -> PathBuf {
    data_dir.join(EPOCH_FILE)
}
