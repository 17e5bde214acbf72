//! The lease handoff every network backend must honour (decision 0013), on any `Leaser`.

use replite::lease::{AcquireOutcome, LeaseError, LeaseRecord, Leaser};
use replite_core::Epoch;

/// `a` acquires and hands its term over; a third node never finds the lease free; the target
/// `b` takes the handed term over under a larger epoch, which a stale take-over cannot take.
/// Returns `b`'s epoch.
pub async fn hand_over_and_take_over(a: &mut Leaser, b: &mut Leaser, c: &mut Leaser, b_record: &LeaseRecord) -> Epoch {
    let AcquireOutcome::Acquired { epoch: first, .. } = a.acquire().await.expect("a acquires") else {
        panic!("a wins an empty election")
    };
    a.hand_over(first).expect("a held the term");
    assert!(matches!(a.renew(first).await, Err(LeaseError::NotHeld { .. })), "a no longer renews it");
    assert!(matches!(c.acquire().await.expect("c asks"), AcquireOutcome::Held { .. }), "never free for a third node");
    let AcquireOutcome::Acquired { epoch: second, .. } = b.take_over(first).await.expect("b takes over") else {
        panic!("the target takes the handed term over");
    };
    assert!(second > first, "the new term fences the old: {first} then {second}");
    assert_eq!(c.observe().await.expect("observe"), Some((b_record.clone(), second)));
    assert!(
        matches!(c.take_over(first).await.expect("c asks"), AcquireOutcome::Held { epoch, .. } if epoch == second),
        "a stale handoff cannot take the new term"
    );
    second
}
