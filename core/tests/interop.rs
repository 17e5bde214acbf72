//! Interop with LiteFS v0.5.14 and its `ltx` tool (superfly/ltx v0.3.14): every reference file
//! in `../shared/fixtures/ltx` decodes to exactly what the reference tool printed, re-encodes
//! to the same logical content and checksums, and `encode-db` reproduces the reference snapshot.

use std::fs;
use std::path::{Path, PathBuf};

use replite_core::ltx::{self, Decoder, Encoder, SnapshotOptions};
use replite_core::{Checksum, Pgno, TxId};

fn fixtures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/ltx");
    if dir.is_dir() {
        return Some(dir);
    }
    // CI always has shared/ beside the checkout; there its absence is a failure, not a skip.
    assert!(
        std::env::var_os("REPLITE_REQUIRE_FIXTURES").is_none(),
        "REPLITE_REQUIRE_FIXTURES is set but {} does not exist",
        dir.display()
    );
    eprintln!("SKIP: LiteFS fixtures not found at {} (clone with shared/ beside the repo)", dir.display());
    None
}

/// What the reference `ltx dump` printed for one file.
#[derive(Debug, Default)]
struct Reference {
    flags: u32,
    page_size: u32,
    commit: u32,
    min_txid: u64,
    max_txid: u64,
    timestamp_ms: i64,
    pre_apply: u64,
    wal_offset: i64,
    wal_size: i64,
    wal_salts: (u32, u32),
    pgnos: Vec<u32>,
    post_apply: u64,
    file_checksum: u64,
}

fn hex64(s: &str) -> u64 {
    u64::from_str_radix(s.trim(), 16).expect("reference output has hex here")
}

/// Parses the `ltx-v0.3.14 dump` section of a fixture's `.txt`.
fn parse_reference(text: &str) -> Reference {
    let dump = text.split("# ltx-v0.3.14 dump").nth(1).expect("fixture has a v0.3.14 dump");
    let dump = dump.split("# ltx-v0.3.14 list").next().expect("split yields one part");
    let mut r = Reference::default();
    for line in dump.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let first = value.split_whitespace().next().unwrap_or("");
        match key {
            "Flags" => r.flags = u32::from_str_radix(first.trim_start_matches("0x"), 16).expect("hex flags"),
            "Page size" => r.page_size = first.parse().expect("page size"),
            "Commit" => r.commit = first.parse().expect("commit"),
            "Min TXID" => r.min_txid = hex64(first),
            "Max TXID" => r.max_txid = hex64(first),
            "Timestamp" => {
                let ms = value.rsplit_once('(').expect("timestamp has (ms)").1.trim_end_matches(')');
                r.timestamp_ms = ms.parse().expect("timestamp ms");
            }
            "Pre-apply" => r.pre_apply = hex64(first),
            "WAL offset" => r.wal_offset = first.parse().expect("wal offset"),
            "WAL size" => r.wal_size = first.parse().expect("wal size"),
            "WAL salt" => {
                let mut it = value.split_whitespace().map(|s| u32::from_str_radix(s, 16).expect("salt"));
                r.wal_salts = (it.next().expect("salt1"), it.next().expect("salt2"));
            }
            "Post-apply" => r.post_apply = hex64(first),
            "File Checksum" => r.file_checksum = hex64(first),
            k if k.starts_with("Frame #") => {
                r.pgnos.push(value.trim_start_matches("pgno=").parse().expect("pgno"));
            }
            _ => {}
        }
    }
    r
}

fn ltx_fixtures(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("fixtures dir readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ltx"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "expected the six reference LTX files, found {}", files.len());
    files
}

struct Decoded {
    header: ltx::Header,
    pages: Vec<(Pgno, Vec<u8>)>,
    trailer: ltx::Trailer,
}

fn decode_all(bytes: &[u8]) -> Decoded {
    let mut decoder = Decoder::new(bytes).expect("header decodes");
    let header = *decoder.header();
    let mut pages = Vec::new();
    let mut page = vec![0u8; header.page_size.bytes()];
    while let Some(pgno) = decoder.next_page(&mut page).expect("page decodes") {
        pages.push((pgno, page.clone()));
    }
    let trailer = decoder.trailer().expect("trailer verified");
    Decoded { header, pages, trailer }
}

#[test]
fn every_reference_file_decodes_to_what_the_reference_tool_printed() {
    let Some(dir) = fixtures_dir() else { return };
    for path in ltx_fixtures(&dir) {
        let bytes = fs::read(&path).expect("fixture readable");
        let reference = parse_reference(&fs::read_to_string(path.with_extension("ltx.txt")).expect("reference output"));
        let d = decode_all(&bytes);
        let name = path.display();
        assert_eq!(d.header.flags, reference.flags, "{name}: flags");
        assert_eq!(d.header.page_size.get(), reference.page_size, "{name}: page size");
        assert_eq!(d.header.commit, reference.commit, "{name}: commit");
        assert_eq!(d.header.min_txid, TxId(reference.min_txid), "{name}: min txid");
        assert_eq!(d.header.max_txid, TxId(reference.max_txid), "{name}: max txid");
        assert_eq!(d.header.timestamp_ms, reference.timestamp_ms, "{name}: timestamp");
        assert_eq!(d.header.pre_apply_checksum, Checksum(reference.pre_apply), "{name}: pre-apply");
        assert_eq!(d.header.wal_offset, reference.wal_offset, "{name}: wal offset");
        assert_eq!(d.header.wal_size, reference.wal_size, "{name}: wal size");
        assert_eq!((d.header.wal_salt1, d.header.wal_salt2), reference.wal_salts, "{name}: wal salts");
        let pgnos: Vec<u32> = d.pages.iter().map(|(p, _)| p.0).collect();
        assert_eq!(pgnos, reference.pgnos, "{name}: page numbers");
        assert_eq!(d.trailer.post_apply_checksum, Checksum(reference.post_apply), "{name}: post-apply");
        assert_eq!(d.trailer.file_checksum, Checksum(reference.file_checksum), "{name}: file checksum");

        let verified = ltx::verify(&bytes[..]).expect("verifies");
        assert_eq!(verified.size(), bytes.len() as u64, "{name}: verify consumed the whole file");
        assert_eq!(verified.page_count() as usize, reference.pgnos.len());
    }
}

