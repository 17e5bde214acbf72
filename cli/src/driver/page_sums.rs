//! Per-page checksums of each database on the primary. The core's commit path needs each
//! changed page's checksum from *before* the transaction, and by the commit point SQLite has
//! already overwritten those pages, so the driver remembers every page's checksum (8 bytes a
//! page, as LiteFS does) and updates the table only once the Node has acknowledged a commit.

use std::io::{self, Read};

use replite_core::ltx::{DatabaseChecksum, checksum_database, page_checksum};
use replite_core::node::PageChange;
use replite_core::{Checksum, PageSize, Pgno};

/// The checksum of every page of one database, by page number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSums {
    page_size: PageSize,
    /// Index 0 is page 1.
    sums: Vec<Checksum>,
}

/// What the core needs to know about one transaction's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPages {
    /// Changed pages with their previous checksums.
    pub pages: Vec<PageChange>,
    /// Pages cut off by a shrinking transaction, with their checksums.
    pub removed: Vec<(Pgno, Checksum)>,
}

impl PageSums {
    /// An empty database.
    #[must_use]
    pub fn empty(page_size: PageSize) -> PageSums {
        PageSums { page_size, sums: Vec::new() }
    }

    /// Reads a whole database file (its length a multiple of the page size).
    pub fn read<R: Read>(mut reader: R, page_size: PageSize) -> io::Result<PageSums> {
        let mut sums = Vec::new();
        let mut page = vec![0u8; page_size.bytes()];
        loop {
            match reader.read_exact(&mut page) {
                Ok(()) => {
                    let pgno = Pgno(u32::try_from(sums.len() + 1).map_err(io::Error::other)?);
                    sums.push(page_checksum(pgno, &page));
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(PageSums { page_size, sums }),
                Err(e) => return Err(e),
            }
        }
    }

    /// The database's page size.
    #[must_use]
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The database checksum these pages give (lock page excluded).
    #[must_use]
    pub fn database_checksum(&self) -> Checksum {
        let mut sum = DatabaseChecksum::new(self.page_size);
        for (i, c) in self.sums.iter().enumerate() {
            sum.toggle(Pgno(i as u32 + 1), *c);
        }
        sum.value()
    }

    /// Database size in pages.
    #[must_use]
    pub fn pages(&self) -> u32 {
        u32::try_from(self.sums.len()).expect("a SQLite database has at most 2^32 pages")
    }

    /// The core's view of a transaction that writes `pages` and leaves `commit` pages.
    #[must_use]
    pub fn changes<'a>(&self, pages: impl IntoIterator<Item = (Pgno, &'a [u8])>, commit: u32) -> CommitPages {
        let pages = pages
            .into_iter()
            .map(|(pgno, data)| PageChange {
                pgno,
                old: self.sums.get(pgno.0 as usize - 1).copied(),
                data: data.to_vec(),
            })
            .collect();
        let removed = (commit as usize..self.sums.len()).map(|i| (Pgno(i as u32 + 1), self.sums[i])).collect();
        CommitPages { pages, removed }
    }

    /// Records a transaction the core acknowledged.
    pub fn commit<'a>(&mut self, pages: impl IntoIterator<Item = (Pgno, &'a [u8])>, commit: u32) {
        self.sums.truncate(commit as usize);
        for (pgno, data) in pages {
            let index = pgno.0 as usize - 1;
            if index >= self.sums.len() {
                // Pages between the old end and this one are SQLite's lock page or ones the
                // same transaction writes next; zero checksums stand in until they arrive.
                self.sums.resize(index + 1, Checksum::ZERO);
            }
            self.sums[index] = page_checksum(pgno, data);
        }
    }

    /// Whether the table still matches the file (checked at start and after recovery).
    pub fn matches<R: Read>(&self, reader: R) -> io::Result<bool> {
        Ok(checksum_database(reader, self.page_size)? == self.database_checksum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size() -> PageSize {
        PageSize::new(512).expect("valid")
    }

    fn db(pages: &[u8]) -> Vec<u8> {
        pages.iter().flat_map(|&fill| vec![fill; 512]).collect()
    }

    #[test]
    fn changes_carry_old_checksums_and_removed_pages() {
        let file = db(&[1, 2, 3]);
        let sums = PageSums::read(&file[..], size()).expect("reads");
        assert_eq!(sums.pages(), 3);
        assert_eq!(sums.database_checksum(), checksum_database(&file[..], size()).expect("sums"));

        let new2 = vec![9u8; 512];
        let change = sums.changes([(Pgno(2), &new2[..])], 2);
        assert_eq!(change.pages[0].old, Some(page_checksum(Pgno(2), &[2u8; 512])));
        assert_eq!(change.removed, vec![(Pgno(3), page_checksum(Pgno(3), &[3u8; 512]))]);

        let grown = sums.changes([(Pgno(4), &new2[..])], 4);
        assert_eq!(grown.pages[0].old, None, "a page past the end did not exist");
        assert!(grown.removed.is_empty());
    }

    #[test]
    fn committed_transactions_keep_the_table_equal_to_the_file() {
        let mut file = db(&[1, 2, 3]);
        let mut sums = PageSums::read(&file[..], size()).expect("reads");
        let new1 = vec![7u8; 512];
        sums.commit([(Pgno(1), &new1[..])], 2);
        file.truncate(1024);
        file[..512].copy_from_slice(&new1);
        assert!(sums.matches(&file[..]).expect("reads"));

        let new3 = vec![5u8; 512];
        sums.commit([(Pgno(3), &new3[..])], 3);
        file.extend_from_slice(&new3);
        assert!(sums.matches(&file[..]).expect("reads"));
    }
}
