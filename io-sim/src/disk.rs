//! A node's simulated disk: LTX files and the database file. An operation's effects land
//! when it completes; a crash while it is in flight loses it, lands it torn, or lands the
//! LTX file without the database apply.
//!
//! Files written without an fsync (`PersistLtx` with `durable` unset) are visible at once but
//! volatile until a flush covers them: a crash loses, tears or keeps each one independently
//! (the page cache reaches the disk in no particular order), and the database file reverts
//! to its image after some prefix of the volatile applies, cut back to the newest whose LTX
//! file survived whole, as the daemon's WAL fold does (`io-fuse/src/wal_fold.rs`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use replite_core::ltx;
use replite_core::node::{DbRecovery, IoFailure, LtxFileInfo, SplitMix64};
use replite_core::{Checksum, PageSize, Pos, TxId};

/// Durable files.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// LTX files by (min, max), as a reader sees them (the page cache).
    pub ltx: BTreeMap<(TxId, TxId), Vec<u8>>,
    /// The database file, as a reader sees it.
    pub db: Vec<u8>,
    /// The rejoin record (`Output::PersistRejoin`), written durably at once.
    pub rejoin_txid: TxId,
    /// LTX files written without an fsync and not flushed yet.
    unsynced: BTreeSet<(TxId, TxId)>,
    /// The database file as of the last durable point.
    db_durable: Vec<u8>,
    /// The database file after each volatile apply since, with the applied file's range.
    db_after: Vec<((TxId, TxId), Vec<u8>)>,
}

/// What rolling back a transaction's pages puts back: the file's length and old contents.
#[derive(Debug, Clone)]
pub struct Rollback {
    len: usize,
    pages: Vec<(usize, Vec<u8>)>,
}

/// What a crash did to the volatile state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashLoss {
    /// Volatile LTX files lost or torn.
    pub files_lost: u64,
    /// Volatile database applies undone.
    pub applies_lost: u64,
}

impl Disk {
    /// Writes an LTX file then applies it to the database from checksum `base`; with
    /// `durable` both are durable when this returns, else volatile until [`Disk::flush`].
    pub fn persist(
        &mut self,
        min: TxId,
        max: TxId,
        bytes: Vec<u8>,
        base: Checksum,
        durable: bool,
    ) -> Result<Pos, IoFailure> {
        if min == TxId(1) {
            self.ltx.clear();
            self.unsynced.clear();
            self.db_after.clear();
        }
        self.ltx.insert((min, max), bytes);
        let result = self.apply(min, max, base);
        self.written(min, max, durable);
        result
    }

    /// File `min`-`max` and the database as it is now were written: durable at once, or
    /// volatile until a flush. Core asks for a durable write only when nothing earlier is
    /// volatile (or for a snapshot, which replaced it all).
    fn written(&mut self, min: TxId, max: TxId, durable: bool) {
        if durable {
            self.unsynced.remove(&(min, max));
            self.db_after.clear();
            self.db_durable = self.db.clone();
        } else {
            self.unsynced.insert((min, max));
            self.db_after.push(((min, max), self.db.clone()));
        }
    }

    /// Writes an LTX file whose pages the database already holds (a transaction a replica
    /// wrote under a halt lock, back from its primary), durable or volatile as
    /// [`Disk::persist`]; the database is left as it is.
    pub fn store(&mut self, min: TxId, max: TxId, bytes: Vec<u8>, durable: bool) -> Result<Pos, IoFailure> {
        let post = ltx::verify(bytes.as_slice()).map_err(|_| IoFailure::Mismatch)?.post_apply_pos();
        self.ltx.insert((min, max), bytes);
        self.written(min, max, durable);
        Ok(post)
    }

