//! replite-sim-tests: fault-injection simulations of replite clusters, run by `cargo test`,
//! checking the replication invariants after every simulated event.
