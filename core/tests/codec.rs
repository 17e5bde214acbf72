//! Codec behaviour beyond the fixtures: round trips of arbitrary page sets, and malformed
//! input (truncation, corruption, rule violations) always a typed error, never a panic.

use proptest::prelude::*;
use replite_core::ltx::{self, Decoder, Encoder, FLAG_COMPRESS_LZ4, Header, LtxError};
use replite_core::{Checksum, PageSize, Pgno, TxId};

fn page_size(bytes: u32) -> PageSize {
    PageSize::new(bytes).expect("valid page size")
}

/// A two-transaction-later delta file over the given pages.
fn encode_delta(size: PageSize, commit: u32, pages: &[(u32, u8)], compress: bool) -> Vec<u8> {
    let mut header = Header::new(size, commit, TxId(5), TxId(5), Checksum(Checksum::FLAG | 0x1234));
    if compress {
        header.flags = FLAG_COMPRESS_LZ4;
    }
    let mut encoder = Encoder::new(Vec::new(), header).expect("valid header");
    for &(pgno, fill) in pages {
        encoder.encode_page(Pgno(pgno), &vec![fill; size.bytes()]).expect("valid page");
    }
    encoder.finish(Checksum(Checksum::FLAG | 0x5678)).expect("finishes").0
}