    /// An application writes a transaction's pages (the LTX file `bytes`) into the database
    /// file itself, without an fsync: a crash may lose them. Nothing is checked: the pages
    /// land whatever the file held. Returns what a rollback puts back ([`Disk::roll_back`]).
    pub fn write_pages(&mut self, bytes: &[u8]) -> Rollback {
        let mut decoder = ltx::Decoder::new(bytes).expect("a whole LTX file");
        let header = *decoder.header();
        let psize = header.page_size.bytes();
        let mut undo = Rollback { len: self.db.len(), pages: Vec::new() };
        let mut page = vec![0u8; psize];
        while let Some(pgno) = decoder.next_page(&mut page).expect("a whole LTX file") {
            let start = (pgno.0 as usize - 1) * psize;
            if start < self.db.len() {
                undo.pages.push((start, self.db[start..(start + psize).min(self.db.len())].to_vec()));
            }
            if self.db.len() < start + psize {
                self.db.resize(start + psize, 0);
            }
            self.db[start..start + psize].copy_from_slice(&page);
        }
        let end = header.commit as usize * psize;
        if self.db.len() > end {
            undo.pages.push((end, self.db[end..].to_vec()));
        }
        self.db.truncate(end);
        undo
    }

    /// SQLite rolls a transaction back: the pages [`Disk::write_pages`] changed get their old
    /// contents, and the file its old length.
    pub fn roll_back(&mut self, undo: Rollback) {
        self.db.resize(undo.len.max(self.db.len()), 0);
        for (start, old) in undo.pages {
            self.db[start..start + old.len()].copy_from_slice(&old);
        }
        self.db.truncate(undo.len);
    }

    /// Applies an LTX file already on disk (recovery replay: of durable files).
    pub fn apply(&mut self, min: TxId, max: TxId, base: Checksum) -> Result<Pos, IoFailure> {
        let Some(bytes) = self.ltx.get(&(min, max)) else { return Err(IoFailure::Io) };
        ltx::apply(&mut self.db, base, bytes.as_slice()).map_err(|_| IoFailure::Mismatch)
    }

    /// Recovery replay of a durable file: the database it produces is durable as far as the
    /// simulation goes (nothing volatile is left after a crash).
    pub fn replay(&mut self, min: TxId, max: TxId, base: Checksum) -> Result<Pos, IoFailure> {
        let result = self.apply(min, max, base);
        if self.db_after.is_empty() {
            self.db_durable = self.db.clone();
        }
        result
    }

    /// Makes every volatile file up to `through`, and the database image after it, durable.
    pub fn flush(&mut self, through: TxId) {
        self.unsynced.retain(|&(_, max)| max > through);
        let covered = self.db_after.iter().rposition(|((_, max), _)| *max <= through);
        if let Some(i) = covered {
            self.db_durable = self.db_after[i].1.clone();
            self.db_after.drain(..=i);
        }
    }

    /// Deletes an LTX file.
    pub fn remove(&mut self, min: TxId, max: TxId) {
        self.ltx.remove(&(min, max));
        self.unsynced.remove(&(min, max));
    }

    /// A crash: each volatile file is lost, torn or kept; the database reverts to its image
    /// after a random prefix of the volatile applies, cut back to one whose file survived.
    pub fn crash(&mut self, rng: &mut SplitMix64) -> CrashLoss {
        let mut loss = CrashLoss::default();
        for key in std::mem::take(&mut self.unsynced) {
            match rng.below(3) {
                0 => {
                    self.ltx.remove(&key);
                    loss.files_lost += 1;
                }
                1 => {
                    if let Some(bytes) = self.ltx.get_mut(&key) {
                        let cut = rng.below(bytes.len() as u64) as usize;
                        bytes.truncate(cut);
                        loss.files_lost += 1;
                    }
                }
                _ => {}
            }
        }
        let applies = std::mem::take(&mut self.db_after);
        let mut k = rng.below(applies.len() as u64 + 1) as usize;
        while k > 0 {
            let (key, _) = &applies[k - 1];
            let whole = self.ltx.get(key).is_some_and(|b| ltx::verify(b.as_slice()).is_ok());
            if whole {
                break;
            }
            k -= 1;
        }
        loss.applies_lost = (applies.len() - k) as u64;
        self.db = if k == 0 { self.db_durable.clone() } else { applies[k - 1].1.clone() };
        self.db_durable = self.db.clone();
        loss
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
        rec.rejoin_txid = self.rejoin_txid;
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
