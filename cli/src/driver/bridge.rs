//! The FUSE layer's commit hook, bridged to the driver's task. A FUSE worker thread holds
//! SQLite's commit syscall while it waits here for the Node's verdict; the driver answers
//! through a plain channel (sending never blocks the driver). Nothing is decided here.

use std::time::Duration;

use replite_fuse::{CapturedTx, CommitSink, Refusal};
use std::sync::mpsc as sync_mpsc;

use tokio::sync::mpsc;

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
}

/// The [`CommitSink`] the mount calls; each call becomes an [`FsRequest`] for the driver.
pub struct CommitBridge {
    requests: mpsc::UnboundedSender<FsRequest>,
}

impl CommitBridge {
    /// A bridge and the receiving end the driver reads.
    #[must_use]
    pub fn new() -> (CommitBridge, mpsc::UnboundedReceiver<FsRequest>) {
        let (requests, rx) = mpsc::unbounded_channel();
        (CommitBridge { requests }, rx)
    }

    fn ask(&self, make: impl FnOnce(Answer) -> FsRequest) -> Result<(), Refusal> {
        let (answer, verdict) = sync_mpsc::channel();
        if self.requests.send(make(answer)).is_err() {
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
