//! The driver's loop: one task that owns the Node. Requests from the FUSE layer, streams
//! from and to other nodes, operator requests and results of I/O come in on channels;
//! outputs go out to storage, the lease backend, the streams and the FUSE layer's waiting
//! threads. Slow I/O runs in other tasks and comes back as an `Input`, so the loop never
//! blocks on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use replite_core::ltx::{HEADER_SIZE, Header};
use replite_core::node::{
    CommitId, DownstreamId, Durability, HaltRefusal, Input, IoFailure, LtxOrigin, Millis, Node, OpId, Output,
    RefuseReason, RemoteCommit, Role, SpoolId, SyncId, UpstreamId,
};
use replite_core::stream::DbName;
use replite_core::{Epoch, NodeId, Pos, TxId};
use replite_fuse::{CapturedTx, Refusal};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, info, warn};

use crate::driver::bridge::{Answer, DirectLane, FsRequest, WriteGate};
use crate::driver::clock::Clock;
use crate::driver::downstream::{DownstreamCmd, DownstreamShared, PositionQuery, Transfers, run_downstream};
use crate::driver::page_sums::PageSums;
use crate::driver::recent_ltx::{self, SharedRecentLtx};
use crate::driver::spool::{MakeImage, SpoolOutcome, SpoolWriter, Spooled};
use crate::driver::status::{EventLog, SnapshotProgress, Status, Surface, TxFacts};
use crate::driver::storage::{AppliedNow, Storage};
use crate::driver::upstream::{UpstreamReport, run_upstream};
use crate::http::{DownstreamConn, StreamServerEvent};
use crate::lease::{AcquireOutcome, LeaseRecord, Leaser};

/// Reads a database's page checksums from its file (`None` when there is no file). Called when
/// the node becomes primary, when no application can be inside a write transaction (the
/// mount was read-only until then), so the file holds exactly the committed database.
pub type LoadPageSums = Box<dyn Fn(&DbName) -> std::io::Result<Option<PageSums>> + Send>;

/// A commit the Node has not answered yet.
struct Pending {
    answer: Answer,
    tx: CapturedTx,
}

/// The mount's status files and the thread that shows role changes on them.
struct SurfaceLink {
    surface: Arc<dyn Surface>,
    /// The status as of the last role or primary change, for the thread.
    roles: watch::Sender<Status>,
    /// Disconnected once the thread has ended.
    finished: std::sync::mpsc::Receiver<()>,
}

impl SurfaceLink {
    fn show(&self, status: &Status) {
        self.surface.show_positions(status);
        self.roles.send_if_modified(|old| {
            let changed = old.role != status.role || old.primary != status.primary;
            if changed {
                *old = status.clone();
            }
            changed
        });
    }
}

/// Where the driver reaches other nodes: this node's lease record (its advertise URL and id),
/// and the replica streams the HTTP server accepts.
pub struct Network {
    /// This node's record.
    pub me: LeaseRecord,
    /// Streams replicas open to this node.
    pub accepted: mpsc::UnboundedReceiver<StreamServerEvent>,
    /// Operator requests (`/handoff`, `/promote`) as Node inputs.
    pub operator: mpsc::UnboundedReceiver<Input>,
}

/// A stream to the primary: its task, and once it is open, where acknowledgements go.
struct UpstreamTask {
    task: tokio::task::AbortHandle,
    outgoing: Option<mpsc::Sender<Bytes>>,
}

/// Everything that comes back to the loop from tasks it started.
enum Back {
    Input(Input),
    Peer { id: NodeId, record: LeaseRecord },
    Spooled { spool: SpoolId, outcome: SpoolOutcome },
}

/// Upstream reports queued for the loop. Bounded so that a loop slowed by the disk (a spool
/// falling behind) stops the upstream task reading, and HTTP/2 flow control then stops the
/// primary, instead of received bytes piling up in memory.
const UPSTREAM_REPORTS_QUEUED: usize = 64;

/// The channels only the loop reads; taken out of the driver when it starts running, so that
/// the driver itself can be shared with the threads that step it directly ([`DirectLane`]).
struct Inbox {
    fs: mpsc::UnboundedReceiver<FsRequest>,
    back: mpsc::UnboundedReceiver<Back>,
    upstream_reports: mpsc::Receiver<UpstreamReport>,
    downstream_closed: mpsc::UnboundedReceiver<DownstreamId>,
    positions: mpsc::UnboundedReceiver<PositionQuery>,
}

