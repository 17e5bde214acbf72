//! The driver's loop: one task that owns the Node. Requests from the FUSE layer and results
//! of I/O come in on channels; outputs go out to storage, the lease backend and the FUSE
//! layer's waiting threads. Slow I/O runs in other tasks and comes back as an `Input`, so the
//! loop never blocks on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use replite_core::node::{CommitId, Event, Input, Node, OpId, Output, RefuseReason};
use replite_core::stream::DbName;
use replite_core::{Epoch, NodeId};
use replite_fuse::{CapturedTx, Refusal};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, info, warn};

use crate::driver::bridge::{Answer, FsRequest};
use crate::driver::clock::Clock;
use crate::driver::page_sums::PageSums;
use crate::driver::storage::Storage;
use crate::lease::{AcquireOutcome, Leaser};

/// Reads a database's page checksums the first time it commits (the file as it was before).
pub type LoadPageSums = Box<dyn Fn(&CapturedTx) -> std::io::Result<PageSums> + Send>;

/// A commit the Node has not answered yet.
struct Pending {
    answer: Answer,
    tx: CapturedTx,
}

/// Owns the Node and carries out its outputs.
pub struct Driver {
    node: Node,
    clock: Clock,
    fs: mpsc::UnboundedReceiver<FsRequest>,
    results: mpsc::UnboundedReceiver<Input>,
    results_tx: mpsc::UnboundedSender<Input>,
    leaser: Arc<Mutex<Leaser>>,
    storage: Arc<dyn Storage>,
    /// Per-database page checksums, loaded by the caller-supplied function on first commit.
    sums: BTreeMap<String, PageSums>,
    load_sums: LoadPageSums,
    pending: BTreeMap<CommitId, Pending>,
    next_commit: u64,
}

impl Driver {
    /// A driver for a started-up `node` (the caller has fed it `Input::Start`).
    pub fn new(
        node: Node,
        fs: mpsc::UnboundedReceiver<FsRequest>,
        leaser: Leaser,
        storage: Arc<dyn Storage>,
        load_sums: LoadPageSums,
    ) -> Driver {
        let (results_tx, results) = mpsc::unbounded_channel();
        Driver {
            node,
            clock: Clock::start(),
            fs,
            results,
            results_tx,
            leaser: Arc::new(Mutex::new(leaser)),
            storage,
            sums: BTreeMap::new(),
            load_sums,
            pending: BTreeMap::new(),
            next_commit: 0,
        }
    }

    /// The Node, for status.
    #[must_use]
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Runs until the FUSE side hangs up.
    pub async fn run(mut self) {
        loop {
            self.drain_outputs();
            let deadline = self.node.poll_timeout();
            let sleep = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(self.clock.instant_at(at).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = self.fs.recv() => match request {
                    Some(request) => self.on_fs_request(request),
                    None => break,
                },
                Some(input) = self.results.recv() => self.node.handle(self.clock.now(), input),
                () = sleep => {
                    if let Some((_, kind)) = deadline {
                        debug!(?kind, "timer");
                    }
                    self.node.handle(self.clock.now(), Input::Timeout);
                }
            }
        }
        self.node.handle(self.clock.now(), Input::Shutdown);
        self.drain_outputs();
    }

    /// Handles one request and everything it causes, for tests and the loop alike.
    pub fn step(&mut self, request: FsRequest) {
        self.on_fs_request(request);
        self.drain_outputs();
    }

    fn on_fs_request(&mut self, request: FsRequest) {
        let now = self.clock.now();
        match request {
            FsRequest::MayWrite { answer, .. } | FsRequest::Sync { answer, .. } => {
                let verdict = match self.node.accepting_writes(now) {
                    Some(_) => Ok(()),
                    None => Err(Refusal::ReadOnly { reason: "this node is not the primary".into() }),
                };
                let _ = answer.send(verdict);
            }
            FsRequest::Delete { db, answer } => {
                warn!(%db, "database deletion is not replicated yet; refused");
                let _ = answer.send(Err(Refusal::Failed { reason: "deleting a database is not supported yet".into() }));
            }
            FsRequest::Commit { tx, answer } => self.on_commit(tx, answer),
        }
    }

    fn on_commit(&mut self, tx: CapturedTx, answer: Answer) {
        let db = match DbName::new(&tx.db) {
            Ok(db) => db,
            Err(e) => {
                let _ = answer.send(Err(Refusal::Failed { reason: format!("invalid database name: {e}") }));
                return;
            }
        };
        if !self.sums.contains_key(&tx.db) {
            match (self.load_sums)(&tx) {
                Ok(sums) => {
                    self.sums.insert(tx.db.clone(), sums);
                }
                Err(e) => {
                    let _ = answer.send(Err(Refusal::Failed { reason: format!("reading page checksums: {e}") }));
                    return;
                }
            }
        }
        let sums = &self.sums[&tx.db];
        let change = sums.changes(tx.pages.iter().map(|p| (p.pgno, p.data.as_slice())), tx.commit);
        self.next_commit += 1;
        let commit = CommitId(self.next_commit);
        let input = Input::Commit {
            commit,
            db,
            page_size: tx.page_size,
            pages: change.pages,
            commit_pages: tx.commit,
            removed: change.removed,
        };
        self.pending.insert(commit, Pending { answer, tx });
        self.node.handle(self.clock.now(), input);
    }

