//! The checker must bite: Nodes built with deliberate bugs must be caught within a bounded
//! number of seeds.

use replite_core::node::{Faults, SyncPolicy};
use replite_sim_tests::{config_for_seed, run_seed};

/// Seeds tried per bug before declaring the simulator blind to it.
const SEED_BUDGET: u64 = 64;

fn first_catch(faults: Faults, sync: bool, lease_slow: Option<f64>) -> Option<(u64, String)> {
    (0..SEED_BUDGET).find_map(|seed| {
        let mut cfg = config_for_seed(seed, faults);
        if sync {
            cfg.sync = Some(SyncPolicy::Block);
            cfg.async_window_ms = None;
        }
        if let Some(p) = lease_slow {
            cfg.faults.lease_slow = p;
        }
        run_seed(seed, cfg).err().map(|report| (seed, report))
    })
}

fn assert_caught(name: &str, faults: Faults, sync: bool) {
    assert_caught_with(name, faults, sync, None);
}

fn assert_caught_with(name: &str, faults: Faults, sync: bool, lease_slow: Option<f64>) {
    match first_catch(faults, sync, lease_slow) {
        Some((seed, report)) => {
            let first_line = report.lines().next().unwrap_or_default();
            eprintln!("{name}: caught by seed {seed}: {first_line}");
        }
        None => panic!("the simulator did not catch {name} in {SEED_BUDGET} seeds"),
    }
}

#[test]
fn skipping_the_pre_apply_check_is_caught() {
    assert_caught("skip_pre_apply_check", Faults { skip_pre_apply_check: true, ..Faults::default() }, false);
}

#[test]
fn accepting_writes_after_lease_expiry_is_caught() {
    assert_caught("write_after_expiry", Faults { write_after_expiry: true, ..Faults::default() }, false);
}

#[test]
fn acknowledging_before_durable_is_caught() {
    assert_caught("ack_before_durable", Faults { ack_before_durable: true, ..Faults::default() }, true);
}

#[test]
fn ignoring_epochs_is_caught() {
    // Stale lease answers are what tempt a node to follow an old primary: make them common.
    assert_caught_with("ignore_epochs", Faults { ignore_epochs: true, ..Faults::default() }, false, Some(0.3));
}
