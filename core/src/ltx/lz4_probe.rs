//! Whether LZ4 pays for a file. In LTX v1 one flag covers the whole page section, so the
//! choice is per file: a sample of its first pages is compressed and LZ4 is used only if it
//! saves at least an eighth. Incompressible pages (encrypted or already compressed data,
//! random blobs) otherwise grow by the frame's overhead and cost an encode and a decode for
//! nothing. Uncompressed LTX is valid v1: LiteFS and replite read both.

/// Bytes of a file's start worth sampling: 64 pages of 4 KiB, compressed in well under a
/// millisecond, enough to see whether the data compresses.
pub const LZ4_SAMPLE_BYTES: usize = 256 * 1024;

/// Whether LZ4 shrinks `sample` (a file's first bytes, up to [`LZ4_SAMPLE_BYTES`]) by at
/// least an eighth. An empty sample says no.
#[must_use]
pub fn lz4_pays(sample: &[u8]) -> bool {
    let sample = &sample[..sample.len().min(LZ4_SAMPLE_BYTES)];
    if sample.is_empty() {
        return false;
    }
    let compressed = lz4_flex::block::compress(sample).len();
    compressed * 8 <= sample.len() * 7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitive_pages_are_worth_compressing_and_random_ones_are_not() {
        let text: Vec<u8> = b"INSERT INTO t VALUES (1, 'hello world');".iter().copied().cycle().take(65_536).collect();
        assert!(lz4_pays(&text));
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..65_536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(!lz4_pays(&random));
        assert!(!lz4_pays(&[]));
    }
}
