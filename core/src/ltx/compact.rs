//! Compaction: merge contiguous LTX files into one. The latest version of each page wins,
//! pages past the final commit size are dropped, the pre-apply checksum comes from the first
//! file and the post-apply checksum from the last. Memory is one page per input.

use std::io::{Read, Write};

use thiserror::Error;

use crate::ltx::decoder::Decoder;
use crate::ltx::encoder::Encoder;
use crate::ltx::error::LtxError;
use crate::ltx::header::{Header, Trailer};
use crate::types::{Checksum, PageSize, Pgno, TxId};

/// Why a set of files could not be compacted.
#[derive(Debug, Error)]
pub enum CompactError {
    /// No input files.
    #[error("compaction needs at least one input file")]
    NoInputs,
    /// Inputs disagree on page size.
    #[error("input {index} has page size {found}, the first input has {expected}")]
    PageSizeMismatch {
        /// Index of the offending input (after sorting by TXID).
        index: usize,
        /// First input's page size.
        expected: PageSize,
        /// This input's page size.
        found: PageSize,
    },
    /// A gap or overlap between two inputs' transaction ranges.
    #[error("inputs are not contiguous: {prev_min}-{prev_max} is followed by {min}-{max}")]
    NotContiguous {
        /// Previous input's min TXID.
        prev_min: TxId,
        /// Previous input's max TXID.
        prev_max: TxId,
        /// This input's min TXID.
        min: TxId,
        /// This input's max TXID.
        max: TxId,
    },
    /// An input's pre-apply checksum is not the previous input's post-apply checksum.
    #[error("input starting at TXID {min} expects checksum {expected} but the previous input ends at {found}")]
    ChecksumChainBroken {
        /// This input's min TXID.
        min: TxId,
        /// This input's pre-apply checksum.
        expected: Checksum,
        /// Previous input's post-apply checksum.
        found: Checksum,
    },
    /// An input failed to decode, or the output failed to encode.
    #[error("input {index}: {source}")]
    Input {
        /// Index of the input (after sorting by TXID).
        index: usize,
        /// The decoding error.
        #[source]
        source: LtxError,
    },
    /// The output failed to encode.
    #[error("output: {0}")]
    Output(#[source] LtxError),
}

struct Input<R: Read> {
    decoder: Decoder<R>,
    /// The input's next page, already read; `None` once its pages are exhausted.
    pending: Option<Pgno>,
    page: Vec<u8>,
}

/// Merges `inputs` (in any order) into one LTX file on `out` with the given header flags.
/// Returns the output's header and trailer.
pub fn compact<R: Read, W: Write>(inputs: Vec<R>, out: W, flags: u32) -> Result<(Header, Trailer), CompactError> {
    if inputs.is_empty() {
        return Err(CompactError::NoInputs);
    }
    let mut decoders = inputs
        .into_iter()
        .enumerate()
        .map(|(index, r)| Decoder::new(r).map_err(|source| CompactError::Input { index, source }))
        .collect::<Result<Vec<_>, _>>()?;
    decoders.sort_by_key(|d| d.header().min_txid);
    check_contiguous(&decoders)?;

    let first = *decoders[0].header();
    let last = *decoders[decoders.len() - 1].header();
    let mut header = Header::new(first.page_size, last.commit, first.min_txid, last.max_txid, first.pre_apply_checksum);
    header.flags = flags;
    header.timestamp_ms = last.timestamp_ms;
    let mut encoder = Encoder::new(out, header).map_err(CompactError::Output)?;

    let mut inputs = Vec::with_capacity(decoders.len());
    for (index, decoder) in decoders.into_iter().enumerate() {
        let mut input = Input { page: vec![0u8; first.page_size.bytes()], decoder, pending: None };
        input.pending =
            input.decoder.next_page(&mut input.page).map_err(|source| CompactError::Input { index, source })?;
        inputs.push(input);
    }

    while let Some(pgno) = inputs.iter().filter_map(|i| i.pending).min() {
        let newest = inputs.iter().rposition(|i| i.pending == Some(pgno)).expect("min came from some input");
        if pgno.0 <= header.commit {
            encoder.encode_page(pgno, &inputs[newest].page).map_err(CompactError::Output)?;
        }
        for (index, input) in inputs.iter_mut().enumerate() {
            if input.pending == Some(pgno) {
                input.pending =
                    input.decoder.next_page(&mut input.page).map_err(|source| CompactError::Input { index, source })?;
            }
        }
    }

    let trailers: Vec<Trailer> =
        inputs.iter().map(|i| i.decoder.trailer().expect("an exhausted decoder has verified its trailer")).collect();
    for (pair, input) in trailers.windows(2).zip(inputs.iter().skip(1)) {
        let expected = input.decoder.header().pre_apply_checksum;
        if expected != pair[0].post_apply_checksum {
            return Err(CompactError::ChecksumChainBroken {
                min: input.decoder.header().min_txid,
                expected,
                found: pair[0].post_apply_checksum,
            });
        }
    }
    let post = trailers[trailers.len() - 1].post_apply_checksum;
    let (_, trailer) = encoder.finish(post).map_err(CompactError::Output)?;
    Ok((header, trailer))
}

fn check_contiguous<R: Read>(decoders: &[Decoder<R>]) -> Result<(), CompactError> {
    let first = decoders[0].header();
    for (index, pair) in decoders.windows(2).enumerate() {
        let (prev, next) = (pair[0].header(), pair[1].header());
        if next.page_size != first.page_size {
            return Err(CompactError::PageSizeMismatch {
                index: index + 1,
                expected: first.page_size,
                found: next.page_size,
            });
        }
        if prev.max_txid.next() != next.min_txid {
            return Err(CompactError::NotContiguous {
                prev_min: prev.min_txid,
                prev_max: prev.max_txid,
                min: next.min_txid,
                max: next.max_txid,
            });
        }
    }
    Ok(())
}
