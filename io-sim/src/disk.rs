//! A node's simulated disk: LTX files and the database file. An operation's effects land
//! when it completes; a crash while it is in flight loses it, lands it torn, or lands the
//! LTX file without the database apply.

use std::collections::BTreeMap;

use replite_core::ltx;
use replite_core::node::{DbRecovery, IoFailure, LtxFileInfo};
use replite_core::{Checksum, PageSize, Pos, TxId};

/// Durable files.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// LTX files by (min, max).
    pub ltx: BTreeMap<(TxId, TxId), Vec<u8>>,
    /// The database file.
    pub db: Vec<u8>,
}

impl Disk {
    /// Writes an LTX file then applies it to the database from checksum `base`.
    pub fn persist(&mut self, min: TxId, max: TxId, bytes: Vec<u8>, base: Checksum) -> Result<Pos, IoFailure> {
        if min == TxId(1) {
            self.ltx.clear();
        }
        self.ltx.insert((min, max), bytes);
        self.apply(min, max, base)
    }

    /// Applies an LTX file already on disk.
    pub fn apply(&mut self, min: TxId, max: TxId, base: Checksum) -> Result<Pos, IoFailure> {
        let Some(bytes) = self.ltx.get(&(min, max)) else { return Err(IoFailure::Io) };
        ltx::apply(&mut self.db, base, bytes.as_slice()).map_err(|_| IoFailure::Mismatch)
    }

    /// What a restarting node finds.
    #[must_use]
    pub fn recovery(&mut self, page_size: PageSize) -> DbRecovery {
        let mut rec = DbRecovery::default();
        for (&(min, max), bytes) in &self.ltx {
            match ltx::verify(bytes.as_slice()) {
                Ok(v) if v.header().min_txid == min && v.header().max_txid == max => rec.ltx.push(LtxFileInfo {
                    min,
                    max,
                    pre: v.header().pre_apply_checksum,
                    post: v.trailer().post_apply_checksum,
                    size: v.size(),
                }),
                _ => rec.invalid_ltx.push((min, max)),
            }
        }
        rec.db_checksum = self.db_checksum(page_size);
        rec
    }

    /// The database file's checksum (`Checksum::EMPTY` when empty).
    #[must_use]
    pub fn db_checksum(&mut self, page_size: PageSize) -> Checksum {
        if self.db.is_empty() {
            // The empty database: what a drop leaves (LTX post-apply checksum of a file with
            // commit size zero). Recovery treats it like a missing file.
            return Checksum::EMPTY;
        }
        ltx::checksum_database(self.db.as_slice(), page_size).unwrap_or(Checksum::ZERO)
    }
}
