//! LTX checksums: CRC-64/GO-ISO (Go's `hash/crc64` with the ISO table), bit 63 forced on.
//!
//! The implementation is chosen by benchmark (`cargo bench -p replite-core --bench codec`):
//! `crc-fast` (carry-less multiply SIMD) runs ~17x faster than the `crc` crate's slice-by-16
//! table on this machine; `crc` stays as an independent cross-check in the tests. Every caller
//! goes through this module so the choice lives in one place.

use std::io::{self, Read};

use crate::types::{Checksum, PageSize, Pgno};

use crc_fast::CrcAlgorithm::Crc64GoIso;

/// A streaming CRC-64/GO-ISO (reflected polynomial 0x1B, init and xorout all ones) over bytes
/// fed in pieces; used for LTX file checksums.
#[derive(Clone)]
pub struct Hasher {
    digest: crc_fast::Digest,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher { digest: crc_fast::Digest::new(Crc64GoIso) }
    }
}

impl Hasher {
    /// A hasher over no bytes yet.
    #[must_use]
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.digest.update(bytes);
    }

    /// The raw CRC of everything fed so far (without the LTX flag bit).
    #[must_use]
    pub fn crc(&self) -> u64 {
        self.digest.finalize()
    }

    /// The LTX checksum of everything fed so far: the CRC with bit 63 set.
    #[must_use]
    pub fn checksum(&self) -> Checksum {
        Checksum(Checksum::FLAG | self.crc())
    }
}

/// Raw CRC-64/GO-ISO of `bytes`.
#[must_use]
pub fn crc64_go_iso(bytes: &[u8]) -> u64 {
    crc_fast::checksum(Crc64GoIso, bytes)
}

/// The checksum of one page: CRC over the page number (u32 big-endian) then the page bytes.
#[must_use]
pub fn page_checksum(pgno: Pgno, page: &[u8]) -> Checksum {
    let mut digest = crc_fast::Digest::new(Crc64GoIso);
    digest.update(&pgno.0.to_be_bytes());
    digest.update(page);
    Checksum(Checksum::FLAG | digest.finalize())
}

/// A database checksum being accumulated page by page (XOR of page checksums, lock page
/// skipped). XOR makes it incremental: removing a page is XOR-ing its checksum again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseChecksum {
    value: Checksum,
    lock_pgno: Pgno,
}

impl DatabaseChecksum {
    /// The checksum of an empty database of this page size.
    #[must_use]
    pub fn new(page_size: PageSize) -> DatabaseChecksum {
        DatabaseChecksum { value: Checksum::EMPTY, lock_pgno: page_size.lock_pgno() }
    }

    /// Continues from a known database checksum.
    #[must_use]
    pub fn from_checksum(page_size: PageSize, value: Checksum) -> DatabaseChecksum {
        DatabaseChecksum { value: Checksum(Checksum::FLAG | value.0), lock_pgno: page_size.lock_pgno() }
    }

    /// Adds (or removes: XOR is its own inverse) a page's checksum. The lock page is ignored.
    pub fn toggle(&mut self, pgno: Pgno, page_checksum: Checksum) {
        if pgno != self.lock_pgno {
            self.value = self.value.xor(page_checksum);
        }
    }

    /// Adds (or removes) a page by its contents.
    pub fn toggle_page(&mut self, pgno: Pgno, page: &[u8]) {
        if pgno != self.lock_pgno {
            self.value = self.value.xor(page_checksum(pgno, page));
        }
    }

    /// The checksum so far.
    #[must_use]
    pub fn value(&self) -> Checksum {
        self.value
    }
}

/// The database checksum of a whole database file read from `reader` (its length must be a
/// multiple of the page size; a trailing partial page is an error).
pub fn checksum_database<R: Read>(mut reader: R, page_size: PageSize) -> io::Result<Checksum> {
    let mut sum = DatabaseChecksum::new(page_size);
    let mut page = vec![0u8; page_size.bytes()];
    let mut pgno = 1u32;
    loop {
        let filled = read_full(&mut reader, &mut page)?;
        if filled == 0 {
            return Ok(sum.value());
        }
        if filled != page.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("database ends inside page {pgno} ({filled} of {page_size} bytes)"),
            ));
        }
        sum.toggle_page(Pgno(pgno), &page);
        pgno = pgno.checked_add(1).ok_or_else(|| io::Error::other("database has more than 2^32 pages"))?;
    }
}

/// Reads until `buf` is full or the reader ends; returns how many bytes were read (fewer than
/// `buf.len()` only at the end of the input).
pub fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_go_iso_not_ecma() {
        assert_eq!(crc64_go_iso(b"123456789"), 0xB909_56C7_75A4_1001);
    }

    #[test]
    fn simd_crc_agrees_with_the_table_driven_reference_crate() {
        let reference = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..70_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        // Lengths around SIMD block boundaries and odd offsets.
        for len in [0, 1, 7, 8, 15, 16, 31, 63, 64, 127, 128, 255, 256, 4096, 4100, 65_536, 69_999] {
            for start in [0, 1, 3] {
                let slice = &data[start..start + len.min(data.len() - start)];
                assert_eq!(crc64_go_iso(slice), reference.checksum(slice), "len {len} start {start}");
            }
        }
    }

    #[test]
    fn streaming_hasher_matches_one_shot() {
        let mut h = Hasher::new();
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(h.crc(), crc64_go_iso(b"123456789"));
        assert_eq!(h.checksum(), Checksum(Checksum::FLAG | 0xB909_56C7_75A4_1001));
    }

    #[test]
    fn database_checksum_is_incremental() {
        let size = PageSize::new(512).expect("valid");
        let a = vec![1u8; 512];
        let b = vec![2u8; 512];
        let mut full = DatabaseChecksum::new(size);
        full.toggle_page(Pgno(1), &a);
        full.toggle_page(Pgno(2), &b);
        let mut db = Vec::new();
        db.extend_from_slice(&a);
        db.extend_from_slice(&b);
        assert_eq!(checksum_database(&db[..], size).expect("in memory"), full.value());
        // Replacing page 2 by page 2' equals XOR-ing out the old and in the new.
        let c = vec![3u8; 512];
        full.toggle_page(Pgno(2), &b);
        full.toggle_page(Pgno(2), &c);
        db[512..].copy_from_slice(&c);
        assert_eq!(checksum_database(&db[..], size).expect("in memory"), full.value());
    }

    #[test]
    fn lock_page_is_left_out_of_the_database_checksum() {
        let size = PageSize::new(65536).expect("valid");
        let mut sum = DatabaseChecksum::new(size);
        sum.toggle_page(size.lock_pgno(), &[7u8; 4]);
        assert_eq!(sum.value(), Checksum::EMPTY);
    }
}
