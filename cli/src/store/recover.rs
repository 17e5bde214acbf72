//! Rebuilding [`Recovery`] from what is on disk at start. Recovery reports, it does not
//! decide: which files to keep, replay or delete is the Node's call (core's
//! `node::recovery`). The only thing deleted here is a temp file, which by construction never
//! held anything that was reported durable.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::Path;

use replite_core::ltx::{self, SQLITE_HEADER_SIZE, SqliteHeader};
use replite_core::node::{DbRecovery, LtxFileInfo, Recovery};
use replite_core::stream::DbName;
use replite_core::types::parse_ltx_filename;
use replite_core::{Checksum, Epoch, PageSize};
use tracing::{info, warn};

use crate::store::error::StoreError;
use crate::store::fsutil::{TEMP_SUFFIX, sync_dir, temp_path};
use crate::store::layout::{DATABASE_FILE, LTX_DIR, REJOIN_FILE, dbs_dir, epoch_path};

/// Reported as the database checksum when the file exists but cannot be summed (it is not a
/// whole number of pages, or its page size cannot be known). Bit 63 is clear, so it equals no
/// real checksum: the Node treats the file as matching no history and replays a snapshot or
/// waits for one.
pub const UNREADABLE_CHECKSUM: Checksum = Checksum(1);

/// Longest epoch file accepted: 16 hex digits and a newline.
const EPOCH_FILE_LEN: usize = 17;

/// Scans `data_dir`: every database's LTX files (each verified in full), the database file's
/// checksum, and the persisted epoch. Leftover temp files are removed.
///
/// First it makes everything under `data_dir` durable (`syncfs`): a kill -9 leaves LTX files
/// written without an fsync in the page cache, where this scan finds them, and both the Node
/// and the WAL fold (which folds a database up to the newest such file) then count them as
/// durable.
pub fn recover(data_dir: &Path) -> Result<Recovery, StoreError> {
    let mut recovery = Recovery { max_epoch: read_epoch(data_dir)?, ..Recovery::default() };
    let dbs = dbs_dir(data_dir);
    let entries = match fs::read_dir(&dbs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(recovery),
        Err(e) => return Err(StoreError::io("read_dir", &dbs)(e)),
    };
    crate::store::flush::sync_filesystem(&dbs)?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read_dir", &dbs))?;
        let path = entry.path();
        if !entry.file_type().map_err(StoreError::io("stat", &path))?.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().and_then(|n| DbName::new(n).ok()) else {
            warn!(path = %path.display(), "skipping a directory that is not a database name");
            continue;
        };
        let rec = recover_db(&path, &name)?;
        info!(
            db = %name,
            ltx_files = rec.ltx.len(),
            invalid_ltx_files = rec.invalid_ltx.len(),
            db_checksum = %rec.db_checksum,
            "recovered database files"
        );
        recovery.dbs.insert(name, rec);
    }
    Ok(recovery)
}

fn recover_db(dir: &Path, name: &DbName) -> Result<DbRecovery, StoreError> {
    remove_temp_files(dir)?;
    // Before the scan: files whose durability rested on the commit log are written back.
    crate::store::commit_log::restore(dir, name)?;
    let mut rec = DbRecovery::default();
    // Page size of the newest valid LTX file: the fallback when the database header is unreadable.
    let mut ltx_page_size: Option<(replite_core::TxId, PageSize)> = None;
    let ltx_dir = dir.join(LTX_DIR);
    if ltx_dir.is_dir() {
        remove_temp_files(&ltx_dir)?;
        for entry in fs::read_dir(&ltx_dir).map_err(StoreError::io("read_dir", &ltx_dir))? {
            let entry = entry.map_err(StoreError::io("read_dir", &ltx_dir))?;
            let file_name = entry.file_name();
            let Some(Ok((min, max))) = file_name.to_str().map(parse_ltx_filename) else {
                warn!(db = %name, file = ?file_name, "skipping a file in the LTX directory that is not an LTX file");
                continue;
            };
            let path = entry.path();
            let verified = File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| ltx::verify(BufReader::new(f)).map_err(|e| e.to_string()));
            match verified {
                Ok(v) if v.header().min_txid == min && v.header().max_txid == max => {
                    rec.ltx.push(LtxFileInfo {
                        min,
                        max,
                        pre: v.header().pre_apply_checksum,
                        post: v.trailer().post_apply_checksum,
                        size: v.size(),
                    });
                    if ltx_page_size.is_none_or(|(newest, _)| newest < max) {
                        ltx_page_size = Some((max, v.header().page_size));
                    }
                }
                Ok(v) => {
                    warn!(db = %name, %min, %max, header_min = %v.header().min_txid, header_max = %v.header().max_txid,
                        "LTX file's name and header disagree: not trusted");
                    rec.invalid_ltx.push((min, max));
                }
                Err(error) => {
                    warn!(db = %name, %min, %max, %error, "LTX file failed verification: not trusted");
                    rec.invalid_ltx.push((min, max));
                }
            }
        }
    }
    rec.ltx.sort_by_key(|f| (f.min, f.max));
    rec.invalid_ltx.sort();
    rec.db_checksum = database_checksum(&dir.join(DATABASE_FILE), name, ltx_page_size.map(|(_, p)| p))?;
    rec.rejoin_txid = read_rejoin(&dir.join(REJOIN_FILE))?;
    Ok(rec)
}

