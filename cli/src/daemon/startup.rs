//! Start-up before the mount exists: the Node's recovery replays LTX files onto database files
//! directly (no application can see them yet, so no locks and no cache to invalidate).

use replite_core::node::{Input, Millis, Node, Output};

use crate::store::Store;

/// Feeds the Node its start and carries out its replay; returns the outputs that belong to
/// the running driver (lease requests, events), in order.
pub fn recover(
    node: &mut Node,
    store: &mut Store,
    now: impl Fn() -> Millis,
    recovery: replite_core::node::Recovery,
) -> Vec<Output> {
    node.handle(now(), Input::Start(recovery));
    let mut deferred = Vec::new();
    loop {
        let mut done = Vec::new();
        while let Some(output) = node.poll_output() {
            match output {
                Output::ReplayLtx { db, op, min, max, base } => {
                    let result = store.apply_ltx(&db, min, max, base).map_err(|e| {
                        tracing::error!(%db, %min, %max, error = %e, "replaying an LTX file failed");
                        e.failure()
                    });
                    done.push(Input::LtxDone { op, result });
                }
                Output::RemoveLtx { db, min, max } => {
                    if let Err(e) = store.remove_ltx(&db, min, max) {
                        tracing::warn!(%db, %min, %max, error = %e, "removing an LTX file failed");
                    }
                }
                Output::PersistRejoin { db, txid } => {
                    if let Err(e) = store.persist_rejoin(&db, txid) {
                        tracing::warn!(%db, %txid, error = %e, "persisting the rejoin TXID failed");
                    }
                }
                Output::PersistEpoch { epoch } => {
                    if let Err(e) = store.persist_epoch(epoch) {
                        tracing::warn!(%epoch, error = %e, "persisting the epoch failed");
                    }
                }
                Output::Event(event) => {
                    tracing::info!(?event, "node event");
                    deferred.push(Output::Event(event));
                }
                other => deferred.push(other),
            }
        }
        if done.is_empty() {
            return deferred;
        }
        for input in done {
            node.handle(now(), input);
        }
    }
}
