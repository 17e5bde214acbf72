//! The etcd lease backend against a real etcd server: one winner per term, epochs that only
//! grow, renewal, release, expiry, and a clear error when etcd is unreachable.

mod support;

use std::time::Duration;

use replite::config::EtcdConfig;
use replite::lease::{AcquireOutcome, EtcdLeaser, LeaseError, LeaseRecord, Leaser};
use replite_core::NodeId;
use support::etcd::EtcdServer;

fn record(n: u64) -> LeaseRecord {
    LeaseRecord {
        hostname: format!("node-{n}"),
        advertise_url: format!("http://127.0.0.{n}:20202"),
        node_id: Some(NodeId(n)),
    }
}

fn config(endpoint: &str, ttl: Duration) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        key: "replite/test".into(),
        ttl,
        username: None,
        password: None,
    }
}

#[tokio::test]
async fn one_node_wins_the_others_see_it_and_the_next_term_has_a_larger_epoch() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd.endpoint, Duration::from_secs(5));
    let mut a = EtcdLeaser::connect(&cfg, record(1)).await.expect("connect a");
    let mut b = EtcdLeaser::connect(&cfg, record(2)).await.expect("connect b");

    let AcquireOutcome::Acquired { epoch: first, ttl, lease_id } = a.acquire().await.expect("a acquires") else {
        panic!("a should win an empty election");
    };
    assert_eq!(ttl, Duration::from_secs(5));
    assert!(i64::from_str_radix(&lease_id, 16).is_ok(), "the etcd lease id in hex: {lease_id}");
    match b.acquire().await.expect("b asks") {
        AcquireOutcome::Held { holder, epoch } => {
            assert_eq!(holder, record(1));
            assert_eq!(epoch, first);
        }
        other => panic!("b must not win while a holds the lease: {other:?}"),
    }
    assert_eq!(b.observe().await.expect("observe"), Some((record(1), first)));
    assert!(a.renew(first).await.expect("renew"), "a live lease renews");

    a.release(first).await.expect("release");
    assert_eq!(b.observe().await.expect("observe"), None, "release deletes the key");
    let AcquireOutcome::Acquired { epoch: second, .. } = b.acquire().await.expect("b acquires") else {
        panic!("b should win after a released");
    };
    assert!(second > first, "epochs only grow: {first} then {second}");
    assert!(matches!(a.renew(first).await, Err(LeaseError::NotHeld { .. })));
}

#[tokio::test]
async fn a_lease_nobody_renews_expires_and_another_node_takes_over() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd.endpoint, Duration::from_secs(2));
    let mut a = EtcdLeaser::connect(&cfg, record(1)).await.expect("connect a");
    let mut b = EtcdLeaser::connect(&cfg, record(2)).await.expect("connect b");
    let AcquireOutcome::Acquired { epoch, ttl, .. } = a.acquire().await.expect("a acquires") else { panic!("a wins") };

    // etcd may round a short TTL up to its minimum; wait out whatever it granted, bounded.
    let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(10);
    let taken = loop {
        match b.acquire().await.expect("b asks") {
            AcquireOutcome::Acquired { epoch: next, .. } => break next,
            AcquireOutcome::Held { .. } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            AcquireOutcome::Held { .. } => panic!("lease never expired"),
        }
    };
    assert!(taken > epoch);
    assert!(!a.renew(epoch).await.expect("renew answers"), "the expired term cannot be renewed");
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_store_error() {
    // Nothing listens on this port: bind and drop to find one.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let cfg = config(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5));
    let result = async {
        let mut leaser = EtcdLeaser::connect(&cfg, record(1)).await?;
        leaser.acquire().await
    }
    .await;
    assert!(matches!(result, Err(LeaseError::Store { .. })), "{result:?}");
}

#[tokio::test]
async fn a_handed_over_term_passes_to_the_target_without_the_key_ever_being_free() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd.endpoint, Duration::from_secs(2));
    let mut leasers = Vec::new();
    for n in 1..=3 {
        leasers.push(Leaser::Etcd(Box::new(EtcdLeaser::connect(&cfg, record(n)).await.expect("connect"))));
    }
    let [mut a, mut b, mut c] = <[Leaser; 3]>::try_from(leasers).ok().expect("three leasers");
    let second = support::handoff::hand_over_and_take_over(&mut a, &mut b, &mut c, &record(2)).await;
    let ttl = cfg.ttl;

    // a's old lease runs out; the key now hangs on b's lease and stays.
    let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(b.renew(second).await.expect("renew answers"), "b keeps its lease alive");
    }
    assert_eq!(c.observe().await.expect("observe"), Some((record(2), second)));
}
