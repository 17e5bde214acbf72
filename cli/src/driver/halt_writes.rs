//! A replica's writes under a halt lock it holds on its primary (LiteFS's
//! `litefs run -with-halt-lock-on`): what the driver keeps about them. The transactions its
//! applications commit are encoded as LTX files on top of the lock's position and sent to the
//! primary's `/tx`; the commit returns once the primary accepted it. The stream then brings
//! each one back like any other transaction: its pages are already in the database, so it is
//! stored, not applied (an apply would find the pages it expects to change already changed).

use std::collections::BTreeMap;

use replite_core::ltx::{TRAILER_SIZE, Trailer};
use replite_core::{Checksum, Pos, TxId};

/// One database's halt lock, as the replica holding it sees it.
#[derive(Debug)]
pub struct ReplicaHalt {
    /// The lock's id at the primary.
    pub id: i64,
    /// The primary's API URL.
    pub primary_url: String,
    /// The position the next transaction is made on.
    pub head: Pos,
}

/// Transactions this replica sent its primary whose files the stream has not brought back
/// yet, by database and TXID, with their post-apply checksums. Kept past the lock's release:
/// the last ones may come back after it.
#[derive(Debug, Default)]
pub struct SentTransactions(BTreeMap<(String, TxId), Checksum>);

impl SentTransactions {
    /// Records transaction `txid` of `db`, leading to `post`, as sent.
    pub fn sent(&mut self, db: &str, txid: TxId, post: Checksum) {
        self.0.insert((db.to_owned(), txid), post);
    }

    /// The primary refused it: it never comes back.
    pub fn refused(&mut self, db: &str, txid: TxId) {
        self.0.remove(&(db.to_owned(), txid));
    }

    /// Whether `bytes`, the stream's file `min`-`max` of `db`, is one this replica sent (and
    /// forgets it): a single transaction with the same post-apply checksum.
    pub fn take_echo(&mut self, db: &str, min: TxId, max: TxId, bytes: &[u8]) -> bool {
        if min != max {
            return false;
        }
        let key = (db.to_owned(), max);
        let Some(&post) = self.0.get(&key) else { return false };
        let Some(trailer) =
            bytes.len().checked_sub(TRAILER_SIZE).and_then(|at| <&[u8; TRAILER_SIZE]>::try_from(&bytes[at..]).ok())
        else {
            return false;
        };
        if Trailer::decode(trailer).post_apply_checksum != post {
            return false;
        }
        self.0.remove(&key);
        true
    }

    /// Forgets what can no longer come back once `db` is at `txid` by other means (a
    /// snapshot).
    pub fn forget_through(&mut self, db: &str, txid: TxId) {
        self.0.retain(|(name, sent), _| name != db || *sent > txid);
    }
}

#[cfg(test)]
mod tests {
    use replite_core::ltx::{Encoder, Header};
    use replite_core::{PageSize, Pgno};

    use super::*;

    fn file(txid: u64, post: u64) -> Vec<u8> {
        let page_size = PageSize::new(512).expect("valid");
        let header = Header::new(page_size, 1, TxId(txid), TxId(txid), Checksum(0x8000_0000_0000_0001));
        let mut encoder = Encoder::new(Vec::new(), header).expect("encoder");
        encoder.encode_page(Pgno(1), &[7u8; 512]).expect("page");
        encoder.finish(Checksum(post)).expect("finish").0
    }

    #[test]
    fn only_the_sent_transaction_with_its_checksum_comes_back_as_an_echo_once() {
        let mut sent = SentTransactions::default();
        let post = 0x8000_0000_0000_0abc;
        sent.sent("a.db", TxId(5), Checksum(post));
        assert!(!sent.take_echo("b.db", TxId(5), TxId(5), &file(5, post)), "another database");
        assert!(!sent.take_echo("a.db", TxId(5), TxId(5), &file(5, post ^ 1)), "another transaction 5");
        assert!(!sent.take_echo("a.db", TxId(4), TxId(5), &file(5, post)), "a range");
        assert!(sent.take_echo("a.db", TxId(5), TxId(5), &file(5, post)));
        assert!(!sent.take_echo("a.db", TxId(5), TxId(5), &file(5, post)), "once");
    }

    #[test]
    fn refused_and_overtaken_transactions_are_forgotten() {
        let mut sent = SentTransactions::default();
        sent.sent("a.db", TxId(5), Checksum(0x8000_0000_0000_0005));
        sent.sent("a.db", TxId(6), Checksum(0x8000_0000_0000_0006));
        sent.sent("a.db", TxId(7), Checksum(0x8000_0000_0000_0007));
        sent.refused("a.db", TxId(7));
        sent.forget_through("a.db", TxId(5));
        assert!(!sent.take_echo("a.db", TxId(5), TxId(5), &file(5, 0x8000_0000_0000_0005)));
        assert!(sent.take_echo("a.db", TxId(6), TxId(6), &file(6, 0x8000_0000_0000_0006)));
        assert!(!sent.take_echo("a.db", TxId(7), TxId(7), &file(7, 0x8000_0000_0000_0007)));
    }
}