/// The checksum of the database file at `path` (zero when missing or empty), with the page
/// size from its SQLite header, else `fallback_page_size`; [`UNREADABLE_CHECKSUM`] when it
/// cannot be summed.
pub fn database_checksum(
    path: &Path,
    name: &DbName,
    fallback_page_size: Option<PageSize>,
) -> Result<Checksum, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Checksum::ZERO),
        Err(e) => return Err(StoreError::io("open", path)(e)),
    };
    let mut head = [0u8; SQLITE_HEADER_SIZE];
    let n = ltx::read_full(&mut file, &mut head).map_err(StoreError::io("read", path))?;
    if n == 0 {
        return Ok(Checksum::ZERO);
    }
    let Some(page_size) = SqliteHeader::parse(&head[..n]).ok().map(|h| h.page_size).or(fallback_page_size) else {
        warn!(db = %name, "database file has no SQLite header and no LTX file gives its page size");
        return Ok(UNREADABLE_CHECKSUM);
    };
    let file = File::open(path).map_err(StoreError::io("open", path))?;
    match ltx::checksum_database(BufReader::new(file), page_size) {
        Ok(sum) => Ok(sum),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            warn!(db = %name, %error, "database file is not a whole number of pages");
            Ok(UNREADABLE_CHECKSUM)
        }
        Err(e) => Err(StoreError::io("read", path)(e)),
    }
}

/// Deletes every `*.tmp` file directly in `dir`: writes a crash interrupted.
fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    let mut removed = 0usize;
    for entry in fs::read_dir(dir).map_err(StoreError::io("read_dir", dir))? {
        let entry = entry.map_err(StoreError::io("read_dir", dir))?;
        let path = entry.path();
        let is_temp = entry.file_name().to_str().is_some_and(|n| n.ends_with(TEMP_SUFFIX));
        if is_temp && entry.file_type().map_err(StoreError::io("stat", &path))?.is_file() {
            fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            warn!(path = %path.display(), "removed a temp file left by an interrupted write");
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(())
}

/// The persisted epoch: zero if the file is missing. A malformed file is an error rather than
/// zero, because reading it as zero would let the node follow a primary it had fenced off.
fn read_epoch(data_dir: &Path) -> Result<Epoch, StoreError> {
    let path = epoch_path(data_dir);
    let temp = temp_path(&path);
    match fs::remove_file(&temp) {
        Ok(()) => warn!(path = %temp.display(), "removed a temp file left by an interrupted write"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("remove", &temp)(e)),
    }
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Epoch(0)),
        Err(e) => return Err(StoreError::io("read", &path)(e)),
    };
    parse_epoch(&bytes).ok_or_else(|| StoreError::InvalidEpochFile {
        path,
        contents: String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned(),
    })
}

/// A database's rejoin TXID (same text form as the epoch file): zero if the file is missing;
/// a malformed one is an error, as reading it as zero could let the node take the lease
/// without transactions it acknowledged.
fn read_rejoin(path: &Path) -> Result<replite_core::TxId, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(replite_core::TxId::ZERO),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    parse_epoch(&bytes).map(|e| replite_core::TxId(e.0)).ok_or_else(|| StoreError::InvalidEpochFile {
        path: path.to_path_buf(),
        contents: String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned(),
    })
}

/// The epoch file's text form: exactly 16 lowercase hex digits and a newline.
pub(crate) fn format_epoch(epoch: Epoch) -> String {
    format!("{:016x}\n", epoch.0)
}

fn parse_epoch(bytes: &[u8]) -> Option<Epoch> {
    if bytes.len() != EPOCH_FILE_LEN || bytes[16] != b'\n' {
        return None;
    }
    let digits = &bytes[..16];
    if !digits.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok().map(Epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_text_form_round_trips_and_rejects_anything_else() {
        for e in [0, 1, 0x2a, u64::MAX] {
            assert_eq!(parse_epoch(format_epoch(Epoch(e)).as_bytes()), Some(Epoch(e)));
        }
        for bad in ["", "2a\n", "000000000000002A\n", "000000000000002a", "000000000000002a\n\n", "+00000000000002a\n"]
        {
            assert_eq!(parse_epoch(bad.as_bytes()), None, "{bad:?} accepted");
        }
    }
}