/// Owns the Node and carries out its outputs.
pub struct Driver {
    node: Node,
    clock: Clock,
    inbox: Option<Inbox>,
    back_tx: mpsc::UnboundedSender<Back>,
    leaser: Arc<Mutex<Leaser>>,
    storage: Arc<dyn Storage>,
    /// Per-database page checksums, loaded by the caller-supplied function on first commit.
    sums: BTreeMap<String, PageSums>,
    load_sums: LoadPageSums,
    pending: BTreeMap<CommitId, Pending>,
    /// Drops (an application unlinked a database) the Node has not answered yet.
    pending_drops: BTreeMap<CommitId, (DbName, Answer)>,
    next_commit: u64,
    /// Application fsyncs the Node has not answered yet.
    syncs: BTreeMap<SyncId, Answer>,
    next_sync: u64,
    /// "May I write?" questions asked during a handoff, answered once it ends either way: an
    /// application's transaction waits briefly instead of failing while the outcome is open.
    parked: Vec<Answer>,
    network: Option<Network>,
    /// Advertise URLs (and hostnames) of the nodes the lease named.
    peers: BTreeMap<NodeId, LeaseRecord>,
    upstreams: BTreeMap<UpstreamId, UpstreamTask>,
    upstream_reports_tx: mpsc::Sender<UpstreamReport>,
    /// Spools being written (`None` once ended: the thread is verifying and fsyncing).
    spooling: BTreeMap<SpoolId, Option<SpoolWriter>>,
    /// Spools verified and durable, waiting for `PersistSpooledLtx` or `SpoolDiscard`.
    spooled: BTreeMap<SpoolId, Spooled>,
    downstreams: BTreeMap<DownstreamId, mpsc::UnboundedSender<DownstreamCmd>>,
    downstream_closed_tx: mpsc::UnboundedSender<DownstreamId>,
    positions_tx: mpsc::UnboundedSender<PositionQuery>,
    role: Role,
    status: watch::Sender<Status>,
    events: EventLog,
    transfers: Transfers,
    /// Where the standing answer to "may this node write?" is published, if anyone reads it.
    gate: Option<Arc<WriteGate>>,
    /// Where status shows up besides the API (the mount).
    surface: Option<SurfaceLink>,
    /// Where FUSE threads step this driver themselves while the loop runs.
    lane: Option<Arc<DirectLane>>,
    /// The instant the loop's timer is set for (`None`: no timer), so that a step on another
    /// thread wakes the loop only when it needs the timer sooner.
    loop_deadline: Option<Millis>,
    /// During a step on a FUSE thread: the flushes and durable writes it asked for, which that
    /// thread carries out itself after the step (it waits for them anyway).
    direct_jobs: Option<Vec<DirectJob>>,
    /// During the loop's own steps: small replicated files it stores and applies itself
    /// after the step, outside the lock, instead of a blocking task that reports back.
    loop_jobs: Option<Vec<LoopJob>>,
    /// The newest commits' LTX bytes, streamed to replicas without reading the files back.
    recent: SharedRecentLtx,
    /// Acknowledged commits, answered once the step's status is published: a client that
    /// reads `/info` after its commit returned always sees the commit's position.
    acknowledged: Vec<Answer>,
    /// The primaries' API URLs of the halt locks this replica holds, by database: where the
    /// Node's `SendUnderHalt` goes (which commits go there is the Node's decision).
    halt_primaries: BTreeMap<String, String>,
    /// Halt locks handed to the Node and not answered yet, by database.
    halt_answers: BTreeMap<String, Answer>,
    /// The client that sends transactions under them.
    http: reqwest::Client,
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
        let (back_tx, back) = mpsc::unbounded_channel();
        let (upstream_reports_tx, upstream_reports) = mpsc::channel(UPSTREAM_REPORTS_QUEUED);
        let (downstream_closed_tx, downstream_closed) = mpsc::unbounded_channel();
        let (positions_tx, positions) = mpsc::unbounded_channel();
        let status = watch::Sender::new(Status::of(&node, None, &BTreeMap::new(), Clock::start().now()));
        Driver {
            node,
            clock: Clock::start(),
            inbox: Some(Inbox { fs, back, upstream_reports, downstream_closed, positions }),
            back_tx,
            leaser: Arc::new(Mutex::new(leaser)),
            storage,
            sums: BTreeMap::new(),
            load_sums,
            pending: BTreeMap::new(),
            pending_drops: BTreeMap::new(),
            next_commit: 0,
            syncs: BTreeMap::new(),
            next_sync: 0,
            parked: Vec::new(),
            network: None,
            peers: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            upstream_reports_tx,
            spooling: BTreeMap::new(),
            spooled: BTreeMap::new(),
            downstreams: BTreeMap::new(),
            downstream_closed_tx,
            positions_tx,
            role: Role::Stopped,
            status,
            events: EventLog::default(),
            transfers: Transfers::default(),
            halt_primaries: BTreeMap::new(),
            halt_answers: BTreeMap::new(),
            http: reqwest::Client::builder().timeout(HALT_TX_TIMEOUT).build().unwrap_or_default(),
            gate: None,
            surface: None,
            lane: None,
            loop_deadline: None,
            direct_jobs: None,
            loop_jobs: None,
            recent: SharedRecentLtx::default(),
            acknowledged: Vec::new(),
        }
    }

    /// Publishes the standing write grant to `gate` after every step (see [`WriteGate`]).
    #[must_use]
    pub fn with_write_gate(mut self, gate: Arc<WriteGate>) -> Driver {
        self.gate = Some(gate);
        self
    }

    /// Lets FUSE threads step the driver themselves through `lane` while it runs (see
    /// [`DirectLane`]).
    #[must_use]
    pub fn with_direct_lane(mut self, lane: Arc<DirectLane>) -> Driver {
        self.lane = Some(lane);
        self
    }

    /// Connects the driver to other nodes (without this it runs a node alone).
    #[must_use]
    pub fn with_network(mut self, network: Network) -> Driver {
        if let Some(id) = network.me.node_id {
            self.peers.insert(id, network.me.clone());
        }
        self.network = Some(network);
        self
    }

    /// Shows status on `surface` (the mount). Positions and lag are shown within each step
    /// (no kernel call). Role and primary changes are shown from a thread of their own: the
    /// mount's kernel-cache invalidations can wait on a directory lock that an application's
    /// held commit (which waits on this step) owns, so a step must never make them itself.
    /// That thread wakes only when they change, not at every commit.
    #[must_use]
    pub fn with_surface(mut self, surface: Arc<dyn Surface>) -> Driver {
        let roles = watch::Sender::new(self.status.borrow().clone());
        let mut changes = roles.subscribe();
        changes.mark_changed();
        let shown = Arc::clone(&surface);
        let (ending, finished) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new().name("replite-surface".into()).spawn(move || {
            let _ending = ending;
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { return };
            let mut before: Option<Status> = None;
            while runtime.block_on(changes.changed()).is_ok() {
                let status = changes.borrow_and_update().clone();
                shown.show_role(&status, before.as_ref());
                before = Some(status);
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the thread that updates the mount's status files");
        }
        surface.show_positions(&self.status.borrow());
        self.surface = Some(SurfaceLink { surface, roles, finished });
        self
    }

    /// Status as it changes, for the HTTP API and for waiting until the node is ready.
    #[must_use]
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The event log, for `/events`.
    #[must_use]
    pub fn events(&self) -> EventLog {
        self.events.clone()
    }

    /// Runs outputs queued before the loop starts (recovery's lease requests, say).
    pub fn execute_all(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            self.execute(output);
        }
    }

    /// Runs until the FUSE side hangs up or `shutdown` fires; then shuts the Node down
    /// cleanly (the lease is released before this returns).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let Some(mut inbox) = self.inbox.take() else {
            warn!("the driver was run twice");
            return;
        };
        let (mut accepted, mut operator) = match self.network.as_mut() {
            Some(n) => {
                let (_, a) = mpsc::unbounded_channel();
                let (_, o) = mpsc::unbounded_channel();
                (std::mem::replace(&mut n.accepted, a), std::mem::replace(&mut n.operator, o))
            }
            None => (mpsc::unbounded_channel().1, mpsc::unbounded_channel().1),
        };
        let clock = self.clock;
        let lane = self.lane.clone();
        let driver = Arc::new(std::sync::Mutex::new(self));
        if let Some(lane) = &lane {
            lane.attach(Arc::clone(&driver), tokio::runtime::Handle::current());
        }
        let mut inline_rounds = 0;
        loop {
            let (deadline, accepts_upstream_data, jobs) = {
                let mut d = lock(&driver);
                if inline_rounds < MAX_INLINE_APPLY_ROUNDS {
                    d.loop_jobs = Some(Vec::new());
                }
                d.after_step();
                let jobs = d.loop_jobs.take().unwrap_or_default();
                let deadline = d.node.poll_timeout();
                d.loop_deadline = deadline.map(|(at, _)| at);
                (deadline, d.node.accepts_upstream_data(), jobs)
            };
            if !jobs.is_empty() {
                // Outside the lock: FUSE threads may step the driver meanwhile.
                for job in jobs {
                    if let Some(input) = job() {
                        lock(&driver).node.handle(clock.now(), input);
                    }
                }
                inline_rounds += 1;
                continue;
            }
            inline_rounds = 0;
            let sleep = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(clock.instant_at(at).into()).await,
                    None => std::future::pending().await,
                }
            };
            let woken = async {
                match &lane {
                    Some(lane) => lane.woken().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = inbox.fs.recv() => match request {
                    Some(request) => lock(&driver).on_fs_request(request),
                    None => break,
                },
                () = &mut shutdown => break,
                // A step on a FUSE thread needs the timer sooner than it is set.
                () = woken => {}
                Some(back) = inbox.back.recv() => lock(&driver).on_back(back),
                // Paused while the Node holds many unapplied files (see its doc).
                Some(report) = inbox.upstream_reports.recv(), if accepts_upstream_data => {
                    lock(&driver).on_upstream_report(report);
                }
                Some(event) = accepted.recv() => lock(&driver).on_accepted(event),
                Some(conn) = inbox.downstream_closed.recv() => {
                    let mut d = lock(&driver);
                    if d.downstreams.remove(&conn).is_some() {
                        d.node.handle(clock.now(), Input::DownstreamClosed { conn });
                    }
                }
                Some(query) = inbox.positions.recv() => {
                    let d = lock(&driver);
                    let found = match query.checksum {
                        Some(checksum) => d.position_with_checksum(&query.db, checksum),
                        None => Some(d.node.pos(&query.db)).filter(|pos| pos.txid.0 > 0),
                    };
                    let _ = query.reply.send(found);
                }
                Some(input) = operator.recv() => lock(&driver).node.handle(clock.now(), input),
                () = sleep => {
                    if let Some((_, kind)) = deadline {
                        debug!(?kind, "timer");
                    }
                    lock(&driver).node.handle(clock.now(), Input::Timeout);
                }
            }
        }
        // From here on FUSE threads queue their requests, which nobody reads: they fail.
        if let Some(lane) = &lane {
            lane.detach();
        }
        shut_down(&driver).await;
    }

    /// Steps the driver for a request made on a FUSE thread. Returns whether the loop's timer
    /// must now fire sooner than it is set for (the caller wakes the loop), and the blocking
    /// I/O the step asked for, which the caller carries out and reports with
    /// [`Driver::step_direct_result`].
    pub(crate) fn step_direct(&mut self, request: FsRequest) -> (bool, Vec<DirectJob>) {
        self.direct_jobs = Some(Vec::new());
        self.step(request);
        let jobs = self.direct_jobs.take().unwrap_or_default();
        (self.timer_moved_sooner(), jobs)
    }

    /// Feeds the result of a [`DirectJob`] as the loop would have; true if the loop's timer
    /// must now fire sooner. I/O this asks for goes to other tasks as usual.
    pub(crate) fn step_direct_result(&mut self, input: Input) -> bool {
        self.node.handle(self.clock.now(), input);
        self.after_step();
        self.timer_moved_sooner()
    }

    fn timer_moved_sooner(&mut self) -> bool {
        let deadline = self.node.poll_timeout().map(|(at, _)| at);
        let sooner = match (deadline, self.loop_deadline) {
            (Some(at), Some(set)) => at < set,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if sooner {
            self.loop_deadline = deadline;
        }
        sooner
    }

    /// Handles one request and everything it causes, for tests and the loop alike.
    pub fn step(&mut self, request: FsRequest) {
        self.on_fs_request(request);
        self.after_step();
    }

    fn on_fs_request(&mut self, request: FsRequest) {
        let now = self.clock.now();
        match request {
            FsRequest::MayWrite { db, answer } if DbName::new(&db).is_ok_and(|n| self.node.writes_under_halt(&n)) => {
                let _ = answer.send(Ok(()));
            }
            FsRequest::HaltHeld { db, id, primary_url, pos, answer } => {
                self.hold_halt(db, id, primary_url, pos, answer)
            }
            FsRequest::HaltDropped { db, answer } => {
                if let Ok(name) = DbName::new(&db) {
                    self.node.handle(now, Input::ReleaseHalt { db: name });
                }
                self.forget_halt(&db);
                let _ = answer.send(Ok(()));
            }
            FsRequest::MayWrite { answer, .. } if self.node.handing_off() => self.parked.push(answer),
            FsRequest::MayWrite { answer, .. } => {
                let _ = answer.send(self.may_write(now));
            }
            FsRequest::Sync { db, answer } => match DbName::new(&db) {
                Ok(db) => {
                    self.next_sync += 1;
                    let sync = SyncId(self.next_sync);
                    self.syncs.insert(sync, answer);
                    self.node.handle(now, Input::Sync { sync, db });
                }
                Err(e) => {
                    let _ = answer.send(Err(Refusal::Failed { reason: format!("invalid database name: {e}") }));
                }
            },
            FsRequest::Delete { db, answer } => self.on_drop(&db, answer),
            FsRequest::Commit { tx, answer } => self.on_commit(tx, answer, None),
            FsRequest::RemoteCommit { tx, remote, answer } => self.on_remote_commit(*tx, remote, answer),
            FsRequest::Position { db, reply } => {
                let pos = DbName::new(&db).map_or(replite_core::Pos::ZERO, |db| self.node.pos(&db));
                let _ = reply.send(pos);
            }
        }
    }

    fn is_primary(&self) -> bool {
        matches!(self.node.role(), Role::Primary { .. })
    }

    /// This replica took a halt lock on `db` at `pos`: its page checksums are read from the
    /// file (which must be at `pos`), then the Node decides whether its commits go to the
    /// primary (`Output::HaltHeld` answers).
    fn hold_halt(&mut self, db: String, id: i64, primary_url: String, pos: replite_core::Pos, answer: Answer) {
        let refuse = |answer: Answer, reason: String| {
            let _ = answer.send(Err(Refusal::Failed { reason }));
        };
        let Ok(name) = DbName::new(&db) else { return refuse(answer, format!("invalid database name {db:?}")) };
        // The Node refuses a primary too (`HaltRefusal::NotAReplica`); asked here first only
        // so that a primary's own page checksums are neither read again nor replaced.
        if self.is_primary() {
            return refuse(answer, "this node is the primary".into());
        }
        match (self.load_sums)(&name) {
            Ok(Some(sums)) if sums.database_checksum() == pos.checksum => {
                self.sums.insert(db.clone(), sums);
            }
            Ok(_) => return refuse(answer, "the database file does not match the lock's position".into()),
            Err(e) => return refuse(answer, format!("reading page checksums: {e}")),
        }
        self.halt_primaries.insert(db.clone(), primary_url);
        self.halt_answers.insert(db, answer);
        self.node.handle(self.clock.now(), Input::HoldHalt { db: name, lock_id: id, pos });
    }

    /// What the driver keeps for a halt lock on `db` that is gone.
    fn forget_halt(&mut self, db: &str) {
        self.halt_primaries.remove(db);
        // A replica keeps no page checksums; a node promoted while it held the lock loaded
        // its own at the promotion and needs them.
        if !self.is_primary() {
            self.sums.remove(db);
        }
    }

    /// Sends a transaction the Node made under a halt lock to the primary's `/tx`; the
    /// primary's verdict goes back to the Node.
    fn send_under_halt(&mut self, commit: CommitId, db: &DbName, lock_id: i64, bytes: Vec<u8>) {
        let back = self.back_tx.clone();
        let Some(primary_url) = self.halt_primaries.get(db.as_str()) else {
            warn!(%db, "a transaction under a halt lock with no primary to send it to");
            let _ = back.send(Back::Input(Input::SentUnderHalt { commit, accepted: false }));
            return;
        };
        let url = format!("{}/tx?name={db}&lockID={lock_id}", primary_url.trim_end_matches('/'));
        let me = self.node.id();
        let request = self.http.post(url).header(replite_core::stream::HEADER_NODE_ID, format!("{me}")).body(bytes);
        let db = db.clone();
        tokio::spawn(async move {
            let refused = match request.send().await {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    Some(format!("the primary refused it ({status}): {}", text.trim()))
                }
                Err(e) => Some(format!("sending it to the primary: {e}")),
            };
            match &refused {
                Some(reason) => warn!(%db, reason, "transaction under a halt lock refused"),
                None => debug!(%db, "transaction sent under a halt lock"),
            }
            let _ = back.send(Back::Input(Input::SentUnderHalt { commit, accepted: refused.is_none() }));
        });
    }

    /// A halt lock's transaction from a replica: a commit of this node's own, which the Node
    /// refuses unless the database is still where the replica made it and the pages lead where
    /// the replica's file says.
    fn on_remote_commit(&mut self, tx: CapturedTx, remote: RemoteCommit, answer: Answer) {
        self.on_commit(tx, answer, Some(remote));
    }

    fn may_write(&self, now: Millis) -> Result<(), Refusal> {
        match self.node.accepting_writes(now) {
            Some(_) => Ok(()),
            None => Err(Refusal::ReadOnly { reason: "this node is not the primary".into() }),
        }
    }

    fn on_commit(&mut self, tx: CapturedTx, answer: Answer, remote: Option<RemoteCommit>) {
        let db = match DbName::new(&tx.db) {
            Ok(db) => db,
            Err(e) => {
                let _ = answer.send(Err(Refusal::Failed { reason: format!("invalid database name: {e}") }));
                return;
            }
        };
        if !self.sums.contains_key(&tx.db) {
            let pos = self.node.pos(&db);
            // A dropped database (position at its drop, checksum EMPTY) has no pages either.
            if pos != replite_core::Pos::ZERO && pos.checksum != replite_core::Checksum::EMPTY {
                // Its checksums were not loaded (or disagreed with its position) at promotion:
                // the old page checksums this commit needs are unknown.
                warn!(%db, "no trusted page checksums for this database; commit refused");
                let _ = answer.send(Err(Refusal::Failed { reason: "page checksums unknown".into() }));
                return;
            }
            // A database the cluster has never seen (or dropped) starts empty.
            self.sums.insert(tx.db.clone(), PageSums::empty(tx.page_size));
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
            remote,
            durability: match tx.durability {
                replite_fuse::Durability::Requested => Durability::Requested,
                replite_fuse::Durability::Deferred => Durability::Deferred,
            },
        };
        self.pending.insert(commit, Pending { answer, tx });
        self.node.handle(self.clock.now(), input);
    }

    /// The application unlinked `db`: the Node makes the drop a transaction of its own; the
    /// unlink proceeds once it is durable (`Output::AckCommit`).
    fn on_drop(&mut self, db: &str, answer: Answer) {
        let db = match DbName::new(db) {
            Ok(db) => db,
            Err(e) => {
                let _ = answer.send(Err(Refusal::Failed { reason: format!("invalid database name: {e}") }));
                return;
            }
        };
        self.next_commit += 1;
        let commit = CommitId(self.next_commit);
        info!(%db, "application dropped the database");
        self.pending_drops.insert(commit, (db.clone(), answer));
        self.node.handle(self.clock.now(), Input::DropDb { commit, db });
    }

    /// Answers a drop the Node decided on (`Ok` with the position it committed at); `true` if
    /// `commit` was one.
    fn answer_drop(&mut self, commit: CommitId, verdict: Result<Pos, Refusal>) -> bool {
        let Some((db, answer)) = self.pending_drops.remove(&commit) else { return false };
        if let Ok(pos) = verdict {
            // A database created again under this name starts from no pages.
            let page_size = self.sums.remove(db.as_str()).map_or(DROP_EVENT_PAGE_SIZE, |sums| sums.page_size().get());
            // As LiteFS: a drop is a transaction that leaves no pages.
            self.events.tx(&db, pos, page_size, 0);
        }
        let _ = answer.send(verdict.map(|_| ()));
        true
    }

    fn on_back(&mut self, back: Back) {
        match back {
            Back::Input(input) => self.node.handle(self.clock.now(), input),
            Back::Peer { id, record } => {
                self.peers.insert(id, record);
            }
            Back::Spooled { spool, outcome } => {
                // A spool the Node discarded meanwhile is dropped here (its file deleted).
                if self.spooling.remove(&spool).is_none() {
                    return;
                }
                let result = match outcome {
                    Ok(spooled) => {
                        let verified = spooled.verified;
                        self.spooled.insert(spool, spooled);
                        Ok(verified)
                    }
                    Err(reason) => Err(reason),
                };
                self.node.handle(self.clock.now(), Input::SpoolDone { spool, result });
            }
        }
    }

    fn on_upstream_report(&mut self, report: UpstreamReport) {
        match report {
            UpstreamReport::Opened { conn, ext, outgoing } => {
                // A stream the Node closed meanwhile stays closed.
                let Some(up) = self.upstreams.get_mut(&conn) else { return };
                up.outgoing = Some(outgoing);
                self.node.handle(self.clock.now(), Input::UpstreamOpened { conn, ext });
            }
            UpstreamReport::Input(input) => {
                let conn = match &input {
                    Input::UpstreamData { conn, .. } | Input::UpstreamClosed { conn } => *conn,
                    _ => return,
                };
                if !self.upstreams.contains_key(&conn) {
                    return;
                }
                if matches!(input, Input::UpstreamClosed { .. }) {
                    self.upstreams.remove(&conn);
                }
                self.node.handle(self.clock.now(), input);
            }
        }
    }

    fn on_accepted(&mut self, event: StreamServerEvent) {
        let now = self.clock.now();
        match event {
            StreamServerEvent::Opened(DownstreamConn { id, peer, ext, body, frames, only }) => {
                let (cmds_tx, cmds) = mpsc::unbounded_channel();
                let shared = DownstreamShared {
                    storage: Arc::clone(&self.storage),
                    positions: self.positions_tx.clone(),
                    closed: self.downstream_closed_tx.clone(),
                    transfers: self.transfers.clone(),
                    recent: Arc::clone(&self.recent),
                };
                tokio::spawn(run_downstream(id, cmds, frames, shared));
                self.downstreams.insert(id, cmds_tx);
                info!(peer = %peer, conn = id.0, "replica connected");
                self.node.handle(now, Input::DownstreamOpened { conn: id, peer, ext, body, only });
            }
            StreamServerEvent::Data { id, bytes } => {
                self.node.handle(now, Input::DownstreamData { conn: id, bytes });
            }
            StreamServerEvent::Closed { id } => {
                if self.downstreams.remove(&id).is_some() {
                    info!(conn = id.0, "replica disconnected");
                    self.node.handle(now, Input::DownstreamClosed { conn: id });
                }
            }
        }
    }

    /// The position of `db` whose checksum is `checksum`: the current one, or one retained.
    fn position_with_checksum(&self, db: &DbName, checksum: replite_core::Checksum) -> Option<replite_core::Pos> {
        let current = self.node.pos(db);
        if current.checksum == checksum {
            return Some(current);
        }
        self.node.history(db).and_then(|h| h.position_with_checksum(checksum))
    }

    /// Carries out queued outputs, then publishes what changed.
    fn after_step(&mut self) {
        while let Some(output) = self.node.poll_output() {
            self.execute(output);
        }
        let role = self.node.role();
        if role != self.role {
            self.on_role_change(role);
        }
        if !self.parked.is_empty() && !self.node.handing_off() {
            let verdict = self.may_write(self.clock.now());
            for answer in self.parked.drain(..) {
                let _ = answer.send(verdict.clone());
            }
        }
        let now = self.clock.now();
        if let Some(gate) = &self.gate {
            gate.open_until(self.node.accepting_writes_until(now).map(|until| self.clock.instant_at(until)));
        }
        let mut status = Status::of(&self.node, self.network.as_ref().map(|n| &n.me), &self.peers, now);
        status.snapshots = self
            .transfers
            .snapshot()
            .into_iter()
            .map(|(db, sent, total)| SnapshotProgress {
                db: db.as_str().to_owned(),
                sent_bytes: sent,
                total_bytes: total,
            })
            .collect();
        let changed = self.status.send_if_modified(|old| {
            let changed = *old != status;
            *old = status;
            changed
        });
        if changed && let Some(link) = &self.surface {
            link.show(&self.status.borrow());
        }
        self.answer_acknowledged();
    }

    fn answer_acknowledged(&mut self) {
        for answer in self.acknowledged.drain(..) {
            let _ = answer.send(Ok(()));
        }
    }

    fn on_role_change(&mut self, role: Role) {
        info!(?role, was = ?self.role, "role changed");
        let was_primary = matches!(self.role, Role::Primary { .. });
        let is_primary = matches!(role, Role::Primary { .. });
        if is_primary && !was_primary {
            self.load_page_sums();
        }
        if !is_primary {
            // As a replica it stores other histories' files under the same ranges.
            recent_ltx::lock(&self.recent).clear();
        }
        self.events.role(role, self.primary_hostname(role));
        self.role = role;
    }

    /// Loads every known database's page checksums, keeping only tables that agree with the
    /// Node's position (replication wrote the files since any earlier load).
    fn load_page_sums(&mut self) {
        self.sums.clear();
        let known: Vec<(DbName, replite_core::Pos)> = self.node.positions().map(|(n, p)| (n.clone(), p)).collect();
        for (db, pos) in known {
            match (self.load_sums)(&db) {
                Ok(Some(sums)) if sums.database_checksum() == pos.checksum => {
                    self.sums.insert(db.as_str().to_owned(), sums);
                }
                Ok(None) if pos == replite_core::Pos::ZERO || pos.checksum == replite_core::Checksum::EMPTY => {}
                Ok(other) => {
                    let found = other.map(|s| s.database_checksum());
                    warn!(%db, %pos, ?found, "database file does not match its position; writes to it are refused");
                }
                Err(e) => warn!(%db, error = %e, "reading page checksums failed; writes to it are refused"),
            }
        }
    }

    fn primary_hostname(&self, role: Role) -> Option<String> {
        match role {
            Role::Primary { .. } => self.network.as_ref().map(|n| n.me.hostname.clone()),
            Role::Replica { primary, .. } => self.peers.get(&primary).map(|r| r.hostname.clone()),
            _ => None,
        }
    }

    fn execute(&mut self, output: Output) {
        match output {
            Output::AckCommit { commit, pos, .. } if self.answer_drop(commit, Ok(pos)) => {}
            Output::AckCommit { db, commit, pos } => {
                if let Some(p) = self.pending.remove(&commit) {
                    if let Some(sums) = self.sums.get_mut(db.as_str()) {
                        sums.commit(p.tx.pages.iter().map(|pg| (pg.pgno, pg.data.as_slice())), p.tx.commit);
                    }
                    debug!(%db, %pos, "commit acknowledged");
                    self.events.tx(&db, pos, p.tx.page_size.get(), p.tx.commit);
                    self.acknowledged.push(p.answer);
                }
            }
            Output::RefuseCommit { commit, reason } => {
                let refusal = refusal_for(reason, "commit");
                if let Some(p) = self.pending.remove(&commit) {
                    let _ = p.answer.send(Err(refusal));
                } else {
                    self.answer_drop(commit, Err(refusal));
                }
            }
            Output::HaltHeld { db, result } => {
                let Some(answer) = self.halt_answers.remove(db.as_str()) else { return };
                let verdict = match result {
                    Ok(()) => {
                        info!(%db, "halt lock held: commits go to the primary");
                        Ok(())
                    }
                    Err(refusal) => {
                        self.forget_halt(db.as_str());
                        let reason = match refusal {
                            HaltRefusal::NotAReplica => "this node does not follow a primary".to_owned(),
                            HaltRefusal::NotAtLockPosition { at } => {
                                format!("this replica is at {at}, not at the lock's position")
                            }
                        };
                        Err(Refusal::Failed { reason })
                    }
                };
                let _ = answer.send(verdict);
            }
            Output::SendUnderHalt { commit, db, lock_id, bytes } => self.send_under_halt(commit, &db, lock_id, bytes),
            Output::SyncDone { sync, result } => {
                if let Some(answer) = self.syncs.remove(&sync) {
                    let verdict = result.map_err(|reason| refusal_for(reason, "fsync"));
                    let _ = answer.send(verdict);
                }
            }
            Output::FlushLtx { db, op, through } => {
                let storage = Arc::clone(&self.storage);
                if let Some(jobs) = self.direct_jobs.as_mut() {
                    // The FUSE thread that asked waits for this flush: it fsyncs itself.
                    jobs.push(Box::new(move || {
                        let flushed = flush(storage.as_ref(), op, &db, through);
                        let refill: Afterwards = Box::new(move || storage.refill_spares(&db));
                        (flushed, Some(refill))
                    }));
                    return;
                }
                let back = self.back_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = back.send(Back::Input(flush(storage.as_ref(), op, &db, through)));
                    storage.refill_spares(&db);
                });
            }
            Output::PersistLtx { db, op, min, max, bytes, base, durable, origin } => {
                // A primary's own commit: the pages are already in the database.
                let own_commit = origin == LtxOrigin::OwnCommit;
                if origin == LtxOrigin::HaltEcho {
                    // Sent by this replica under a halt lock: its pages are in the database.
                    let (storage, back) = (Arc::clone(&self.storage), self.back_tx.clone());
                    tokio::task::spawn_blocking(move || {
                        let result = storage.persist_applied(&db, min, max, &bytes, durable);
                        let _ = back.send(Back::Input(Input::LtxDone { op, result }));
                    });
                    return;
                }
                let bytes = Bytes::from(bytes);
                if own_commit {
                    recent_ltx::lock(&self.recent).insert(&db, min, max, bytes.clone());
                }
                if own_commit && !durable && bytes.len() <= INLINE_WRITE_MAX_BYTES {
                    // A deferred commit's small file goes to the page cache in tens of
                    // microseconds: written here, the commit is acknowledged in this same
                    // step, without two thread hand-offs (~0.2 ms on a loaded 2-core machine).
                    let result = self.storage.persist_ltx(&db, min, max, &bytes, false);
                    self.node.handle(self.clock.now(), Input::LtxDone { op, result });
                    return;
                }
                let storage = Arc::clone(&self.storage);
                if own_commit && let Some(jobs) = self.direct_jobs.as_mut() {
                    // The FUSE thread holding this commit writes its file itself.
                    jobs.push(Box::new(move || {
                        let result = storage.persist_ltx(&db, min, max, &bytes, durable);
                        // Durable commits trigger no flush, which is what refills spares
                        // otherwise: without this each would create its file.
                        let refill: Option<Afterwards> =
                            storage.spares_low(&db).then(|| Box::new(move || storage.refill_spares(&db)) as Afterwards);
                        (Input::LtxDone { op, result }, refill)
                    }));
                    return;
                }
                let back = self.back_tx.clone();
                let facts = ltx_header_facts(&bytes);
                let events = self.events.clone();
                if !own_commit
                    && !durable
                    && min != TxId(1)
                    && bytes.len() <= INLINE_WRITE_MAX_BYTES
                    && let Some(jobs) = self.loop_jobs.as_mut()
                {
                    // A small file from the primary: stored and applied by the loop itself
                    // unless a SQLite reader is in the way (two thread hand-offs saved, each
                    // up to milliseconds on a busy 2-core machine: most of a replica's lag).
                    jobs.push(Box::new(move || match storage.persist_and_apply_now(&db, min, max, &bytes, base) {
                        AppliedNow::Done(result) => {
                            if let Ok(pos) = result {
                                events.applied(&db, pos, facts);
                            }
                            Some(Input::LtxDone { op, result })
                        }
                        AppliedNow::Stored => {
                            tokio::task::spawn_blocking(move || {
                                let result = storage.apply_stored(&db, min, max, &bytes, base);
                                if let Ok(pos) = result {
                                    events.applied(&db, pos, facts);
                                }
                                let _ = back.send(Back::Input(Input::LtxDone { op, result }));
                            });
                            None
                        }
                    }));
                    return;
                }
                tokio::task::spawn_blocking(move || {
                    let result = if own_commit {
                        storage.persist_ltx(&db, min, max, &bytes, durable)
                    } else {
                        let applied = storage.persist_and_apply(&db, min, max, &bytes, base, durable);
                        if let Ok(pos) = applied {
                            events.applied(&db, pos, facts);
                        }
                        applied
                    };
                    let _ = back.send(Back::Input(Input::LtxDone { op, result }));
                });
            }
            Output::SpoolBegin { spool, db } => self.begin_spool(spool, &db),
            Output::SpoolWrite { spool, bytes } => {
                if let Some(Some(writer)) = self.spooling.get(&spool)
                    && !writer.write(bytes)
                {
                    // The thread stopped early (a bad file or a disk error) and reports why.
                    self.spooling.insert(spool, None);
                }
            }
            Output::SpoolEnd { spool } => {
                // Dropping the writer ends the file; the thread verifies, fsyncs and reports.
                if let Some(writer) = self.spooling.get_mut(&spool) {
                    *writer = None;
                }
            }
            Output::SpoolDiscard { spool } => {
                self.spooling.remove(&spool);
                self.spooled.remove(&spool);
            }
            Output::PersistSpooledLtx { db, op, spool, min, max, base, origin } => {
                let back = self.back_tx.clone();
                let Some(Spooled { verified, file, image }) = self.spooled.remove(&spool) else {
                    warn!(%db, spool = spool.0, "asked to persist a spool that is not ready");
                    let _ = back.send(Back::Input(Input::LtxDone { op, result: Err(IoFailure::Io) }));
                    return;
                };
                let storage = Arc::clone(&self.storage);
                let events = self.events.clone();
                let facts = TxFacts::of(verified.header());
                let post = verified.post_apply_pos();
                tokio::task::spawn_blocking(move || {
                    if origin == LtxOrigin::HaltEcho {
                        // Sent by this replica under a halt lock: its pages are in the database.
                        let result = storage.persist_spooled_applied(&db, min, max, file, post);
                        let _ = back.send(Back::Input(Input::LtxDone { op, result }));
                        return;
                    }
                    let result = storage.persist_spooled_and_apply(&db, min, max, file, image, base);
                    if let Ok(pos) = result {
                        events.applied(&db, pos, facts);
                    }
                    let _ = back.send(Back::Input(Input::LtxDone { op, result }));
                });
            }
            Output::ReplayLtx { db, op, min, max, base } => {
                let storage = Arc::clone(&self.storage);
                let back = self.back_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let result = storage.replay_ltx(&db, min, max, base);
                    let _ = back.send(Back::Input(Input::LtxDone { op, result }));
                });
            }
            Output::RemoveLtx { db, min, max } => {
                recent_ltx::lock(&self.recent).remove(&db, min, max);
                if let Err(e) = self.storage.remove_ltx(&db, min, max) {
                    warn!(%db, %min, %max, ?e, "removing an LTX file failed");
                }
            }
            Output::PersistRejoin { db, txid } => {
                if let Err(e) = self.storage.persist_rejoin(&db, txid) {
                    warn!(%db, %txid, ?e, "persisting the rejoin TXID failed");
                }
            }
            Output::PersistEpoch { epoch } => {
                if let Err(e) = self.storage.persist_epoch(epoch) {
                    warn!(%epoch, ?e, "persisting the epoch failed");
                }
            }
            Output::AcquireLease { op } => self.lease_task(op, LeaseRequest::Acquire),
            Output::TakeOverLease { op, epoch } => self.lease_task(op, LeaseRequest::TakeOver(epoch)),
            Output::HandOverLease { epoch } => {
                let leaser = Arc::clone(&self.leaser);
                tokio::spawn(async move {
                    if let Err(e) = leaser.lock().await.hand_over(epoch) {
                        warn!(%epoch, %e, "handing the lease over failed");
                    }
                });
            }
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
            Output::Connect { conn, peer, ext, body } => self.connect(conn, peer, ext, body),
            Output::SendUpstream { conn, bytes } => {
                if let Some(outgoing) = self.upstreams.get(&conn).and_then(|up| up.outgoing.as_ref()) {
                    // Acknowledgements are cumulative: one that does not fit is repaired by the next.
                    if outgoing.try_send(Bytes::from(bytes)).is_err() {
                        debug!(conn = conn.0, "acknowledgement dropped: the stream is full or closed");
                    }
                }
            }
            Output::CloseUpstream { conn } => {
                if let Some(up) = self.upstreams.remove(&conn) {
                    up.task.abort();
                }
            }
            Output::SendDownstream { conn, bytes } => self.queue_downstream(conn, DownstreamCmd::Bytes(bytes)),
            Output::StreamLtx { conn, db, min, max } => {
                self.queue_downstream(conn, DownstreamCmd::Ltx { db, min, max })
            }
            Output::StreamSnapshot { conn, db, pos } => {
                self.queue_downstream(conn, DownstreamCmd::Snapshot { db, pos })
            }
            Output::CloseDownstream { conn } => {
                // Dropping the sender lets the task finish what is queued, then end the stream.
                self.downstreams.remove(&conn);
            }
            Output::RequestHandoff { primary, to } => self.request_handoff(primary, to),
            Output::Event(event) => {
                // Trouble an operator should see without debug logging: resyncs (a replica
                // that keeps failing the same file or snapshot), disk failures, sync stalls.
                match &event {
                    replite_core::node::Event::Resync { .. }
                    | replite_core::node::Event::DiskFailed { .. }
                    | replite_core::node::Event::SyncStalled { .. }
                    | replite_core::node::Event::SyncDegraded { .. }
                    | replite_core::node::Event::ReplicaCutOff { .. }
                    | replite_core::node::Event::SnapshotRepeated { .. }
                    | replite_core::node::Event::SnapshotHeldOff { .. } => warn!(?event, "node event"),
                    _ => info!(?event, "node event"),
                }
                self.events.node_event(&event);
            }
        }
    }

    /// Creates the spool file and starts its writing thread; a failure is reported to the
    /// Node as a failed spool (it resyncs).
    fn begin_spool(&mut self, spool: SpoolId, db: &DbName) {
        let back = self.back_tx.clone();
        let storage = Arc::clone(&self.storage);
        let image_db = db.clone();
        let make_image: MakeImage = Box::new(move || storage.create_image(&image_db));
        let started = self.storage.create_spool(db).and_then(|file| {
            SpoolWriter::start(spool, file, make_image, move |spool, outcome| {
                let _ = back.send(Back::Spooled { spool, outcome });
            })
        });
        match started {
            Ok(writer) => {
                debug!(%db, spool = spool.0, "spooling an LTX file too big to hold in memory");
                self.spooling.insert(spool, Some(writer));
            }
            Err(e) => {
                warn!(%db, error = %e, "cannot create a spool file");
                self.spooling.insert(spool, None);
                let _ =
                    self.back_tx.send(Back::Spooled { spool, outcome: Err(format!("creating the spool file: {e}")) });
            }
        }
    }

    fn queue_downstream(&mut self, conn: DownstreamId, cmd: DownstreamCmd) {
        if let Some(cmds) = self.downstreams.get(&conn)
            && cmds.send(cmd).is_err()
        {
            self.downstreams.remove(&conn);
        }
    }

    fn connect(&mut self, conn: UpstreamId, peer: NodeId, ext: replite_core::stream::Extensions, body: Vec<u8>) {
        let (Some(network), Some(record)) = (self.network.as_ref(), self.peers.get(&peer)) else {
            debug!(%peer, "no address known for the primary; not connecting");
            self.node.handle(self.clock.now(), Input::UpstreamClosed { conn });
            return;
        };
        let me = network.me.node_id.unwrap_or(self.node.id());
        let url = record.advertise_url.clone();
        info!(%peer, %url, "connecting to the primary");
        let task = tokio::spawn(run_upstream(conn, url, me, ext, body, self.upstream_reports_tx.clone()));
        self.upstreams.insert(conn, UpstreamTask { task: task.abort_handle(), outgoing: None });
    }

    fn request_handoff(&self, primary: NodeId, to: NodeId) {
        let Some(record) = self.peers.get(&primary) else {
            warn!(%primary, "no address known for the primary; cannot ask it to hand off");
            return;
        };
        let url = format!("{}/handoff?nodeID={to}", record.advertise_url.trim_end_matches('/'));
        tokio::spawn(async move {
            match crate::api::post(&url).await {
                Ok(()) => info!(%url, "asked the primary to hand off"),
                Err(e) => warn!(%url, error = %e, "asking the primary to hand off failed"),
            }
        });
    }

    fn lease_task(&self, op: OpId, request: LeaseRequest) {
        let leaser = Arc::clone(&self.leaser);
        let back = self.back_tx.clone();
        tokio::spawn(async move {
            let mut leaser = leaser.lock().await;
            let seen = |record: &LeaseRecord| {
                let id = record.node_id.unwrap_or(NodeId(0));
                let _ = back.send(Back::Peer { id, record: record.clone() });
                id
            };
            let input = match request {
                LeaseRequest::Acquire | LeaseRequest::TakeOver(_) => {
                    let outcome = match request {
                        LeaseRequest::TakeOver(from) => leaser.take_over(from).await,
                        _ => leaser.acquire().await,
                    };
                    match outcome {
                        Ok(AcquireOutcome::Acquired { epoch, lease_id, .. }) => {
                            Input::LeaseAcquired { op, epoch, lease_id }
                        }
                        Ok(AcquireOutcome::Held { holder, epoch }) => {
                            Input::LeaseHeld { op, holder: seen(&holder), epoch }
                        }
                        Err(e) => {
                            warn!(%e, "lease acquire failed");
                            Input::LeaseRequestFailed { op }
                        }
                    }
                }
                LeaseRequest::Renew(epoch) => match leaser.renew(epoch).await {
                    Ok(true) => Input::LeaseRenewed { op },
                    Ok(false) => Input::LeaseLost { op },
                    Err(e) => {
                        warn!(%e, "lease renew failed");
                        Input::LeaseRequestFailed { op }
                    }
                },
                LeaseRequest::Observe => match leaser.observe().await {
                    Ok(holder) => {
                        Input::LeaseObserved { op, holder: holder.map(|(record, epoch)| (seen(&record), epoch)) }
                    }
                    Err(e) => {
                        warn!(%e, "lease observe failed");
                        Input::LeaseRequestFailed { op }
                    }
                },
            };
            let _ = back.send(Back::Input(input));
        });
    }
}

