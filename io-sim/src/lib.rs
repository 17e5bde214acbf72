//! replite-sim: a deterministic, seeded simulation of clocks, network, disks and a lease
//! store that drives many real `replite_core` nodes under injected faults. Same seed, same run.
