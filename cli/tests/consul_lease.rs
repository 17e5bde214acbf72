//! The Consul lease backend against a test double of Consul's documented HTTP API (no real
//! Consul can be installed here; see tests/support/consul.rs): LiteFS-compatible sessions and
//! key, one winner, growing epochs, renewal, release, expiry with lock delay.

mod support;

use std::time::Duration;

use replite::config::ConsulConfig;
use replite::lease::{AcquireOutcome, ConsulLeaser, LeaseError, LeaseRecord, Leaser};
use replite_core::NodeId;
use support::consul::FakeConsul;

fn record(n: u64) -> LeaseRecord {
    LeaseRecord {
        hostname: format!("node-{n}"),
        advertise_url: format!("http://127.0.0.{n}:20202"),
        node_id: Some(NodeId(n)),
    }
}

fn config(url: &str, ttl: Duration, lock_delay: Duration) -> ConsulConfig {
    ConsulConfig { url: url.to_string(), key: "litefs/primary".into(), ttl, lock_delay }
}

#[tokio::test]
async fn one_node_wins_and_the_next_term_after_release_has_a_larger_epoch() {
    let consul = FakeConsul::start(Duration::from_secs(10)).await;
    let cfg = config(&consul.url, Duration::from_secs(10), Duration::from_secs(1));
    let mut a = ConsulLeaser::connect(&cfg, record(1)).await.expect("a");
    let mut b = ConsulLeaser::connect(&cfg, record(2)).await.expect("b");

    let AcquireOutcome::Acquired { epoch: first, ttl, lease_id } = a.acquire().await.expect("a acquires") else {
        panic!("a wins an empty election");
    };
    assert_eq!(ttl, Duration::from_secs(10));
    assert_eq!(lease_id.len(), 36, "the lease is named by its Consul session, as LiteFS does: {lease_id}");
    match b.acquire().await.expect("b asks") {
        AcquireOutcome::Held { holder, epoch } => assert_eq!((holder, epoch), (record(1), first)),
        other => panic!("b must not win: {other:?}"),
    }
    assert_eq!(b.observe().await.expect("observe"), Some((record(1), first)));
    assert!(a.renew(first).await.expect("renew"));

    a.release(first).await.expect("release");
    assert_eq!(b.observe().await.expect("observe"), None);
    let AcquireOutcome::Acquired { epoch: second, .. } = b.acquire().await.expect("b acquires") else {
        panic!("b wins after a released (an explicit release has no lock delay)");
    };
    assert!(second > first);
}

#[tokio::test]
async fn an_expired_session_loses_the_key_and_the_lock_delay_holds_others_off() {
    // Consul's minimum TTL is 10s; this test lowers the double's minimum to 1s to stay quick.
    let consul = FakeConsul::start(Duration::from_secs(1)).await;
    let cfg = config(&consul.url, Duration::from_secs(1), Duration::from_millis(800));
    let mut a = ConsulLeaser::connect(&cfg, record(1)).await.expect("a");
    let mut b = ConsulLeaser::connect(&cfg, record(2)).await.expect("b");
    let AcquireOutcome::Acquired { epoch, .. } = a.acquire().await.expect("a acquires") else { panic!("a wins") };

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!a.renew(epoch).await.expect("renew answers"), "the session expired");
    assert_eq!(b.observe().await.expect("observe"), None, "behaviour delete removed the key");
    let during_delay = b.acquire().await;
    assert!(matches!(during_delay, Err(LeaseError::Store { .. })), "lock delay: {during_delay:?}");

    tokio::time::sleep(Duration::from_millis(900)).await;
    let AcquireOutcome::Acquired { epoch: next, .. } = b.acquire().await.expect("b acquires") else {
        panic!("b wins after the lock delay");
    };
    assert!(next > epoch);
}

#[tokio::test]
async fn a_ttl_consul_rejects_is_a_store_error_naming_it() {
    let consul = FakeConsul::start(Duration::from_secs(10)).await;
    let mut a = ConsulLeaser::connect(&config(&consul.url, Duration::from_secs(2), Duration::ZERO), record(1))
        .await
        .expect("connect");
    let err = a.acquire().await.expect_err("2s is below Consul's minimum TTL");
    assert!(err.to_string().contains("Invalid Session TTL"), "{err}");
}

#[tokio::test]
async fn a_handed_over_session_passes_to_the_target_without_the_key_ever_being_free() {
    // The double's minimum TTL is lowered to 1s so the old primary's silence is seen quickly.
    let consul = FakeConsul::start(Duration::from_secs(1)).await;
    let cfg = config(&consul.url, Duration::from_secs(1), Duration::from_secs(1));
    let mut leasers = Vec::new();
    for n in 1..=3 {
        leasers.push(Leaser::Consul(Box::new(ConsulLeaser::connect(&cfg, record(n)).await.expect("connect"))));
    }
    let [mut a, mut b, mut c] = <[Leaser; 3]>::try_from(leasers).ok().expect("three leasers");
    let second = support::handoff::hand_over_and_take_over(&mut a, &mut b, &mut c, &record(2)).await;

    // The shared session now lives on b's renewals alone.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(b.renew(second).await.expect("renew answers"), "b keeps the session alive");
    }
    assert_eq!(c.observe().await.expect("observe"), Some((record(2), second)));
}