/// Blocking I/O a step on a FUSE thread asked for, carried out by that thread after the step
/// (outside the driver's lock): its result for the Node, and work to start afterwards off the
/// thread's way (refilling spare files after a flush).
pub(crate) type DirectJob = Box<dyn FnOnce() -> (Input, Option<Afterwards>) + Send>;

/// Work the loop does after a step, outside the driver's lock: an input for the Node, or
/// `None` when the work went on to a task that reports back itself.
pub(crate) type LoopJob = Box<dyn FnOnce() -> Option<Input> + Send>;

/// Loop steps in a row whose replicated files the loop applies itself; then one goes to
/// blocking tasks, so that a replica catching up on many small files still serves its
/// timers and other inputs between them.
const MAX_INLINE_APPLY_ROUNDS: u32 = 8;

/// Work a [`DirectJob`] leaves for a blocking task once its result is in.
pub(crate) type Afterwards = Box<dyn FnOnce() + Send>;

/// Makes `db`'s files up to `through` durable; the Node's input saying how it went.
fn flush(storage: &dyn Storage, op: OpId, db: &DbName, through: TxId) -> Input {
    let result = storage.flush_ltx(db, through);
    debug!(%db, %through, ok = result.is_ok(), "flushed LTX files");
    Input::LtxFlushed { op, result }
}

