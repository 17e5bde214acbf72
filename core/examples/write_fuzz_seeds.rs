//! Writes the seed corpus for the fuzz targets: `cargo run -p replite-core --example
//! write_fuzz_seeds -- fuzz/corpus`. Seeds are small valid LTX files of each kind (snapshot,
//! delta, deletion, LZ4 or not) and round-trip control strings.

use std::fs;
use std::path::PathBuf;

use replite_core::ltx::{Encoder, FLAG_COMPRESS_LZ4, Header};
use replite_core::{Checksum, PageSize, Pgno, TxId};

fn encode(page_size: u32, min: u64, commit: u32, pgnos: &[u32], compress: bool) -> Vec<u8> {
    let size = PageSize::new(page_size).expect("valid page size");
    let pre = if min == 1 { Checksum::ZERO } else { Checksum(Checksum::FLAG | 0x0123_4567_89ab_cdef) };
    let mut header = Header::new(size, commit, TxId(min), TxId(min), pre);
    header.timestamp_ms = 1_700_000_000_000;
    if compress {
        header.flags = FLAG_COMPRESS_LZ4;
    }
    let mut encoder = Encoder::new(Vec::new(), header).expect("valid header");
    for &pgno in pgnos {
        let page: Vec<u8> = (0..page_size).map(|i| (i as u8).wrapping_mul(pgno as u8 | 1)).collect();
        encoder.encode_page(Pgno(pgno), &page).expect("valid page");
    }
    let post = match (min, commit) {
        (_, 0) => Checksum::EMPTY,
        (1, _) => encoder.snapshot_checksum(),
        _ => Checksum(Checksum::FLAG | 0x0fed_cba9_8765_4321),
    };
    encoder.finish(post).expect("finishes").0
}

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let decode = root.join("ltx_decode");
    let roundtrip = root.join("ltx_roundtrip");
    fs::create_dir_all(&decode)?;
    fs::create_dir_all(&roundtrip)?;
    let seeds = [
        ("snapshot-512", encode(512, 1, 3, &[1, 2, 3], false)),
        ("snapshot-512-lz4", encode(512, 1, 3, &[1, 2, 3], true)),
        ("delta-1024", encode(1024, 5, 9, &[2, 9], false)),
        ("delta-1024-lz4", encode(1024, 5, 9, &[2, 9], true)),
        ("deletion", encode(4096, 3, 0, &[], false)),
        ("empty-snapshot-lz4", encode(4096, 1, 0, &[], true)),
    ];
    for (name, bytes) in seeds {
        fs::write(decode.join(name), bytes)?;
    }
    for (name, bytes) in [
        ("plain", vec![0x00, 1, 7, 2, 9, 0, 3]),
        ("lz4-snapshot", vec![0xc1, 0, 1, 0, 2, 0, 3, 0, 4]),
        ("lz4-delta-64k", vec![0x87, 15, 255, 3, 0]),
        ("empty", vec![0x40]),
    ] {
        fs::write(roundtrip.join(name), bytes)?;
    }
    Ok(())
}
