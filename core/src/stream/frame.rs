//! Stream frames: a u32 big-endian type, then a body whose layout depends on the type.
//! Types 1..=7 are LiteFS's; replite's extensions use types a LiteFS peer never receives,
//! because a primary only sends them when the replica asked for them in the request header
//! [`HEADER_EXTENSIONS`] (and a replica only sends acknowledgements when the primary agreed).

use crate::stream::error::FrameError;
use crate::stream::name::DbName;
use crate::types::{Checksum, Epoch, NodeId, Pos, TxId};

/// LTX frame: a database's LTX file follows as chunks.
pub const FRAME_TYPE_LTX: u32 = 1;
/// Ready frame: the primary has sent everything the replica was missing at connect time.
pub const FRAME_TYPE_READY: u32 = 2;
/// End frame: the primary is closing the stream on purpose.
pub const FRAME_TYPE_END: u32 = 3;
/// Drop-database frame. LiteFS deprecated it (a drop is now an LTX file with commit size zero)
/// and its replicas skip it, but its primary still sends it for a database a replica names and
/// the primary does not know; replite does the same, and a replite replica then drops it.
pub const FRAME_TYPE_DROP_DB: u32 = 4;
/// Handoff frame: the primary hands its lease to this replica.
pub const FRAME_TYPE_HANDOFF: u32 = 5;
/// High-water-mark frame: the primary's HWM TXID for one database.
pub const FRAME_TYPE_HWM: u32 = 6;
/// Heartbeat frame: the primary is alive; carries its wall-clock time.
pub const FRAME_TYPE_HEARTBEAT: u32 = 7;
/// replite extension "epoch": the primary's lease epoch and node id. Chosen far above
/// LiteFS's range so a future LiteFS frame type cannot collide with it.
pub const FRAME_TYPE_EPOCH: u32 = 0x5250_0001;
/// replite extension "ack": a replica has made a position durable (sent replica to primary).
pub const FRAME_TYPE_ACK: u32 = 0x5250_0002;

/// Longest lease id accepted in a handoff frame. Consul session ids are 36 bytes and etcd
/// lease ids are 16 hex digits; 1 KiB leaves room for any backend without letting a peer
/// make us buffer without bound.
pub const MAX_LEASE_ID_LEN: usize = 1024;

/// HTTP header (request and response) naming the replite extensions in use, comma-separated.
pub const HEADER_EXTENSIONS: &str = "Replite-Extensions";
/// HTTP header LiteFS uses to name the connecting node (`%016X`).
pub const HEADER_NODE_ID: &str = "Litefs-Id";

/// The replite extensions negotiated on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extensions {
    /// Epoch frames from the primary.
    pub epoch: bool,
    /// Acknowledgement frames from the replica.
    pub ack: bool,
}

impl Extensions {
    /// None: a plain LiteFS stream.
    pub const NONE: Extensions = Extensions { epoch: false, ack: false };
    /// Every extension this version knows.
    pub const ALL: Extensions = Extensions { epoch: true, ack: true };

    /// The header value naming these extensions (empty for none).
    #[must_use]
    pub fn to_header_value(self) -> String {
        let mut names = Vec::new();
        if self.epoch {
            names.push("epoch");
        }
        if self.ack {
            names.push("ack");
        }
        names.join(",")
    }

    /// Parses a header value; unknown names are ignored so newer peers can offer more.
    #[must_use]
    pub fn from_header_value(value: &str) -> Extensions {
        let mut ext = Extensions::NONE;
        for name in value.split(',').map(str::trim) {
            match name {
                "epoch" => ext.epoch = true,
                "ack" => ext.ack = true,
                _ => {}
            }
        }
        ext
    }

    /// What both sides support.
    #[must_use]
    pub fn intersect(self, other: Extensions) -> Extensions {
        Extensions { epoch: self.epoch && other.epoch, ack: self.ack && other.ack }
    }
}