/// Locks a driver shared with FUSE threads. A panic while it was held poisons the lock; the
/// Node's state is still whole (each input is handled entirely or not at all).
pub(crate) fn lock(driver: &std::sync::Mutex<Driver>) -> std::sync::MutexGuard<'_, Driver> {
    driver.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Feeds the Node its shutdown and carries out what follows, waiting (bounded) for the
/// lease release so the next primary need not wait out the TTL.
async fn shut_down(driver: &std::sync::Mutex<Driver>) {
    let releases = {
        let mut d = lock(driver);
        let now = d.clock.now();
        d.node.handle(now, Input::Shutdown);
        let mut releases = Vec::new();
        while let Some(output) = d.node.poll_output() {
            if let Output::FlushLtx { db, op, through } = output {
                // Shutting down: flush here and now, so a clean stop leaves nothing unflushed.
                let result = d.storage.flush_ltx(&db, through);
                let now = d.clock.now();
                d.node.handle(now, Input::LtxFlushed { op, result });
            } else if let Output::ReleaseLease { epoch } = output {
                let leaser = Arc::clone(&d.leaser);
                releases.push(async move {
                    if let Err(e) = leaser.lock().await.release(epoch).await {
                        warn!(%epoch, %e, "releasing the lease failed; it expires by itself");
                    }
                });
            } else {
                d.execute(output);
            }
        }
        releases
    };
    let all = futures_util::future::join_all(releases);
    if tokio::time::timeout(RELEASE_TIMEOUT, all).await.is_err() {
        warn!("releasing the lease timed out; it expires by itself");
    }
    // The status thread may be switching the mount's role for the last status (it looks
    // files up through the mount): it must finish before the daemon unmounts, or its lookup
    // waits for a FUSE loop that is gone and the process can never exit.
    let finished = {
        let mut d = lock(driver);
        d.after_step();
        for (_, up) in std::mem::take(&mut d.upstreams) {
            up.task.abort();
        }
        d.downstreams.clear();
        d.events.close();
        d.surface.take().map(|SurfaceLink { roles, finished, .. }| {
            drop(roles);
            finished
        })
    };
    if let Some(finished) = finished {
        let _ = tokio::task::spawn_blocking(move || finished.recv_timeout(SURFACE_FINISH_TIMEOUT)).await;
    }
}

