//! Many seeds of the full fault mix, split across threads; every invariant after every event.

use std::sync::Mutex;
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
    let acked_lost = AtomicU64::new(0);
    let stats = Mutex::new(Vec::new());
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
                                acked_lost.fetch_add(sum.acked_lost, Ordering::Relaxed);
                                stats.lock().expect("no thread panics holding it").push(sum.stats);
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
        "{} seeds, {events} events ({:.0} events/s), {} commits acknowledged ({} lost to failovers, as asynchronous mode allows), {} elections, {secs:.1}s",
        seeds.len(),
        events as f64 / secs,
        acked.load(Ordering::Relaxed),
        acked_lost.load(Ordering::Relaxed),
        elections.load(Ordering::Relaxed)
    );
    let stats = stats.into_inner().expect("no thread panicked holding it");
    let total = |f: fn(&replite_sim::Stats) -> u64| stats.iter().map(f).sum::<u64>();
    let mix = [
        ("crashes", total(|s| s.crashes)),
        ("partitions", total(|s| s.partitions)),
        ("handoffs", total(|s| s.handoffs)),
        ("snapshots", total(|s| s.snapshots)),
        ("incremental LTX sent", total(|s| s.ltx_sent)),
        ("resyncs", total(|s| s.resyncs)),
        ("disk errors", total(|s| s.disk_errors)),
        ("torn writes", total(|s| s.torn_writes)),
        ("network faults", total(|s| s.net_faults)),
        ("slow lease answers", total(|s| s.slow_lease_answers)),
        ("refused commits", total(|s| s.refused)),
        ("late joins", total(|s| s.late_joins)),
        ("replicas cut off", total(|s| s.cut_offs)),
        ("process pauses", total(|s| s.pauses)),
        ("shrinking commits", total(|s| s.shrinks)),
        ("spooled LTX files", total(|s| s.spooled)),
        ("discarded spools", total(|s| s.spools_discarded)),
        ("unflushed LTX files lost", total(|s| s.volatile_files_lost)),
        ("fsyncs answered", total(|s| s.fsyncs_answered)),
        ("replica streams paused", total(|s| s.stream_pauses)),
        ("halt locks held", total(|s| s.halt_locks)),
        ("transactions sent under halt locks", total(|s| s.halt_commits_sent)),
        ("of them committed by the primary", total(|s| s.halt_commits_accepted)),
        ("of them back at their replica", total(|s| s.halt_echoes)),
    ];
    eprintln!("fault mix: {mix:?}");
    if let Some(first) = failures.first() {
        panic!("{} failing seeds; first:\n{first}", failures.len());
    }
    assert!(events > seeds.len() as u64 * 1000, "seeds ran too few events to mean anything");
    if seeds.len() >= 100 {
        for (what, n) in mix {
            assert!(n > 0, "{} seeds produced no {what}: the fault mix is not what it claims", seeds.len());
        }
    }
}