/// One stream frame. An [`Frame::Ltx`] is followed on the wire by the file as chunks (see
/// [`crate::stream::encode_chunks`]); the other frames stand alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An LTX file for `name` follows. LiteFS always sends `size` 0 and readers ignore it.
    Ltx {
        /// Advisory payload size.
        size: u64,
        /// Database name.
        name: DbName,
    },
    /// Initial catch-up is complete.
    Ready,
    /// The sender closes the stream.
    End,
    /// The primary does not know this database (LiteFS: deprecated; see [`FRAME_TYPE_DROP_DB`]).
    DropDb {
        /// Database name.
        name: DbName,
    },
    /// The receiving replica should take the lease identified by `lease_id`.
    Handoff {
        /// Backend-specific lease id.
        lease_id: String,
    },
    /// The primary's high-water mark for a database.
    Hwm {
        /// HWM transaction id.
        txid: TxId,
        /// Database name.
        name: DbName,
    },
    /// Liveness; primary wall-clock time in milliseconds since the Unix epoch.
    Heartbeat {
        /// Milliseconds since the Unix epoch.
        timestamp_ms: i64,
    },
    /// Extension "epoch": the sender is primary under this lease epoch.
    Epoch {
        /// Lease epoch.
        epoch: Epoch,
        /// The primary's node id.
        node_id: NodeId,
    },
    /// Extension "ack": the replica has `pos` of `name` durable.
    Ack {
        /// Durable position.
        pos: Pos,
        /// Database name.
        name: DbName,
    },
}

impl Frame {
    /// The wire type of this frame.
    #[must_use]
    pub fn frame_type(&self) -> u32 {
        match self {
            Frame::Ltx { .. } => FRAME_TYPE_LTX,
            Frame::Ready => FRAME_TYPE_READY,
            Frame::End => FRAME_TYPE_END,
            Frame::DropDb { .. } => FRAME_TYPE_DROP_DB,
            Frame::Handoff { .. } => FRAME_TYPE_HANDOFF,
            Frame::Hwm { .. } => FRAME_TYPE_HWM,
            Frame::Heartbeat { .. } => FRAME_TYPE_HEARTBEAT,
            Frame::Epoch { .. } => FRAME_TYPE_EPOCH,
            Frame::Ack { .. } => FRAME_TYPE_ACK,
        }
    }
}

fn put_name(out: &mut Vec<u8>, name: &DbName) {
    // DbName guarantees len <= MAX_DB_NAME_LEN, so the cast cannot truncate.
    out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_str().as_bytes());
}

/// Appends the encoding of `frame` to `out`. Lease ids longer than [`MAX_LEASE_ID_LEN`] are
/// cut there (no backend makes one that long; a peer would refuse a longer one).
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    out.extend_from_slice(&frame.frame_type().to_be_bytes());
    match frame {
        Frame::Ltx { size, name } => {
            out.extend_from_slice(&size.to_be_bytes());
            put_name(out, name);
        }
        Frame::Ready | Frame::End => {}
        Frame::DropDb { name } => put_name(out, name),
        Frame::Handoff { lease_id } => {
            let mut end = lease_id.len().min(MAX_LEASE_ID_LEN);
            while !lease_id.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&(end as u32).to_be_bytes());
            out.extend_from_slice(&lease_id.as_bytes()[..end]);
        }
        Frame::Hwm { txid, name } => {
            out.extend_from_slice(&txid.0.to_be_bytes());
            put_name(out, name);
        }
        Frame::Heartbeat { timestamp_ms } => out.extend_from_slice(&timestamp_ms.to_be_bytes()),
        Frame::Epoch { epoch, node_id } => {
            out.extend_from_slice(&epoch.0.to_be_bytes());
            out.extend_from_slice(&node_id.0.to_be_bytes());
        }
        Frame::Ack { pos, name } => {
            out.extend_from_slice(&pos.txid.0.to_be_bytes());
            out.extend_from_slice(&pos.checksum.0.to_be_bytes());
            put_name(out, name);
        }
    }
}

/// A bounds-checked reader over a slice that knows its absolute stream offset.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

/// Inside [`Cursor`], "not enough bytes yet" is not an error: the caller waits for more.
pub(crate) enum Need {
    More,
    Bad(FrameError),
}

