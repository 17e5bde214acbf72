//! Many seeds of the full fault mix, split across threads; every invariant after every event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use replite_core::node::Faults;
use replite_sim_tests::{config_for_seed, run_seed, seeds_from_env};

#[test]
fn the_cluster_keeps_every_invariant_under_faults_for_many_seeds() {
    let seeds = seeds_from_env(1000);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let events = AtomicU64::new(0);
    let acked = AtomicU64::new(0);
    let elections = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut failures = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(&seed) = seeds.get(k) else { break };
                        match run_seed(seed, config_for_seed(seed, Faults::default())) {
                            Ok(sum) => {
                                events.fetch_add(sum.events, Ordering::Relaxed);
                                acked.fetch_add(sum.acked, Ordering::Relaxed);
                                elections.fetch_add(sum.elections, Ordering::Relaxed);
                            }
                            Err(report) => {
                                failures.push(report);
                                if !failures.is_empty() {
                                    break;
                                }
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let events = events.load(Ordering::Relaxed);
    eprintln!(
        "{} seeds, {events} events ({:.0} events/s), {} commits acknowledged, {} elections, {secs:.1}s",
        seeds.len(),
        events as f64 / secs,
        acked.load(Ordering::Relaxed),
        elections.load(Ordering::Relaxed)
    );
    if let Some(first) = failures.first() {
        panic!("{} failing seeds; first:\n{first}", failures.len());
    }
    assert!(events > seeds.len() as u64 * 1000, "seeds ran too few events to mean anything");
}
