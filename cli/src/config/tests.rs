use std::time::Duration;

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "FLY_REGION" => Some("ord".into()),
        "PRIMARY_REGION" => Some("ord".into()),
        "FLY_ALLOC_ID" => Some("abc123".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "litefs.yml", &env)
}

/// A typical LiteFS v0.5 deployment's config, unchanged.
const LITEFS_CONFIG: &str = r#"
fuse:
  dir: "/litefs"
data:
  dir: "/var/lib/litefs"
  retention: "10m"
exit-on-error: false
proxy:
  addr: ":8080"
  target: "localhost:8081"
  db: "db"
  passthrough:
    - "*.ico"
    - "*.png"
exec:
  - cmd: "rails db:migrate"
    if-candidate: true
  - cmd: "rails server"
lease:
  type: "consul"
  advertise-url: "http://${FLY_ALLOC_ID}.vm.app.internal:20202"
  candidate: ${FLY_REGION == PRIMARY_REGION}
  promote: true
  consul:
    url: "${FLY_CONSUL_URL}"
    key: "litefs/app"
"#;

#[test]
fn a_litefs_config_loads_with_litefs_defaults() {
    // Consul's URL comes from an unset variable here, so give it one.
    let text = LITEFS_CONFIG.replace("${FLY_CONSUL_URL}", "http://127.0.0.1:8500");
    let config = parse(&text).expect("LiteFS config loads");
    assert_eq!(config.lease.kind, LeaseType::Consul);
    assert!(config.lease.candidate);
    assert_eq!(config.lease.advertise_url, "http://abc123.vm.app.internal:20202");
    assert_eq!(config.lease.consul.ttl, Duration::from_secs(10));
    assert_eq!(config.lease.reconnect_delay, Duration::from_secs(1));
    assert_eq!(config.http.addr, ":20202");
    assert_eq!(config.data.retention, Duration::from_secs(600));
    assert_eq!(config.proxy.max_lag, Duration::from_secs(10));
    assert!(!config.exit_on_error);
    assert_eq!(config.exec.0.len(), 2);
    assert!(config.exec.0[0].if_candidate);
    assert_eq!(config.exec.0[1].cmd, "rails server");
}

#[test]
fn exec_accepts_a_single_string() {
    let config = parse("lease:\n  type: static\nexec: \"myapp -addr :8081\"\n").expect("loads");
    assert_eq!(config.exec.0, vec![ExecCommand { cmd: "myapp -addr :8081".into(), if_candidate: false }]);
}

#[test]
fn replite_keys_load() {
    let config = parse(
        "lease:\n  type: etcd\n  safety-margin: 500ms\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    key: replite/app\n    ttl: 5s\nreplication:\n  sync:\n    replicas: 2\n    timeout: 2s\n    on-timeout: degrade\n  async-window: 30s\ndata:\n  retention-size: 1073741824\n",
    )
    .expect("loads");
    assert_eq!(config.lease.etcd.ttl, Duration::from_secs(5));
    assert_eq!(config.lease.safety_margin, Duration::from_millis(500));
    assert_eq!(config.replication.sync.replicas, 2);
    assert_eq!(config.replication.sync.on_timeout, SyncTimeoutPolicy::Degrade);
    assert_eq!(config.replication.async_window, Duration::from_secs(30));
    assert_eq!(config.data.retention_size, Some(1 << 30));
}

#[test]
fn the_proxy_s_forwarding_defaults_to_auto_and_takes_replite_s_values() {
    assert_eq!(parse("lease:\n  type: static\n").expect("loads").proxy.write_forwarding, WriteForwarding::Auto);
    for (text, want) in [("forward", WriteForwarding::Forward), ("fly-replay", WriteForwarding::FlyReplay)] {
        let config = parse(&format!("lease:\n  type: static\nproxy:\n  write-forwarding: {text}\n")).expect("loads");
        assert_eq!(config.proxy.write_forwarding, want);
    }
}

#[test]
fn errors_name_the_key_and_the_line() {
    let cases = [
        ("unknown key", "lease:\n  type: static\n  consul:\n    ttll: 10s\n"),
        ("unknown top-level key", "fuse:\n  dir: /x\nleese:\n  type: static\n"),
        ("bad duration", "lease:\n  type: consul\n  consul:\n    url: http://x\n    key: k\n    ttl: ten seconds\n"),
        ("bad lease type", "lease:\n  type: zookeeper\n"),
        ("bad bool", "lease:\n  type: static\n  candidate: perhaps\n"),
        ("missing lease type", "fuse:\n  dir: /x\n"),
        ("etcd without endpoints", "lease:\n  type: etcd\n  etcd:\n    key: k\n"),
        (
            "margin longer than ttl",
            "lease:\n  type: etcd\n  safety-margin: 10s\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    key: k\n",
        ),
        ("bad exec", "lease:\n  type: static\nexec:\n  cmd: x\n"),
        ("malformed yaml", "lease:\n  type: static\n   bad-indent: 1\n"),
        ("proxy without db", "lease:\n  type: static\nproxy:\n  addr: \":8080\"\n  target: localhost:8081\n"),
        ("proxy without addr", "lease:\n  type: static\nproxy:\n  target: localhost:8081\n  db: app.db\n"),
        ("bad write forwarding", "lease:\n  type: static\nproxy:\n  write-forwarding: redirect\n"),
    ];
    let report: String = cases
        .iter()
        .map(|(name, text)| {
            let err = parse(text).expect_err(name);
            format!("{name}: {err}\n")
        })
        .collect();
    insta::assert_snapshot!(report);
}

#[test]
fn an_empty_file_is_all_defaults_and_then_needs_a_lease_type() {
    assert!(matches!(parse(""), Ok(c) if c == Config::default()));
}
