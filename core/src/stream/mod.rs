//! The replication stream: LiteFS's wire format (the position-map request body, the frames a
//! primary sends, LTX payloads cut into u16-length chunks) plus replite's negotiated extensions
//! (epochs and acknowledgements). Everything here is a pure function over byte slices: the
//! daemon feeds received bytes in and writes encoded bytes out. `docs/protocol.md` describes
//! the format; every limit a decoder enforces is a named constant in this module.

mod chunk;
mod decoder;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzz;
mod name;
mod posmap;

pub use chunk::{Chunk, MAX_CHUNK_SIZE, decode_chunk, encode_chunks, encode_ltx_message};
pub use decoder::{MAX_LTX_PAYLOAD_BYTES, MAX_SPOOLED_LTX_BYTES, StreamDecoder, StreamEvent};
pub use error::FrameError;
pub use frame::{
    Extensions, FRAME_TYPE_ACK, FRAME_TYPE_DROP_DB, FRAME_TYPE_END, FRAME_TYPE_EPOCH, FRAME_TYPE_HANDOFF,
    FRAME_TYPE_HEARTBEAT, FRAME_TYPE_HWM, FRAME_TYPE_LTX, FRAME_TYPE_READY, Frame, HEADER_EXTENSIONS, HEADER_NODE_ID,
    MAX_LEASE_ID_LEN, decode_frame, encode_frame,
};
pub use name::{DbName, MAX_DB_NAME_LEN};
pub use posmap::{MAX_POS_MAP_ENTRIES, PosMap, check_entry_count, decode_pos_map, encode_pos_map};
