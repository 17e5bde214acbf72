//! The FUSE layer's commit hook, bridged to the driver's task. A FUSE worker thread holds
//! SQLite's commit syscall while it waits here for the Node's verdict; the driver answers
//! through a plain channel (sending never blocks the driver). Nothing is decided here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as sync_mpsc;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use replite_fuse::{CapturedTx, CommitSink, Refusal};

use tokio::sync::{Notify, mpsc};

use crate::driver::run::{self, Driver};

/// Longest a held commit syscall waits for the driver before failing, so a wedged driver
/// cannot hang applications forever. Synchronous replication's own timeout is far shorter.
pub const COMMIT_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the driver sends its verdict on one request.
pub type Answer = sync_mpsc::Sender<Result<(), Refusal>>;

/// What the FUSE layer asks of the driver.
#[derive(Debug)]
pub enum FsRequest {
    /// A transaction reached its commit point.
    Commit {
        /// The captured transaction.
        tx: CapturedTx,
        /// Where the verdict goes.
        answer: Answer,
    },
    /// A write transaction is starting on `db`: may this node write?
    MayWrite {
        /// The database.
        db: String,
        /// Where the verdict goes.
        answer: Answer,
    },
    /// SQLite fsynced `db`'s WAL.
    Sync {
        /// The database.
        db: String,
        /// Where the verdict goes.
        answer: Answer,
    },
    /// `db` is being deleted.
    Delete {
        /// The database.
        db: String,
        /// Where the verdict goes.
        answer: Answer,
    },
    /// A transaction a replica made under a halt lock (LiteFS's `/tx`, from `crate::halt`),
    /// committed as this primary's own if the Node finds it still applies. The database
    /// file is written afterwards, by the halt lock's handler.
    RemoteCommit {
        /// The transaction, as if the mount had captured it.
        tx: Box<CapturedTx>,
        /// Who made it, on what, leading where.
        remote: replite_core::node::RemoteCommit,
        /// Where the verdict goes.
        answer: Answer,
    },
    /// This replica now holds halt lock `id` on `db` at its primary (`crate::halt`), granted
    /// at `pos`: its applications' commits to `db` go to the primary from now on.
    HaltHeld {
        /// The database.
        db: String,
        /// The lock's id at the primary.
        id: i64,
        /// The primary's API URL.
        primary_url: String,
        /// The primary's position when it granted the lock (this replica's too by now).
        pos: replite_core::Pos,
        /// Where the verdict goes.
        answer: Answer,
    },
    /// This replica let go of its halt lock on `db` (`crate::halt`).
    HaltDropped {
        /// The database.
        db: String,
        /// Where the verdict goes.
        answer: Answer,
    },
    /// The Node's position of `db` (`crate::halt`).
    Position {
        /// The database.
        db: String,
        /// Where the position goes.
        reply: sync_mpsc::Sender<replite_core::Pos>,
    },
}

/// The driver's standing answer to "may this node write?": yes until an instant (the end of
/// the lease's safe period), published after every step. Starting a write transaction is
/// then one atomic load on the FUSE thread instead of a round trip through the driver (two
/// thread wake-ups per transaction). Anything else (no lease, a handoff, the instant passed)
/// asks the driver, which decides and parks as before. The commit itself is always decided
/// by the Node, so an answer that went stale a moment later costs a refused commit, exactly
/// as a lease lost mid-transaction does.
#[derive(Debug)]
pub struct WriteGate {
    base: Instant,
    /// Nanoseconds after `base` until which writes are granted; 0: ask the driver.
    open_until_ns: AtomicU64,
}

impl WriteGate {
    fn new() -> WriteGate {
        WriteGate { base: Instant::now(), open_until_ns: AtomicU64::new(0) }
    }

    /// Grants writes until `until` (`None`: ask the driver from now on).
    pub fn open_until(&self, until: Option<Instant>) {
        let ns = until.map_or(0, |at| u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(0));
        self.open_until_ns.store(ns, Ordering::Release);
    }

    /// Whether writes are granted right now without asking.
    #[must_use]
    pub fn is_open(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.open_until_ns.load(Ordering::Acquire)
    }
}

