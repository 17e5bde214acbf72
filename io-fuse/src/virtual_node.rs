//! `<db>-pos`, `.primary` and `.lag`: small read-only files whose contents replite makes up
//! from what the daemon last told the mount. They are opened with direct I/O so every read
//! sees the current value.

use std::collections::HashMap;

use replite_core::types::Pos;

use crate::names::NodeKind;

/// What the daemon has told the mount about replication state.
#[derive(Debug, Default)]
pub(crate) struct Status {
    /// Each database's position.
    pub(crate) positions: HashMap<String, Pos>,
    /// The primary's name, on replicas.
    pub(crate) primary: Option<String>,
    /// Replication lag in milliseconds.
    pub(crate) lag_ms: i64,
}

/// Bytes of `.lag` for LiteFS compatibility: a signed, zero-padded, fixed-width number.
fn lag_text(lag_ms: i64) -> String {
    format!("{:+010}\n", lag_ms.clamp(i64::from(i32::MIN), i64::from(i32::MAX)))
}

/// The contents of a virtual node, or `None` if it does not exist right now.
pub(crate) fn contents(status: &Status, kind: NodeKind, db: &str) -> Option<Vec<u8>> {
    match kind {
        NodeKind::Pos => Some(format!("{}\n", status.positions.get(db).copied().unwrap_or_default()).into_bytes()),
        NodeKind::Primary => status.primary.as_ref().map(|p| format!("{p}\n").into_bytes()),
        NodeKind::Lag => Some(lag_text(status.lag_ms).into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replite_core::types::{Checksum, TxId};

    #[test]
    fn position_file_is_two_hex_fields() {
        let mut status = Status::default();
        status.positions.insert("db".into(), Pos::new(TxId(3), Checksum(0x8000_0000_0000_00ff)));
        let text = contents(&status, NodeKind::Pos, "db").expect("pos always exists");
        assert_eq!(String::from_utf8(text).expect("ascii"), "0000000000000003/80000000000000ff\n");
    }

    #[test]
    fn lag_is_fixed_width_and_primary_absent_on_the_primary() {
        let status = Status { lag_ms: 42, ..Status::default() };
        assert_eq!(contents(&status, NodeKind::Lag, ""), Some(b"+000000042\n".to_vec()));
        assert_eq!(contents(&status, NodeKind::Primary, ""), None);
    }
}
