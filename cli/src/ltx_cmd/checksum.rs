//! `ltx checksum`: the LTX database checksum of a SQLite file (lock page excluded, as LiteFS
//! computes it).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::Context;
use replite_core::ltx::{self, SQLITE_HEADER_SIZE, SqliteHeader};

pub fn run(path: &Path) -> anyhow::Result<()> {
    let mut file = BufReader::new(File::open(path).with_context(|| format!("open {}", path.display()))?);
    let mut head = Vec::with_capacity(SQLITE_HEADER_SIZE);
    (&mut file)
        .take(SQLITE_HEADER_SIZE as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: read database header", path.display()))?;
    let sqlite = SqliteHeader::parse(&head).with_context(|| path.display().to_string())?;
    let reader = std::io::Cursor::new(head).chain(file);
    let checksum =
        ltx::checksum_database(reader, sqlite.page_size).with_context(|| format!("{}: checksum", path.display()))?;
    println!("{checksum}");
    Ok(())
}
