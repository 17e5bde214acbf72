//! The LTX v1 file format as LiteFS v0.5 writes it (superfly/ltx v0.3): a 100-byte header,
//! page frames (u32 page number + page), a zero page number, and a 16-byte trailer. With the
//! LZ4 flag, everything from the first page frame to the zero terminator is one LZ4 frame.

mod apply;
mod checksum;
mod compact;
mod decoder;
mod encoder;
mod error;
mod header;
mod io_util;
mod snapshot;

pub use apply::{ApplyError, PageFile, apply};
pub use checksum::{DatabaseChecksum, Hasher, checksum_database, crc64_go_iso, page_checksum, read_full};
pub use compact::{CompactError, compact};
pub use decoder::{Decoder, VerifiedLtx, verify, verify_visiting};
pub use encoder::Encoder;
pub use error::{HeaderError, LtxError};
pub use header::{
    FLAG_COMPRESS_LZ4, FLAG_MASK, HEADER_SIZE, Header, MAGIC, PAGE_HEADER_SIZE, RawHeader, TRAILER_SIZE, Trailer,
    VERSION,
};
pub use snapshot::{
    COMPRESSIBLE_RATIO, SQLITE_HEADER_SIZE, SQLITE_MAGIC, SnapshotError, SnapshotOptions, SqliteHeader,
    compresses_well, encode_database,
};
