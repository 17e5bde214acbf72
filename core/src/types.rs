//! Newtypes for the values replite must never mix up: transaction ids, checksums, page
//! numbers, page sizes, positions, epochs and node ids. Their `Display` is the text form
//! LiteFS uses on disk and on the wire (`%016x`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A text value that should have been a fixed-width hex number (TXID, checksum, position).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The text is not exactly 16 hex digits.
    #[error("invalid {what} {text:?}: expected 16 lowercase hex digits")]
    Hex16 {
        /// What was being parsed ("transaction id", "checksum").
        what: &'static str,
        /// The offending text.
        text: String,
    },
    /// The text is not `TXID/CHECKSUM`.
    #[error("invalid position {text:?}: expected %016x/%016x")]
    Pos {
        /// The offending text.
        text: String,
    },
    /// The text is not `MIN-MAX.ltx`.
    #[error("invalid LTX file name {text:?}: expected %016x-%016x.ltx")]
    Filename {
        /// The offending text.
        text: String,
    },
}

fn parse_hex16(what: &'static str, text: &str) -> Result<u64, ParseError> {
    let ok = text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(ParseError::Hex16 { what, text: text.to_owned() });
    }
    u64::from_str_radix(text, 16).map_err(|_| ParseError::Hex16 { what, text: text.to_owned() })
}

/// A transaction id. TXID 1 is the first transaction of a database; 0 means "no transaction".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TxId(pub u64);

impl TxId {
    /// "No transaction yet": the position of an empty database.
    pub const ZERO: TxId = TxId(0);

    /// The id that follows this one. Panics on overflow, which 2^64 transactions never reach.
    #[must_use]
    pub fn next(self) -> TxId {
        TxId(self.0.checked_add(1).expect("TXID space is 2^64; it cannot be exhausted"))
    }

    /// The id before this one, or `None` for zero.
    #[must_use]
    pub fn prev(self) -> Option<TxId> {
        self.0.checked_sub(1).map(TxId)
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for TxId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex16("transaction id", s).map(TxId)
    }
}

/// An LTX checksum: CRC-64/GO-ISO with bit 63 forced on, so a real checksum is never zero.
///
/// A database checksum is the XOR of the checksums of all its pages (except the lock page),
/// again with bit 63 forced on; the empty database has checksum [`Checksum::EMPTY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Checksum(pub u64);

impl Checksum {
    /// Bit 63, set on every valid checksum.
    pub const FLAG: u64 = 1 << 63;
    /// "No checksum": the pre-apply checksum of a snapshot.
    pub const ZERO: Checksum = Checksum(0);
    /// The checksum of a database with no pages.
    pub const EMPTY: Checksum = Checksum(Self::FLAG);

    /// Whether bit 63 is set, as every computed checksum has it.
    #[must_use]
    pub fn has_flag(self) -> bool {
        self.0 & Self::FLAG != 0
    }

    /// XOR `other` in (or out: XOR is its own inverse), keeping bit 63 set.
    #[must_use]
    pub fn xor(self, other: Checksum) -> Checksum {
        Checksum(Self::FLAG | (self.0 ^ other.0))
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Checksum {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex16("checksum", s).map(Checksum)
    }
}

/// A 1-based SQLite page number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pgno(pub u32);

impl Pgno {
    /// Byte offset of this page in a database file of the given page size.
    #[must_use]
    pub fn offset(self, page_size: PageSize) -> u64 {
        u64::from(self.0.saturating_sub(1)) * u64::from(page_size.get())
    }
}

impl fmt::Display for Pgno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A SQLite page size: a power of two from 512 to 65536 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize(u32);

/// SQLite's PENDING_BYTE: the page that holds it (the "lock page") is never written.
pub const PENDING_BYTE: u64 = 0x4000_0000;

impl PageSize {
    /// Smallest page size SQLite allows.
    pub const MIN: u32 = 512;
    /// Largest page size SQLite allows.
    pub const MAX: u32 = 65536;

    /// Validates a page size; `None` unless it is a power of two in 512..=65536.
    #[must_use]
    pub fn new(bytes: u32) -> Option<PageSize> {
        (bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes)).then_some(PageSize(bytes))
    }

    /// The size in bytes.
    #[must_use]
    pub fn get(self) -> u32 {
        self.0
    }