/// Lets a FUSE thread step the running driver itself instead of handing its request to the
/// driver's task and waiting to be woken. On a loaded 2-core machine each of those hand-offs
/// is a thread wake-up on another CPU (tens of microseconds each, and they made up about half
/// of the daemon's CPU time in a WAL/NORMAL write load); a deferred commit's small file is
/// written and acknowledged within the step, so the answer is there when the step returns.
/// Whoever steps holds the driver's lock: the loop's own steps and the FUSE threads' take
/// turns. The flushes and durable writes a request waits for are done by its own thread after
/// the step, outside the lock; everything else slow still goes to other tasks as before.
pub struct DirectLane {
    attached: RwLock<Option<Attached>>,
    /// Wakes the loop when a step here needs its timer sooner.
    wake: Notify,
}

struct Attached {
    driver: Arc<std::sync::Mutex<Driver>>,
    runtime: tokio::runtime::Handle,
}

impl DirectLane {
    fn new() -> DirectLane {
        DirectLane { attached: RwLock::new(None), wake: Notify::new() }
    }

    /// Called by the running loop: requests step `driver` from now on, with `runtime` for the
    /// tasks a step starts.
    pub(crate) fn attach(&self, driver: Arc<std::sync::Mutex<Driver>>, runtime: tokio::runtime::Handle) {
        *self.attached.write().unwrap_or_else(PoisonError::into_inner) = Some(Attached { driver, runtime });
    }

    /// Called by the loop as it stops: waits for steps in progress, then sends requests to
    /// the queue again.
    pub(crate) fn detach(&self) {
        *self.attached.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Resolves when a step here has moved the loop's timer earlier.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Steps the driver with `request` on this thread; gives it back if no loop is running.
    fn step(&self, request: FsRequest) -> Result<(), FsRequest> {
        let attached = self.attached.read().unwrap_or_else(PoisonError::into_inner);
        let Some(Attached { driver, runtime }) = attached.as_ref() else { return Err(request) };
        // A step may start tasks (replication, lease work): they go to the daemon's runtime.
        let _runtime = runtime.enter();
        let (sooner, jobs) = run::lock(driver).step_direct(request);
        if sooner {
            self.wake.notify_one();
        }
        // The flushes and durable writes this request waits for: done here, outside the
        // driver's lock, instead of on a blocking task that reports to the loop, which then
        // answers this thread (three wake-ups saved).
        for job in jobs {
            let (input, then) = job();
            if run::lock(driver).step_direct_result(input) {
                self.wake.notify_one();
            }
            if let Some(then) = then {
                runtime.spawn_blocking(then);
            }
        }
        Ok(())
    }
}

/// The [`CommitSink`] the mount calls; each call steps the driver directly while its loop runs
/// ([`DirectLane`]), or otherwise becomes an [`FsRequest`] for the loop.
pub struct CommitBridge {
    requests: mpsc::UnboundedSender<FsRequest>,
    gate: Arc<WriteGate>,
    lane: Arc<DirectLane>,
}

impl CommitBridge {
    /// A bridge and the receiving end the driver reads.
    #[must_use]
    pub fn new() -> (CommitBridge, mpsc::UnboundedReceiver<FsRequest>) {
        let (requests, rx) = mpsc::unbounded_channel();
        (CommitBridge { requests, gate: Arc::new(WriteGate::new()), lane: Arc::new(DirectLane::new()) }, rx)
    }

    /// A sender of requests to the driver, for callers other than the mount (`crate::halt`).
    #[must_use]
    pub fn requests(&self) -> mpsc::UnboundedSender<FsRequest> {
        self.requests.clone()
    }

    /// The lane the driver attaches to while it runs (`Driver::with_direct_lane`).
    #[must_use]
    pub fn lane(&self) -> Arc<DirectLane> {
        Arc::clone(&self.lane)
    }

    /// The gate the driver keeps up to date (`Driver::with_write_gate`).
    #[must_use]
    pub fn gate(&self) -> Arc<WriteGate> {
        Arc::clone(&self.gate)
    }

