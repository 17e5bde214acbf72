//! The core Node's configuration from the daemon's config file. Durations become
//! milliseconds; the lease renews at a third of its TTL (as LiteFS's Consul leaser does), so
//! two renewals can fail before the safety margin ends writes.

use std::time::Duration;

use replite_core::NodeId;
use replite_core::node;
use thiserror::Error;

use crate::config::{Config, LeaseType};

/// A static lease is never renewed against a store; the Node still wants a TTL, so it gets
/// one long enough that only a stopped process lets it lapse.
const STATIC_LEASE_TTL: Duration = Duration::from_secs(3600);

/// Config combinations the daemon cannot run yet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NodeConfigError {
    /// Synchronous replication needs the set of candidates that must acknowledge.
    #[error(
        "replication.sync.replicas is {0}, but synchronous replication needs every candidate's node id in replication.sync.candidates (a commit waits for all of them, so any can take over safely)"
    )]
    SyncWithoutCandidates(u32),
    /// `replicas` disagrees with the candidate list.
    #[error(
        "replication.sync.replicas is {replicas}, but with {candidates} candidates every other one ({}) must acknowledge; leave replicas out",
        .candidates - 1
    )]
    SyncReplicasMismatch {
        /// The configured count.
        replicas: u32,
        /// Candidates listed.
        candidates: u32,
    },
    /// A listed candidate is not a node id.
    #[error("replication.sync.candidates: {0:?} is not a node id (16 hex digits)")]
    BadCandidate(String),
    /// This node may become primary but is not in the list.
    #[error("this node ({0}) is a candidate but not in replication.sync.candidates")]
    NotListed(NodeId),
    /// The core rejected the timings.
    #[error("lease timings: {0}")]
    Node(#[from] node::ConfigError),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The Node configuration for this daemon; `seed` feeds the Node's jitter.
pub fn node_config(config: &Config, node_id: NodeId, seed: u64) -> Result<node::Config, NodeConfigError> {
    let mut cfg = node::Config::new(node_id);
    cfg.candidate = config.lease.candidate;
    if !cfg.candidate {
        cfg.candidates.clear();
    }
    let ttl = match config.lease.kind {
        LeaseType::Etcd => config.lease.etcd.ttl,
        LeaseType::Consul => config.lease.consul.ttl,
        LeaseType::Static | LeaseType::Unset => STATIC_LEASE_TTL,
    };
    cfg.lease_ttl_ms = ms(ttl);
    cfg.lease_renew_ms = ms(ttl / 3);
    cfg.lease_safety_margin_ms = ms(config.lease.safety_margin);
    cfg.lease_poll_ms = ms(config.lease.reconnect_delay).max(1);
    cfg.demote_delay_ms = ms(config.lease.demote_delay);
    cfg.retention_ms = ms(config.data.retention);
    if let Some(bytes) = config.data.retention_size {
        cfg.retention_bytes = bytes;
    }
    let sync = &config.replication.sync;
    if sync.candidates.is_empty() && sync.replicas > 0 {
        return Err(NodeConfigError::SyncWithoutCandidates(sync.replicas));
    }
    if !sync.candidates.is_empty() {
        let ids = sync
            .candidates
            .iter()
            .map(|c| {
                (c.len() == 16)
                    .then(|| u64::from_str_radix(c, 16).ok())
                    .flatten()
                    .map(NodeId)
                    .ok_or_else(|| NodeConfigError::BadCandidate(c.clone()))
            })
            .collect::<Result<std::collections::BTreeSet<NodeId>, _>>()?;
        let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        if sync.replicas != 0 && sync.replicas + 1 != count {
            return Err(NodeConfigError::SyncReplicasMismatch { replicas: sync.replicas, candidates: count });
        }
        if cfg.candidate && !ids.contains(&node_id) {
            return Err(NodeConfigError::NotListed(node_id));
        }
        cfg.candidates = ids;
        if count >= 2 {
            let policy = match sync.on_timeout {
                crate::config::SyncTimeoutPolicy::Block => node::SyncPolicy::Block,
                crate::config::SyncTimeoutPolicy::Degrade => node::SyncPolicy::Degrade,
            };
            cfg.sync = Some(node::SyncConfig { timeout_ms: ms(sync.timeout), policy });
        }
    }
    cfg.async_window_ms = (!config.replication.async_window.is_zero()).then(|| ms(config.replication.async_window));
    cfg.seed = seed;
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test.yml", &|_| None).expect("valid config")
    }

    #[test]
    fn etcd_timings_become_node_milliseconds() {
        let config = parse(
            "lease:\n  type: etcd\n  safety-margin: 500ms\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    key: k\n    ttl: 6s\ndata:\n  retention: 1m\n  retention-size: 1000\nreplication:\n  async-window: 30s\n",
        );
        let cfg = node_config(&config, NodeId(7), 42).expect("maps");
        assert_eq!((cfg.lease_ttl_ms, cfg.lease_renew_ms, cfg.lease_safety_margin_ms), (6000, 2000, 500));
        assert_eq!((cfg.retention_ms, cfg.retention_bytes), (60_000, 1000));
        assert_eq!(cfg.async_window_ms, Some(30_000));
        assert!(cfg.candidate && cfg.candidates.contains(&NodeId(7)));
        assert_eq!(cfg.seed, 42);
    }

    #[test]
    fn a_margin_the_renewal_interval_cannot_cover_is_refused() {
        let config = parse(
            "lease:\n  type: etcd\n  safety-margin: 3s\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    key: k\n    ttl: 6s\n",
        );
        assert!(matches!(node_config(&config, NodeId(1), 0), Err(NodeConfigError::Node(_))));
    }

    #[test]
    fn synchronous_mode_needs_every_candidate_listed() {
        let config = parse("lease:\n  type: static\nreplication:\n  sync:\n    replicas: 1\n");
        assert_eq!(node_config(&config, NodeId(1), 0).err(), Some(NodeConfigError::SyncWithoutCandidates(1)));
        let listed = "lease:\n  type: etcd\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    key: k\n    ttl: 6s\nreplication:\n  sync:\n    candidates: [000000000000000A, 000000000000000B, 000000000000000C]\n    timeout: 2s\n    on-timeout: degrade\n";
        let cfg = node_config(&parse(listed), NodeId(0xA), 0).expect("maps");
        assert_eq!(cfg.candidates, [NodeId(0xA), NodeId(0xB), NodeId(0xC)].into_iter().collect());
        assert_eq!(cfg.sync, Some(node::SyncConfig { timeout_ms: 2000, policy: node::SyncPolicy::Degrade }));
        assert_eq!(node_config(&parse(listed), NodeId(0xD), 0).err(), Some(NodeConfigError::NotListed(NodeId(0xD))));
        let wrong_count = listed.replace("    timeout: 2s\n", "    timeout: 2s\n    replicas: 1\n");
        assert!(matches!(
            node_config(&parse(&wrong_count), NodeId(0xA), 0),
            Err(NodeConfigError::SyncReplicasMismatch { replicas: 1, candidates: 3 })
        ));
        let bad = listed.replace("000000000000000C", "node-c");
        assert_eq!(
            node_config(&parse(&bad), NodeId(0xA), 0).err(),
            Some(NodeConfigError::BadCandidate("node-c".into()))
        );
    }

    #[test]
    fn a_non_candidate_is_in_no_candidate_set() {
        let config = parse("lease:\n  type: static\n  candidate: false\n");
        let cfg = node_config(&config, NodeId(3), 0).expect("maps");
        assert!(!cfg.candidate && cfg.candidates.is_empty());
    }
}