    fn drain_outputs(&mut self) {
        while let Some(output) = self.node.poll_output() {
            self.execute(output);
        }
    }

    fn execute(&mut self, output: Output) {
        match output {
            Output::AckCommit { db, commit, pos } => {
                if let Some(p) = self.pending.remove(&commit) {
                    if let Some(sums) = self.sums.get_mut(db.as_str()) {
                        sums.commit(p.tx.pages.iter().map(|pg| (pg.pgno, pg.data.as_slice())), p.tx.commit);
                    }
                    debug!(%db, %pos, "commit acknowledged");
                    let _ = p.answer.send(Ok(()));
                }
            }
            Output::RefuseCommit { commit, reason } => {
                if let Some(p) = self.pending.remove(&commit) {
                    let refusal = match reason {
                        RefuseReason::Disk | RefuseReason::Invalid => {
                            Refusal::Failed { reason: format!("commit refused: {reason:?}") }
                        }
                        _ => Refusal::ReadOnly { reason: format!("commit refused: {reason:?}") },
                    };
                    let _ = p.answer.send(Err(refusal));
                }
            }
            Output::PersistLtx { db, op, min, max, bytes, .. } => {
                let storage = Arc::clone(&self.storage);
                let results = self.results_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let result = storage.persist_ltx(&db, min, max, &bytes);
                    let _ = results.send(Input::LtxDone { op, result });
                });
            }
            Output::RemoveLtx { db, min, max } => {
                if let Err(e) = self.storage.remove_ltx(&db, min, max) {
                    warn!(%db, %min, %max, ?e, "removing an LTX file failed");
                }
            }
            Output::PersistEpoch { epoch } => {
                if let Err(e) = self.storage.persist_epoch(epoch) {
                    warn!(%epoch, ?e, "persisting the epoch failed");
                }
            }
            Output::AcquireLease { op } => self.lease_task(op, LeaseRequest::Acquire),
            Output::RenewLease { op, epoch } => self.lease_task(op, LeaseRequest::Renew(epoch)),
            Output::ObserveLease { op } => self.lease_task(op, LeaseRequest::Observe),
            Output::ReleaseLease { epoch } => {
                let leaser = Arc::clone(&self.leaser);
                tokio::spawn(async move {
                    if let Err(e) = leaser.lock().await.release(epoch).await {
                        warn!(%epoch, %e, "releasing the lease failed; it expires by itself");
                    }
                });
            }
            Output::Event(event) => log_event(&event),
            other => warn!(output = ?other, "replication stream outputs are not wired yet"),
        }
    }

    fn lease_task(&self, op: OpId, request: LeaseRequest) {
        let leaser = Arc::clone(&self.leaser);
        let results = self.results_tx.clone();
        tokio::spawn(async move {
            let mut leaser = leaser.lock().await;
            let input = match request {
                LeaseRequest::Acquire => match leaser.acquire().await {
                    Ok(AcquireOutcome::Acquired { epoch, .. }) => Input::LeaseAcquired { op, epoch },
                    Ok(AcquireOutcome::Held { holder, epoch }) => {
                        Input::LeaseHeld { op, holder: holder.node_id.unwrap_or(NodeId(0)), epoch }
                    }
                    Err(e) => {
                        warn!(%e, "lease acquire failed");
                        Input::LeaseRequestFailed { op }
                    }
                },
                LeaseRequest::Renew(epoch) => match leaser.renew(epoch).await {
                    Ok(true) => Input::LeaseRenewed { op },
                    Ok(false) => Input::LeaseLost { op },
                    Err(e) => {
                        warn!(%e, "lease renew failed");
                        Input::LeaseRequestFailed { op }
                    }
                },
                LeaseRequest::Observe => match leaser.observe().await {
                    Ok(holder) => Input::LeaseObserved {
                        op,
                        holder: holder.map(|(record, epoch)| (record.node_id.unwrap_or(NodeId(0)), epoch)),
                    },
                    Err(e) => {
                        warn!(%e, "lease observe failed");
                        Input::LeaseRequestFailed { op }
                    }
                },
            };
            let _ = results.send(input);
        });
    }
}

enum LeaseRequest {
    Acquire,
    Renew(Epoch),
    Observe,
}

fn log_event(event: &Event) {
    info!(?event, "node event");
}