/// How long a stopping driver waits for the status thread's last role switch.
const SURFACE_FINISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest deferred commit whose LTX file the driver writes on its own task (no fsync: a
/// page-cache copy); larger ones go to a blocking task like every durable write.
const INLINE_WRITE_MAX_BYTES: usize = 256 * 1024;

/// How long a clean shutdown waits for the lease store to confirm the release.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the filesystem tells SQLite for a refused commit or fsync.
fn refusal_for(reason: RefuseReason, what: &str) -> Refusal {
    let reason_text = format!("{what} refused: {reason:?}");
    match reason {
        RefuseReason::Disk | RefuseReason::Invalid => Refusal::Failed { reason: reason_text },
        RefuseReason::Moved => Refusal::Failed {
            reason: format!("{what} refused: the database is no longer at the position it was made on"),
        },
        RefuseReason::NoSpace => Refusal::NoSpace { reason: reason_text },
        RefuseReason::NotPrimary | RefuseReason::Busy | RefuseReason::AsyncWindow => {
            Refusal::ReadOnly { reason: reason_text }
        }
        RefuseReason::PrimaryRefused => {
            Refusal::ReadOnly { reason: format!("{what} refused by the primary (under a halt lock)") }
        }
    }
}

enum LeaseRequest {
    Acquire,
    TakeOver(Epoch),
    Renew(Epoch),
    Observe,
}

/// How long a transaction sent under a halt lock waits for the primary's answer: well inside
/// the commit's own wait (`COMMIT_ANSWER_TIMEOUT`), so that the verdict always reaches the
/// Node while SQLite still waits for it. Were the commit's wait to end first, SQLite would
/// roll the pages back and a late success would then be acknowledged on top of them.
const HALT_TX_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(crate::driver::COMMIT_ANSWER_TIMEOUT.as_secs() / 2);

/// The page size a drop's `tx` event names when this node never loaded the database's pages
/// (the Node's drop file says the same then).
const DROP_EVENT_PAGE_SIZE: u32 = 4096;

/// What an LTX file's header states, for events; zeros if unreadable (the store verifies the
/// whole file before anything is applied).
fn ltx_header_facts(bytes: &[u8]) -> TxFacts {
    let header = bytes.get(..HEADER_SIZE).and_then(|b| <&[u8; HEADER_SIZE]>::try_from(b).ok());
    header.and_then(|h| Header::decode(h).ok()).map_or_else(TxFacts::default, |h| TxFacts::of(&h))
}
