//! The value stored under the lease key: who the primary is and where to reach it. The JSON
//! field names are LiteFS's (`hostname`, `advertise-url`) so tools reading the key keep
//! working; `node-id` is replite's.

use replite_core::NodeId;
use serde::{Deserialize, Serialize};

/// The primary's identity, as stored under the lease key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeaseRecord {
    /// Hostname applications forward writes to.
    pub hostname: String,
    /// URL of the node's HTTP API.
    pub advertise_url: String,
    /// The node's id (absent in values written by LiteFS).
    #[serde(default, with = "node_id_hex", skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
}

mod node_id_hex {
    use replite_core::NodeId;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(id: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_str(&format!("{:016x}", id.0)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeId>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| u64::from_str_radix(&s, 16).map(NodeId).map_err(de::Error::custom))
            .transpose()
    }
}

impl LeaseRecord {
    /// The stored form.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings always serialises")
    }

    /// Parses a stored value.
    pub fn from_json(bytes: &[u8]) -> Result<LeaseRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_reads_litefs_values() {
        let r =
            LeaseRecord { hostname: "a".into(), advertise_url: "http://a:20202".into(), node_id: Some(NodeId(0x2a)) };
        assert_eq!(LeaseRecord::from_json(&r.to_json()).expect("parses"), r);
        let litefs = br#"{"hostname":"b","advertise-url":"http://b:20202"}"#;
        let parsed = LeaseRecord::from_json(litefs).expect("LiteFS value parses");
        assert_eq!(parsed.node_id, None);
        assert_eq!(parsed.advertise_url, "http://b:20202");
    }
}
