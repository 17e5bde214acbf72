//! Bodies of the cargo-fuzz targets, kept here so `cargo test` can replay the committed corpus
//! and every past finding through exactly the code the fuzzer runs (see `fuzz/` and
//! `core/tests/fuzz_corpus.rs`). Each function panics only if an invariant of the codec breaks.

use crate::ltx::{self, Decoder, Encoder, FLAG_COMPRESS_LZ4, Header};
use crate::types::{Checksum, PageSize, Pgno, TxId};

/// Databases larger than this are not materialised in memory by the decode target.
const APPLY_SIZE_MAX: u64 = 16 << 20;

/// Page bytes at most in one round-trip input, so one run stays fast (the fuzzer explores
/// structure, not volume; benchmarks cover volume).
const ROUNDTRIP_BYTES_MAX: usize = 512 << 10;

/// Decodes arbitrary bytes as an LTX file in every way the product does; must never panic.
pub fn ltx_decode(data: &[u8]) {
    let verified = ltx::verify(data);
    let mut streamed_ok = false;
    if let Ok(mut decoder) = Decoder::new(data) {
        let mut page = vec![0u8; decoder.header().page_size.bytes()];
        loop {
            match decoder.next_page(&mut page) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    streamed_ok = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // After an error the decoder must keep refusing rather than carry on.
        if !streamed_ok {
            assert!(decoder.next_page(&mut page).is_err(), "decoder continued after an error");
        }
    }
    // verify additionally rejects trailing bytes; otherwise the two agree.
    if verified.is_ok() {
        assert!(streamed_ok, "verify accepted what streaming rejected");
    }
    if let Ok(v) = verified {
        let size = u64::from(v.header().commit) * u64::from(v.header().page_size.get());
        if size <= APPLY_SIZE_MAX {
            let mut db = Vec::new();
            let current = if v.header().is_snapshot() { Checksum::ZERO } else { v.header().pre_apply_checksum };
            // A non-snapshot applied to an empty database fails its post-apply check; a
            // snapshot must apply and land exactly on its trailer's position.
            let result = ltx::apply(&mut db, current, data);
            if v.header().is_snapshot() {
                assert_eq!(result.ok(), Some(v.post_apply_pos()), "a verified snapshot did not apply");
            }
        }
    }
}

/// Builds a page set from arbitrary bytes, encodes it, decodes it, and checks nothing changed.
pub fn ltx_roundtrip(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let page_size = PageSize::new(512 << (control % 8)).expect("512 << 0..8 is a valid page size");
    let compress = control & 0x80 != 0;
    let snapshot = control & 0x40 != 0;

    // Each following pair of bytes is (page-number step, fill byte).
    let mut pages: Vec<(Pgno, u8)> = Vec::new();
    let mut pgno = 0u32;
    let pages_max = (ROUNDTRIP_BYTES_MAX / page_size.bytes()).max(1);
    for pair in rest.chunks_exact(2).take(pages_max) {
        pgno += if snapshot { 1 } else { u32::from(pair[0] % 16) + 1 };
        pages.push((Pgno(pgno), pair[1]));
    }
    let commit = pgno;
    let (min, pre) = if snapshot { (TxId(1), Checksum::ZERO) } else { (TxId(7), Checksum(Checksum::FLAG | 0xfeed)) };
    let mut header = Header::new(page_size, commit, min, TxId(min.0 + 2), pre);
    if compress {
        header.flags = FLAG_COMPRESS_LZ4;
    }
    header.timestamp_ms = i64::from(control) * 1000;

    let mut encoder = Encoder::new(Vec::new(), header).expect("header built from valid parts");
    let mut buf = vec![0u8; page_size.bytes()];
    for &(pgno, fill) in &pages {
        fill_page(&mut buf, fill);
        encoder.encode_page(pgno, &buf).expect("pages are in order and within commit");
    }
    let post = if snapshot { encoder.snapshot_checksum() } else { Checksum(Checksum::FLAG | 0xbeef) };
    let post = if commit == 0 { Checksum::EMPTY } else { post };
    let (bytes, trailer) = encoder.finish(post).expect("encoder accepts what it built");

    let mut decoder = Decoder::new(&bytes[..]).expect("own header decodes");
    assert_eq!(*decoder.header(), header);
    for &(pgno, fill) in &pages {
        assert_eq!(decoder.next_page(&mut buf).expect("own page decodes"), Some(pgno));
        assert!(buf == expected_page(page_size.bytes(), fill), "page {pgno} changed");
    }
    assert_eq!(decoder.next_page(&mut buf).expect("end decodes"), None);
    assert_eq!(decoder.trailer(), Some(trailer));
    assert!(ltx::verify(&bytes[..]).is_ok());
}

/// A page whose bytes depend on their position, so misplaced bytes are caught.
fn fill_page(buf: &mut [u8], fill: u8) {
    for (chunk_index, chunk) in buf.chunks_mut(256).enumerate() {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = fill.wrapping_add(i as u8) ^ (chunk_index as u8);
        }
    }
}

fn expected_page(len: usize, fill: u8) -> Vec<u8> {
    let mut page = vec![0u8; len];
    fill_page(&mut page, fill);
    page
}
