//! Errors of the stream codec. `offset` is the byte offset in the stream (or request body)
//! where the offending field starts, counted from the first byte the decoder saw.

use thiserror::Error;

/// Something wrong with bytes received on a replication stream or in a position map.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The frame type is not one LiteFS defines, nor a negotiated replite extension.
    #[error("unknown stream frame type 0x{frame_type:08x} at offset {offset}")]
    UnknownFrameType {
        /// The type field.
        frame_type: u32,
        /// Offset of the type field.
        offset: u64,
    },
    /// An extension frame arrived although that extension was not negotiated.
    #[error(
        "stream frame type 0x{frame_type:08x} at offset {offset} belongs to extension {extension:?}, which was not negotiated"
    )]
    ExtensionNotNegotiated {
        /// The type field.
        frame_type: u32,
        /// The extension's name.
        extension: &'static str,
        /// Offset of the type field.
        offset: u64,
    },
    /// A length field exceeds the limit for that field.
    #[error("{what} length {len} at offset {offset} exceeds the limit of {max}")]
    TooLong {
        /// Which field ("database name", "lease id", "LTX payload", "position map").
        what: &'static str,
        /// The length found.
        len: u64,
        /// The limit.
        max: u64,
        /// Offset of the length field.
        offset: u64,
    },
    /// A database name is empty, not UTF-8, or not a plain file name.
    #[error("invalid database name {name:?} at offset {offset}: {reason}")]
    InvalidName {
        /// The name, lossily decoded.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
        /// Offset of the name's first byte.
        offset: u64,
    },
    /// A lease id is not UTF-8.
    #[error("lease id at offset {offset} is not UTF-8")]
    InvalidLeaseId {
        /// Offset of the lease id's first byte.
        offset: u64,
    },
    /// The same database appears twice in a position map.
    #[error("database {name:?} appears twice in the position map (second at offset {offset})")]
    DuplicateName {
        /// The repeated name.
        name: String,
        /// Offset of the second entry.
        offset: u64,
    },
    /// The input ended inside a frame or a position map that must be complete.
    #[error("input ends at offset {offset} inside {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where the input ended.
        offset: u64,
    },
    /// Bytes follow a complete position map.
    #[error("{extra} unexpected bytes after the position map at offset {offset}")]
    TrailingData {
        /// How many bytes follow.
        extra: u64,
        /// Where they start.
        offset: u64,
    },
    /// An epoch frame carried an epoch lower than one sent earlier on the same stream.
    #[error("epoch {epoch} at offset {offset} is lower than {previous}, seen earlier on this stream")]
    EpochWentBack {
        /// The new epoch.
        epoch: u64,
        /// The one seen before.
        previous: u64,
        /// Offset of the frame.
        offset: u64,
    },
    /// The decoder was used after it reported an error.
    #[error("stream decoder used after an error")]
    Poisoned,
}
