//! `ltx dump`: everything about one file, printed even when the file turns out to be broken,
//! so the output shows how far it got before the error.

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use anyhow::{Context, bail};
use replite_core::ltx::{Decoder, HEADER_SIZE, Header};

use crate::timefmt::rfc3339_nano_ms;

pub fn run(path: &Path) -> anyhow::Result<()> {
    let mut file = BufReader::new(File::open(path).with_context(|| format!("open {}", path.display()))?);
    let mut head = [0u8; HEADER_SIZE];
    let got = replite_core::ltx::read_full(&mut file, &mut head).with_context(|| format!("read {}", path.display()))?;
    if got == HEADER_SIZE
        && let Ok(raw) = Header::decode_unvalidated(&head)
    {
        println!("# HEADER");
        println!("Version:   1");
        println!("Flags:     0x{:08x}", raw.flags);
        println!("Page size: {}", raw.page_size);
        println!("Commit:    {}", raw.commit);
        println!("Min TXID:  {} ({})", raw.min_txid, raw.min_txid.0);
        println!("Max TXID:  {} ({})", raw.max_txid, raw.max_txid.0);
        println!("Timestamp: {} ({})", rfc3339_nano_ms(raw.timestamp_ms), raw.timestamp_ms);
        println!("Pre-apply: {}", raw.pre_apply_checksum);
        println!("WAL offset: {}", raw.wal_offset);
        println!("WAL size:   {}", raw.wal_size);
        println!("WAL salt:   {:08x} {:08x}", raw.wal_salt1, raw.wal_salt2);
        println!();
    }

    let reader = Cursor::new(&head[..got]).chain(file);
    let mut decoder = Decoder::new(reader).with_context(|| format!("{}: decode header", path.display()))?;
    println!("# PAGE DATA");
    let mut page = vec![0u8; decoder.header().page_size.bytes()];
    let mut frame = 0u32;
    let end = loop {
        match decoder.next_page(&mut page) {
            Ok(Some(pgno)) => {
                println!("Frame #{frame}: pgno={pgno}");
                frame += 1;
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    println!();
    if let Err(e) = end {
        bail!("{}: decode page frame {frame}: {e}", path.display());
    }
    let trailer = decoder.trailer().context("no trailer after the last page")?;
    println!("# TRAILER");
    println!("Post-apply:    {}", trailer.post_apply_checksum);
    println!("File Checksum: {}", trailer.file_checksum);
    println!();
    Ok(())
}