impl From<FrameError> for Need {
    fn from(e: FrameError) -> Need {
        Need::Bad(e)
    }
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Cursor<'a> {
        Cursor { buf, pos: 0, base }
    }
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
    pub(crate) fn consumed(&self) -> usize {
        self.pos
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Need> {
        if self.remaining() < n {
            return Err(Need::More);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    pub(crate) fn u16(&mut self) -> Result<u16, Need> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Need> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Need> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// A u32 length then that many bytes, refusing lengths above `max` before reading them.
    pub(crate) fn sized(&mut self, what: &'static str, max: usize) -> Result<(&'a [u8], u64), Need> {
        let at = self.offset();
        let len = self.u32()?;
        if len as usize > max {
            return Err(Need::Bad(FrameError::TooLong { what, len: u64::from(len), max: max as u64, offset: at }));
        }
        let body_at = self.offset();
        Ok((self.bytes(len as usize)?, body_at))
    }
    pub(crate) fn name(&mut self) -> Result<DbName, Need> {
        let (bytes, at) = self.sized("database name", crate::stream::name::MAX_DB_NAME_LEN)?;
        Ok(DbName::from_wire(bytes, at)?)
    }
}

/// Decodes one frame from the start of `buf`, whose first byte is at stream offset `offset`.
/// Returns `Ok(None)` when `buf` holds only part of a frame (call again with more bytes), or
/// the frame and how many bytes it used. Extension frames are refused unless `ext` has them.
pub fn decode_frame(buf: &[u8], offset: u64, ext: Extensions) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut c = Cursor::new(buf, offset);
    match decode_inner(&mut c, ext) {
        Ok(frame) => Ok(Some((frame, c.consumed()))),
        Err(Need::More) => Ok(None),
        Err(Need::Bad(e)) => Err(e),
    }
}

fn decode_inner(c: &mut Cursor<'_>, ext: Extensions) -> Result<Frame, Need> {
    let at = c.offset();
    let frame_type = c.u32()?;
    let not_negotiated =
        |extension| Need::Bad(FrameError::ExtensionNotNegotiated { frame_type, extension, offset: at });
    Ok(match frame_type {
        FRAME_TYPE_LTX => {
            let size = c.u64()?;
            Frame::Ltx { size, name: c.name()? }
        }
        FRAME_TYPE_READY => Frame::Ready,
        FRAME_TYPE_END => Frame::End,
        FRAME_TYPE_DROP_DB => Frame::DropDb { name: c.name()? },
        FRAME_TYPE_HANDOFF => {
            let (bytes, id_at) = c.sized("lease id", MAX_LEASE_ID_LEN)?;
            let lease_id =
                std::str::from_utf8(bytes).map_err(|_| FrameError::InvalidLeaseId { offset: id_at })?.to_owned();
            Frame::Handoff { lease_id }
        }
        FRAME_TYPE_HWM => {
            let txid = TxId(c.u64()?);
            Frame::Hwm { txid, name: c.name()? }
        }
        FRAME_TYPE_HEARTBEAT => Frame::Heartbeat { timestamp_ms: c.u64()? as i64 },
        FRAME_TYPE_EPOCH if ext.epoch => Frame::Epoch { epoch: Epoch(c.u64()?), node_id: NodeId(c.u64()?) },
        FRAME_TYPE_EPOCH => return Err(not_negotiated("epoch")),
        FRAME_TYPE_ACK if ext.ack => {
            let pos = Pos::new(TxId(c.u64()?), Checksum(c.u64()?));
            Frame::Ack { pos, name: c.name()? }
        }
        FRAME_TYPE_ACK => return Err(not_negotiated("ack")),
        _ => return Err(Need::Bad(FrameError::UnknownFrameType { frame_type, offset: at })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> DbName {
        DbName::new("db").expect("valid")
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Ltx { size: 0, name: name() },
            Frame::Ready,
            Frame::End,
            Frame::DropDb { name: name() },
            Frame::Handoff { lease_id: "1234".into() },
            Frame::Hwm { txid: TxId(9), name: name() },
            Frame::Heartbeat { timestamp_ms: -5 },
            Frame::Epoch { epoch: Epoch(7), node_id: NodeId(0xabc) },
            Frame::Ack { pos: Pos::new(TxId(3), Checksum(0x8000_0000_0000_0001)), name: name() },
        ]
    }

    #[test]
    fn every_frame_round_trips_and_is_incomplete_when_cut_short() {
        for frame in all_frames() {
            let mut buf = Vec::new();
            encode_frame(&frame, &mut buf);
            assert_eq!(decode_frame(&buf, 0, Extensions::ALL), Ok(Some((frame.clone(), buf.len()))));
            for cut in 0..buf.len() {
                assert_eq!(decode_frame(&buf[..cut], 0, Extensions::ALL), Ok(None), "{frame:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn ltx_frame_layout_matches_litefs() {
        let mut buf = Vec::new();
        encode_frame(&Frame::Ltx { size: 0, name: name() }, &mut buf);
        assert_eq!(buf, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, b'd', b'b']);
        let mut buf = Vec::new();
        encode_frame(&Frame::Heartbeat { timestamp_ms: 0x0102 }, &mut buf);
        assert_eq!(buf, [0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn extension_frames_are_refused_unless_negotiated() {
        let mut buf = vec![0u8; 3];
        encode_frame(&Frame::Epoch { epoch: Epoch(1), node_id: NodeId(1) }, &mut buf);
        assert_eq!(
            decode_frame(&buf[3..], 3, Extensions::NONE),
            Err(FrameError::ExtensionNotNegotiated { frame_type: FRAME_TYPE_EPOCH, extension: "epoch", offset: 3 })
        );
    }

    #[test]
    fn unknown_types_and_overlong_lengths_are_errors_with_offsets() {
        assert_eq!(
            decode_frame(&[0, 0, 0, 8], 10, Extensions::ALL),
            Err(FrameError::UnknownFrameType { frame_type: 8, offset: 10 })
        );
        // A name length of 4 GiB must be refused before anything is allocated or awaited.
        let buf = [0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode_frame(&buf, 0, Extensions::ALL),
            Err(FrameError::TooLong { what: "database name", len: 0xffff_ffff, max: 255, offset: 4 })
        );
        let mut buf = vec![0, 0, 0, 5];
        buf.extend_from_slice(&(MAX_LEASE_ID_LEN as u32 + 1).to_be_bytes());
        assert!(matches!(decode_frame(&buf, 0, Extensions::ALL), Err(FrameError::TooLong { what: "lease id", .. })));
        let buf = [0, 0, 0, 5, 0, 0, 0, 1, 0xff];
        assert_eq!(decode_frame(&buf, 0, Extensions::ALL), Err(FrameError::InvalidLeaseId { offset: 8 }));
    }

    fn arb_frame() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        let name = "[a-z][a-z0-9._-]{0,40}".prop_map(|n| DbName::new(&n).expect("generated names are valid"));
        prop_oneof![
            (any::<u64>(), name.clone()).prop_map(|(size, name)| Frame::Ltx { size, name }),
            Just(Frame::Ready),
            Just(Frame::End),
            name.clone().prop_map(|name| Frame::DropDb { name }),
            ".{0,100}".prop_map(|lease_id| Frame::Handoff { lease_id }),
            (any::<u64>(), name.clone()).prop_map(|(t, name)| Frame::Hwm { txid: TxId(t), name }),
            any::<i64>().prop_map(|timestamp_ms| Frame::Heartbeat { timestamp_ms }),
            (any::<u64>(), any::<u64>()).prop_map(|(e, n)| Frame::Epoch { epoch: Epoch(e), node_id: NodeId(n) }),
            (any::<u64>(), any::<u64>(), name)
                .prop_map(|(t, c, name)| Frame::Ack { pos: Pos::new(TxId(t), Checksum(c)), name }),
        ]
    }

    proptest::proptest! {
        #[test]
        fn any_frame_sequence_round_trips(frames in proptest::collection::vec(arb_frame(), 0..8)) {
            let mut buf = Vec::new();
            for f in &frames {
                encode_frame(f, &mut buf);
            }
            let mut at = 0;
            let mut decoded = Vec::new();
            while let Some((f, n)) = decode_frame(&buf[at..], at as u64, Extensions::ALL).expect("valid frames decode") {
                decoded.push(f);
                at += n;
            }
            proptest::prop_assert_eq!(at, buf.len());
            proptest::prop_assert_eq!(decoded, frames);
        }
    }

    #[test]
    fn extensions_header_round_trips_and_ignores_unknown_names() {
        assert_eq!(Extensions::from_header_value(&Extensions::ALL.to_header_value()), Extensions::ALL);
        assert_eq!(Extensions::from_header_value(" ack , zstd"), Extensions { epoch: false, ack: true });
        assert_eq!(Extensions::ALL.intersect(Extensions::NONE), Extensions::NONE);
    }
}