    fn ask(&self, make: impl FnOnce(Answer) -> FsRequest) -> Result<(), Refusal> {
        let (answer, verdict) = sync_mpsc::channel();
        if let Err(request) = self.lane.step(make(answer))
            && self.requests.send(request).is_err()
        {
            return Err(Refusal::ReadOnly { reason: "replite is shutting down".into() });
        }
        // The calling FUSE worker is a plain thread: blocking here is what holds the syscall.
        match verdict.recv_timeout(COMMIT_ANSWER_TIMEOUT) {
            Ok(answer) => answer,
            Err(sync_mpsc::RecvTimeoutError::Disconnected) => {
                Err(Refusal::ReadOnly { reason: "replite stopped before answering".into() })
            }
            Err(sync_mpsc::RecvTimeoutError::Timeout) => {
                Err(Refusal::Failed { reason: format!("no answer from replite within {COMMIT_ANSWER_TIMEOUT:?}") })
            }
        }
    }
}

impl CommitSink for CommitBridge {
    fn commit(&self, tx: &CapturedTx) -> Result<(), Refusal> {
        self.ask(|answer| FsRequest::Commit { tx: tx.clone(), answer })
    }

    fn may_write(&self, db: &str) -> Result<(), Refusal> {
        if self.gate.is_open() {
            return Ok(());
        }
        self.ask(|answer| FsRequest::MayWrite { db: db.to_owned(), answer })
    }

    fn sync(&self, db: &str) -> Result<(), Refusal> {
        self.ask(|answer| FsRequest::Sync { db: db.to_owned(), answer })
    }

    fn delete(&self, db: &str) -> Result<(), Refusal> {
        self.ask(|answer| FsRequest::Delete { db: db.to_owned(), answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_for_the_drivers_verdict_and_returns_it() {
        let (bridge, mut rx) = CommitBridge::new();
        let driver = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Some(request) = rx.blocking_recv() {
                match request {
                    FsRequest::MayWrite { db, answer } => {
                        seen.push(db.clone());
                        let verdict = if db == "ok.db" {
                            Ok(())
                        } else {
                            Err(Refusal::ReadOnly { reason: "not primary".into() })
                        };
                        answer.send(verdict).expect("caller waits");
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            seen
        });
        assert_eq!(bridge.may_write("ok.db"), Ok(()));
        assert_eq!(bridge.may_write("no.db"), Err(Refusal::ReadOnly { reason: "not primary".into() }));
        drop(bridge);
        assert_eq!(driver.join().expect("driver thread"), vec!["ok.db".to_string(), "no.db".to_string()]);
    }

    #[test]
    fn an_open_gate_answers_without_the_driver_and_a_closed_or_expired_one_asks() {
        let (bridge, rx) = CommitBridge::new();
        let gate = bridge.gate();
        gate.open_until(Some(Instant::now() + Duration::from_secs(60)));
        // No driver is reading: only the gate can answer.
        assert_eq!(bridge.may_write("x.db"), Ok(()));
        gate.open_until(Some(Instant::now()));
        drop(rx);
        assert!(matches!(bridge.may_write("x.db"), Err(Refusal::ReadOnly { .. })), "an expired grant asks the driver");
        gate.open_until(Some(Instant::now() + Duration::from_secs(60)));
        gate.open_until(None);
        assert!(matches!(bridge.may_write("x.db"), Err(Refusal::ReadOnly { .. })), "a closed gate asks the driver");
    }

    #[test]
    fn a_driver_that_is_gone_means_read_only() {
        let (bridge, rx) = CommitBridge::new();
        drop(rx);
        assert!(matches!(bridge.may_write("x.db"), Err(Refusal::ReadOnly { .. })));
    }

    #[test]
    fn a_driver_that_drops_the_request_unanswered_means_read_only() {
        let (bridge, mut rx) = CommitBridge::new();
        let driver = std::thread::spawn(move || {
            let request = rx.blocking_recv().expect("one request");
            drop(request);
        });
        assert!(matches!(bridge.delete("x.db"), Err(Refusal::ReadOnly { .. })));
        driver.join().expect("driver thread");
    }
}