fn decode_pages(bytes: &[u8]) -> Result<Vec<(u32, Vec<u8>)>, LtxError> {
    let mut decoder = Decoder::new(bytes)?;
    let mut page = vec![0u8; decoder.header().page_size.bytes()];
    let mut out = Vec::new();
    while let Some(pgno) = decoder.next_page(&mut page)? {
        out.push((pgno.0, page.clone()));
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_page_sets_round_trip(
        size_shift in 0u32..8,
        pgnos in proptest::collection::btree_set(1u32..200, 0..20),
        compress: bool,
        seed: u8,
    ) {
        let size = page_size(512 << size_shift);
        let pages: Vec<(u32, u8)> = pgnos.iter().map(|&p| (p, seed.wrapping_add(p as u8))).collect();
        let bytes = encode_delta(size, 200, &pages, compress);
        let decoded = decode_pages(&bytes).expect("own output decodes");
        let expected: Vec<(u32, Vec<u8>)> = pages.iter().map(|&(p, f)| (p, vec![f; size.bytes()])).collect();
        prop_assert_eq!(decoded, expected);
        prop_assert!(ltx::verify(&bytes[..]).is_ok());
    }

    /// A flipped byte is refused, or changes nothing a reader gets: the LTX checksums cover
    /// the uncompressed stream, and LZ4 has bits its decoder ignores (the match length of a
    /// block's last sequence, see `a_flip_lz4_ignores_changes_nothing_decoded`).
    #[test]
    fn any_single_byte_corruption_is_detected_or_changes_nothing(
        index: prop::sample::Index,
        flip in 1u8..=255,
        compress: bool,
    ) {
        let bytes = encode_delta(page_size(512), 10, &[(1, 1), (3, 3), (10, 10)], compress);
        let mut bad = bytes.clone();
        let at = index.index(bad.len());
        bad[at] ^= flip;
        if ltx::verify(&bad[..]).is_ok() {
            prop_assert!(compress, "flipping byte {} of an uncompressed file went unnoticed", at);
            prop_assert_eq!(
                decode_pages(&bad).expect("it verified"),
                decode_pages(&bytes).expect("own output decodes"),
                "flipping byte {} went unnoticed and changed the pages", at
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = ltx::verify(&bytes[..]);
    }
}

/// Found by the property above: the low nibble of the last LZ4 token (a match length, but a
/// block's last sequence has no match) is ignored by the decoder, so flipping it changes no
/// decoded byte and no checksum over them. Every other bit of this file is checked.
#[test]
fn a_flip_lz4_ignores_changes_nothing_decoded() {
    let bytes = encode_delta(page_size(512), 10, &[(1, 1), (3, 3), (10, 10)], true);
    let want = decode_pages(&bytes).expect("own output decodes");
    let mut unnoticed = Vec::new();
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[at] ^= 1 << bit;
            if ltx::verify(&bad[..]).is_ok() {
                assert_eq!(decode_pages(&bad).expect("it verified"), want, "byte {at} bit {bit}");
                unnoticed.push(at);
            }
        }
    }
    unnoticed.dedup();
    assert_eq!(unnoticed.len(), 1, "bytes whose flips go unnoticed: {unnoticed:?}");
}

#[test]
fn every_truncation_is_a_truncation_error_with_its_offset() {
    for compress in [false, true] {
        let bytes = encode_delta(page_size(1024), 4, &[(2, 7), (4, 9)], compress);
        for len in 0..bytes.len() {
            let err = ltx::verify(&bytes[..len]).expect_err("a truncated file must not verify");
            assert!(
                matches!(err, LtxError::Truncated { .. } | LtxError::TruncatedCompressed { .. }),
                "len {len} (compressed: {compress}): unexpected error {err}"
            );
        }
    }
}

#[test]
fn truncated_header_names_what_and_where() {
    let bytes = encode_delta(page_size(512), 1, &[(1, 1)], false);
    let err = ltx::verify(&bytes[..40]).expect_err("truncated");
    assert_eq!(err.to_string(), "file truncated: header at offset 0 needs 100 bytes, only 40 present");
    let err = ltx::verify(&bytes[..110]).expect_err("truncated");
    assert_eq!(err.to_string(), "file truncated: page 1 at offset 104 needs 512 bytes, only 6 present");
}

#[test]
fn trailing_bytes_after_the_trailer_are_rejected() {
    for compress in [false, true] {
        let mut bytes = encode_delta(page_size(512), 1, &[(1, 1)], compress);
        let len = bytes.len() as u64;
        bytes.push(0);
        let err = ltx::verify(&bytes[..]).expect_err("trailing byte");
        assert!(matches!(err, LtxError::TrailingData { raw_offset, extra: 1 } if raw_offset == len), "{err}");
    }
}

#[test]
fn decoder_stops_exactly_after_the_trailer_so_streams_can_continue() {
    for compress in [false, true] {
        let first = encode_delta(page_size(512), 3, &[(1, 1), (3, 3)], compress);
        let mut stream = first.clone();
        stream.extend_from_slice(b"NEXT");
        let mut decoder = Decoder::new(&stream[..]).expect("decodes");
        let mut page = vec![0u8; 512];
        while decoder.next_page(&mut page).expect("pages").is_some() {}
        assert_eq!(decoder.raw_offset(), first.len() as u64);
        let rest = decoder.into_inner().expect("reader returned");
        assert_eq!(rest, b"NEXT");
    }
}

#[test]
fn encoder_refuses_what_the_decoder_would_reject() {
    let size = page_size(4096);
    let page = vec![0u8; 4096];
    let delta = Header::new(size, 10, TxId(2), TxId(2), Checksum(Checksum::FLAG | 1));
    let mut enc = Encoder::new(Vec::new(), delta).expect("valid");
    assert!(matches!(enc.encode_page(Pgno(11), &page), Err(LtxError::PageBeyondCommit { .. })));
    enc.encode_page(Pgno(5), &page).expect("in range");
    assert!(matches!(enc.encode_page(Pgno(5), &page), Err(LtxError::PageOrder { .. })));
    assert!(matches!(enc.encode_page(Pgno(4), &page), Err(LtxError::PageOrder { .. })));
    assert!(matches!(enc.encode_page(Pgno(6), &page[..100]), Err(LtxError::PageBufferSize { .. })));

    let lock = size.lock_pgno();
    let big = Header::new(size, lock.0 + 1, TxId(2), TxId(2), Checksum(Checksum::FLAG | 1));
    let mut enc = Encoder::new(Vec::new(), big).expect("valid");
    assert!(matches!(enc.encode_page(lock, &page), Err(LtxError::LockPage { .. })));

    let snapshot = Header::new(size, 3, TxId(1), TxId(1), Checksum::ZERO);
    let mut enc = Encoder::new(Vec::new(), snapshot).expect("valid");
    assert!(matches!(enc.encode_page(Pgno(2), &page), Err(LtxError::PageOrder { .. })), "snapshots start at 1");
    enc.encode_page(Pgno(1), &page).expect("first page");
    let checksum = enc.snapshot_checksum();
    assert!(matches!(enc.finish(checksum), Err(LtxError::IncompleteSnapshot { last: 1, commit: 3, .. })));

    let deletion = Header::new(size, 0, TxId(2), TxId(2), Checksum(Checksum::FLAG | 1));
    let enc = Encoder::new(Vec::new(), deletion).expect("valid");
    assert!(matches!(enc.finish(Checksum(Checksum::FLAG | 9)), Err(LtxError::DeletionChecksum { .. })));
}

#[test]
fn snapshot_with_a_wrong_post_apply_checksum_is_rejected() {
    let size = page_size(512);
    let header = Header::new(size, 1, TxId(1), TxId(1), Checksum::ZERO);
    let mut enc = Encoder::new(Vec::new(), header).expect("valid");
    enc.encode_page(Pgno(1), &[1u8; 512]).expect("page");
    let right = enc.snapshot_checksum();
    let (mut bytes, _) = enc.finish(right).expect("finishes");
    // Forge a different post-apply checksum and a matching file checksum: only the page sum
    // can catch it.
    let n = bytes.len();
    let forged = Checksum(right.0 ^ 0x10);
    bytes[n - 16..n - 8].copy_from_slice(&forged.0.to_be_bytes());
    let mut hasher = ltx::Hasher::new();
    hasher.update(&bytes[..n - 8]);
    bytes[n - 8..].copy_from_slice(&hasher.checksum().0.to_be_bytes());
    assert!(matches!(ltx::verify(&bytes[..]), Err(LtxError::PostApplyChecksumMismatch { .. })));
}

#[test]
fn snapshots_skip_the_lock_page_of_a_database_over_one_gib() {
    // 512-byte pages put the lock page at 2,097,153; a 2,097,154-page snapshot holds all but it.
    let size = page_size(65536);
    let lock = size.lock_pgno().0;
    let header = Header::new(size, lock + 1, TxId(1), TxId(1), Checksum::ZERO);
    let mut enc = Encoder::new(std::io::sink(), header).expect("valid");
    let page = vec![0u8; 65536];
    for pgno in (1..=lock + 1).filter(|&p| p != lock) {
        enc.encode_page(Pgno(pgno), &page).expect("consecutive but for the lock page");
    }
    let checksum = enc.snapshot_checksum();
    enc.finish(checksum).expect("complete snapshot");
}

#[test]
fn verify_visiting_hands_on_every_page_and_stops_at_a_failing_visitor() {
    let bytes = encode_delta(page_size(512), 9, &[(2, 7), (5, 9), (9, 11)], true);
    let mut seen = Vec::new();
    let verified = ltx::verify_visiting(bytes.as_slice(), |header, pgno, page| {
        assert_eq!(header.commit, 9);
        seen.push((pgno.0, page.to_vec()));
        Ok(())
    })
    .expect("valid file");
    assert_eq!(verified.page_count(), 3);
    assert_eq!(seen, decode_pages(&bytes).expect("valid file"));

    let err = ltx::verify_visiting(bytes.as_slice(), |_, pgno, _| {
        if pgno.0 == 5 { Err(std::io::Error::other("disk full")) } else { Ok(()) }
    })
    .expect_err("the visitor failed");
    assert!(matches!(err, LtxError::Visit { pgno: Pgno(5), .. }), "{err}");
    assert_eq!(err.to_string(), "handing page 5 on failed: disk full");
}