#[test]
fn re_encoding_a_reference_file_gives_the_same_content_and_checksums() {
    let Some(dir) = fixtures_dir() else { return };
    for path in ltx_fixtures(&dir) {
        let bytes = fs::read(&path).expect("fixture readable");
        let original = decode_all(&bytes);
        let mut encoder = Encoder::new(Vec::new(), original.header).expect("header valid");
        for (pgno, page) in &original.pages {
            encoder.encode_page(*pgno, page).expect("page valid");
        }
        let (out, trailer) = encoder.finish(original.trailer.post_apply_checksum).expect("finishes");
        let name = path.display();
        // The file checksum covers the uncompressed logical bytes, so it must match exactly
        // even where our LZ4 blocks differ from pierrec/lz4's.
        assert_eq!(trailer, original.trailer, "{name}: trailer");
        if !original.header.is_compressed() {
            assert_eq!(out, bytes, "{name}: uncompressed re-encoding is byte-identical");
        }
        let again = decode_all(&out);
        assert_eq!(again.header, original.header, "{name}: header");
        assert_eq!(again.pages, original.pages, "{name}: pages");
        assert_eq!(again.trailer, original.trailer, "{name}: trailer after decode");
    }
}

#[test]
fn encode_db_of_the_sample_reproduces_the_reference_snapshot() {
    let Some(dir) = fixtures_dir() else { return };
    let db = fs::read(dir.join("sample-source.db")).expect("sample db");
    let reference = fs::read(dir.join("ltx-v0.3.14_encode-db_snapshot.ltx")).expect("reference snapshot");
    let reference_header = *Decoder::new(&reference[..]).expect("decodes").header();
    let options = SnapshotOptions { max_txid: TxId(1), timestamp_ms: reference_header.timestamp_ms, compress: false };
    let (out, header, trailer) = ltx::encode_database(&db[..], db.len() as u64, Vec::new(), options).expect("encodes");
    assert_eq!(header, reference_header);
    assert_eq!(trailer.post_apply_checksum, Checksum(0xc3e3_9984_0f9b_cef7));
    assert_eq!(out, reference, "byte-identical to ltx v0.3.14 encode-db output");
    assert_eq!(ltx::checksum_database(&db[..], header.page_size).expect("in memory"), trailer.post_apply_checksum);
}

#[test]
fn litefs_histories_apply_in_order_and_compact_to_the_same_database() {
    let Some(dir) = fixtures_dir() else { return };
    for (prefix, last) in [("litefs-v0.5.14_rb_txid", 3), ("litefs-v0.5.14_wal_txid", 2)] {
        let files: Vec<Vec<u8>> =
            (1..=last).map(|i| fs::read(dir.join(format!("{prefix}{i}.ltx"))).expect("fixture")).collect();
        let mut db = Vec::new();
        let mut pos = replite_core::Pos::ZERO;
        for file in &files {
            pos = ltx::apply(&mut db, pos.checksum, &file[..]).expect("applies in order");
        }
        assert_eq!(pos.txid, TxId(last));
        let page_size = Decoder::new(&files[0][..]).expect("decodes").header().page_size;
        assert_eq!(ltx::checksum_database(&db[..], page_size).expect("in memory"), pos.checksum);
        assert_eq!(&db[..16], b"SQLite format 3\0");

        // Applying out of order is refused before anything is written.
        let before = db.clone();
        let err = ltx::apply(&mut db, pos.checksum, &files[1][..]).expect_err("TXID 2 does not follow itself");
        assert!(matches!(err, ltx::ApplyError::PreApplyMismatch { .. }), "{err}");
        assert_eq!(db, before);

        let mut compacted = Vec::new();
        let (header, trailer) =
            ltx::compact(files.iter().map(|f| &f[..]).collect(), &mut compacted, ltx::FLAG_COMPRESS_LZ4)
                .expect("compacts");
        assert_eq!((header.min_txid, header.max_txid), (TxId(1), TxId(last)));
        assert_eq!(trailer.post_apply_checksum, pos.checksum);
        let mut from_snapshot = Vec::new();
        ltx::apply(&mut from_snapshot, Checksum::ZERO, &compacted[..]).expect("snapshot applies");
        assert_eq!(from_snapshot, db, "{prefix}: compacted snapshot rebuilds the same database");
    }
}
