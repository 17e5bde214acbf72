//! The checker must bite: Nodes built with deliberate bugs must be caught within a bounded
//! number of seeds, and by the invariant that bug breaks (not by some unrelated failure).

use replite_core::node::{Faults, SyncPolicy};
use replite_sim_tests::{config_for_seed, run_seed};

/// Seeds tried per bug before declaring the simulator blind to it.
const SEED_BUDGET: u64 = 64;

struct Bug {
    name: &'static str,
    faults: Faults,
    /// Run every seed in synchronous `Block` mode.
    sync: bool,
    /// Probability of slow lease answers, if the bug needs them to show.
    lease_slow: Option<f64>,
    /// Text the failure report must contain: which invariant caught it.
    caught_by: &'static [&'static str],
}

fn assert_caught(bug: Bug) {
    for seed in 0..SEED_BUDGET {
        let mut cfg = config_for_seed(seed, bug.faults);
        if bug.sync {
            cfg.sync = Some(SyncPolicy::Block);
            cfg.async_window_ms = None;
        }
        if let Some(p) = bug.lease_slow {
            cfg.faults.lease_slow = p;
        }
        let Err(report) = run_seed(seed, cfg) else { continue };
        let first_line = report.lines().next().unwrap_or_default();
        assert!(
            bug.caught_by.iter().any(|needle| first_line.contains(needle)),
            "{}: seed {seed} failed, but not by the invariant it breaks ({:?}):\n{report}",
            bug.name,
            bug.caught_by
        );
        eprintln!("{}: caught by seed {seed}: {first_line}", bug.name);
        return;
    }
    panic!("the simulator did not catch {} in {SEED_BUDGET} seeds", bug.name);
}

#[test]
fn skipping_the_pre_apply_check_is_caught() {
    assert_caught(Bug {
        name: "skip_pre_apply_check",
        faults: Faults { skip_pre_apply_check: true, ..Faults::default() },
        sync: false,
        lease_slow: None,
        caught_by: &["does not fit", "out of order or twice", "file sums to", "database file is not at its position"],
    });
}

#[test]
fn accepting_writes_after_lease_expiry_is_caught() {
    assert_caught(Bug {
        name: "write_after_expiry",
        faults: Faults { write_after_expiry: true, ..Faults::default() },
        sync: false,
        lease_slow: None,
        caught_by: &["accept writes at once", "accepts writes in epoch", "already written by node"],
    });
}

#[test]
fn acknowledging_before_durable_is_caught() {
    assert_caught(Bug {
        name: "ack_before_durable",
        faults: Faults { ack_before_durable: true, ..Faults::default() },
        sync: true,
        lease_slow: None,
        caught_by: &["acknowledged transaction was lost", "without acknowledged"],
    });
}

#[test]
fn ignoring_epochs_is_caught() {
    // Stale lease answers are what tempt a node to follow an old primary: make them common.
    assert_caught(Bug {
        name: "ignore_epochs",
        faults: Faults { ignore_epochs: true, ..Faults::default() },
        sync: false,
        lease_slow: Some(0.3),
        caught_by: &["applied data from epoch"],
    });
}

#[test]
fn releasing_the_lease_on_handoff_is_caught() {
    assert_caught(Bug {
        name: "release_on_handoff",
        faults: Faults { release_on_handoff: true, ..Faults::default() },
        sync: false,
        lease_slow: None,
        caught_by: &["the handed lease went to another node", "the handed lease went to a node behind it"],
    });
}