    /// The size in bytes, as a `usize` for buffer lengths.
    #[must_use]
    pub fn bytes(self) -> usize {
        self.0 as usize
    }

    /// The page that contains SQLite's PENDING_BYTE; it is never part of a checksum or an LTX.
    #[must_use]
    pub fn lock_pgno(self) -> Pgno {
        // PENDING_BYTE / 512 + 1 fits in u32 for every valid page size.
        Pgno((PENDING_BYTE / u64::from(self.0)) as u32 + 1)
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A replication position: the last applied transaction and the database checksum after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pos {
    /// The last transaction applied.
    pub txid: TxId,
    /// The database checksum after that transaction.
    pub checksum: Checksum,
}

impl Pos {
    /// The position of a database that has no transactions.
    pub const ZERO: Pos = Pos { txid: TxId::ZERO, checksum: Checksum::ZERO };

    /// A position from its parts.
    #[must_use]
    pub fn new(txid: TxId, checksum: Checksum) -> Pos {
        Pos { txid, checksum }
    }

    /// Whether this is the empty position.
    #[must_use]
    pub fn is_zero(self) -> bool {
        self == Pos::ZERO
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.txid, self.checksum)
    }
}

impl FromStr for Pos {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::Pos { text: s.to_owned() };
        let (txid, checksum) = s.split_once('/').ok_or_else(err)?;
        Ok(Pos { txid: txid.parse().map_err(|_| err())?, checksum: checksum.parse().map_err(|_| err())? })
    }
}

/// A lease epoch: the fencing token of a primary's term (etcd revision, Consul modify index,
/// or 1 for a static lease). Never decreases on any node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A node's id, as LiteFS writes it into LTX headers (zero when unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// The file name LiteFS gives an LTX file covering `min..=max`: `%016x-%016x.ltx`.
#[must_use]
pub fn format_ltx_filename(min: TxId, max: TxId) -> String {
    format!("{min}-{max}.ltx")
}

/// Parses an LTX file name back into its transaction range.
pub fn parse_ltx_filename(name: &str) -> Result<(TxId, TxId), ParseError> {
    let err = || ParseError::Filename { text: name.to_owned() };
    let stem = name.strip_suffix(".ltx").ok_or_else(err)?;
    let (min, max) = stem.split_once('-').ok_or_else(err)?;
    Ok((min.parse().map_err(|_| err())?, max.parse().map_err(|_| err())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_text_form_round_trips() {
        let pos = Pos::new(TxId(0x2a), Checksum(0x8e59_b0f9_c947_193f));
        assert_eq!(pos.to_string(), "000000000000002a/8e59b0f9c947193f");
        assert_eq!(pos.to_string().parse::<Pos>(), Ok(pos));
    }

    #[test]
    fn malformed_positions_are_rejected() {
        for text in [
            "",
            "2a/8e59b0f9c947193f",
            "000000000000002a-8e59b0f9c947193f",
            "000000000000002A/8e59b0f9c947193f",
            "+00000000000002a/8e59b0f9c947193f",
        ] {
            assert!(text.parse::<Pos>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn ltx_filenames_round_trip() {
        let name = format_ltx_filename(TxId(1), TxId(0x10));
        assert_eq!(name, "0000000000000001-0000000000000010.ltx");
        assert_eq!(parse_ltx_filename(&name), Ok((TxId(1), TxId(0x10))));
        assert!(parse_ltx_filename("0000000000000001-0000000000000010.ltx.tmp").is_err());
    }

    #[test]
    fn lock_page_is_the_page_holding_pending_byte() {
        assert_eq!(PageSize::new(4096).map(PageSize::lock_pgno), Some(Pgno(262_145)));
        assert_eq!(PageSize::new(512).map(PageSize::lock_pgno), Some(Pgno(2_097_153)));
        assert_eq!(PageSize::new(65536).map(PageSize::lock_pgno), Some(Pgno(16_385)));
    }

    #[test]
    fn only_sqlite_page_sizes_are_valid() {
        for ok in [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] {
            assert!(PageSize::new(ok).is_some());
        }
        for bad in [0, 1, 256, 513, 4095, 131_072, u32::MAX] {
            assert!(PageSize::new(bad).is_none());
        }
    }
}
