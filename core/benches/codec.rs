//! LTX codec throughput: checksum GB/s (and the CRC crates compared), encode and decode MB/s
//! with and without LZ4. `cargo bench -p replite-core --bench codec`; figures in
//! docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use replite_core::ltx::{self, Decoder, Encoder, FLAG_COMPRESS_LZ4, Header};
use replite_core::{Checksum, PageSize, Pgno, TxId};

const PAGE_SIZE: u32 = 4096;
const PAGES: u32 = 2048; // 8 MiB of pages per file

/// Page contents shaped like a SQLite b-tree page: half high-entropy records, half free space.
fn page(pgno: u32) -> Vec<u8> {
    let mut state = u64::from(pgno).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = vec![0u8; PAGE_SIZE as usize];
    for b in &mut bytes[PAGE_SIZE as usize / 2..] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    bytes
}

fn encode(pages: &[Vec<u8>], compress: bool) -> Vec<u8> {
    let size = PageSize::new(PAGE_SIZE).expect("valid");
    let mut header = Header::new(size, PAGES, TxId(2), TxId(2), Checksum(Checksum::FLAG | 1));
    if compress {
        header.flags = FLAG_COMPRESS_LZ4;
    }
    let mut encoder = Encoder::new(Vec::with_capacity(pages.len() * PAGE_SIZE as usize + 4096), header).expect("valid");
    for (i, p) in pages.iter().enumerate() {
        encoder.encode_page(Pgno(i as u32 + 1), p).expect("in order");
    }
    encoder.finish(Checksum(Checksum::FLAG | 2)).expect("finishes").0
}

fn decode(bytes: &[u8]) -> u32 {
    let mut decoder = Decoder::new(bytes).expect("decodes");
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    let mut n = 0;
    while decoder.next_page(&mut buf).expect("valid").is_some() {
        n += 1;
    }
    n
}

fn checksums(c: &mut Criterion) {
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut group = c.benchmark_group("checksum");
    group.throughput(Throughput::Bytes(data.len() as u64));
    let table = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);
    group.bench_function("crc slice-by-16", |b| b.iter(|| table.checksum(black_box(&data))));
    group.bench_function("crc-fast simd (used)", |b| b.iter(|| ltx::crc64_go_iso(black_box(&data))));
    group.bench_function("page checksums 4 KiB", |b| {
        b.iter(|| {
            data.chunks_exact(PAGE_SIZE as usize)
                .enumerate()
                .fold(0u64, |acc, (i, p)| acc ^ ltx::page_checksum(Pgno(i as u32 + 1), p).0)
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let pages: Vec<Vec<u8>> = (1..=PAGES).map(page).collect();
    let logical = u64::from(PAGES) * u64::from(PAGE_SIZE);
    for compress in [false, true] {
        let label = if compress { "lz4" } else { "plain" };
        let encoded = encode(&pages, compress);
        let mut group = c.benchmark_group(format!("ltx {label}"));
        group.throughput(Throughput::Bytes(logical));
        group.sample_size(20);
        group.bench_function("encode", |b| b.iter(|| encode(black_box(&pages), compress)));
        group.bench_function("decode", |b| b.iter(|| decode(black_box(&encoded))));
        group.finish();
    }
}

criterion_group!(benches, checksums, codec);
criterion_main!(benches);
