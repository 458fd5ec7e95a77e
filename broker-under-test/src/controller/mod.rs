//! The controller: a Raft group (openraft) over the voters, inside the
//! brokers. It holds the `ClusterState` (brokers, topics, leaders, leader
//! epochs, ISRs, committed group offsets); every change is a Raft log entry,
//! fsynced on a majority before it applies.
//!
//! Input: proposals (`propose`) from this broker's handlers, heartbeats from
//! every broker. Output: the applied state (`applied`, with a version watch
//! the replica manager follows).
//!
//! Liveness: each broker heartbeats the Raft leader every `lease / 6`; the
//! leader keeps the leases in memory and, when one expires, proposes
//! `Fence` for that broker incarnation, which moves its leaderships to ISR
//! members. A new Raft leader starts every lease afresh. Without
//! `--voters` the broker is a single voter and needs no controller port.

pub mod network;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::net::{TcpListener, TcpStream};

use network::{call_once, read_frame, write_frame, HeartbeatReply, Request, Response, WriteError};
use state::{Command, Reply};
use store::{Applied, LogStore, StateMachine};

openraft::declare_raft_types!(
    /// The controller's Raft types.
    pub TypeConfig: D = Command, R = Reply, SnapshotData = std::io::Cursor<Vec<u8>>
);

/// How long a proposal may wait for a Raft leader and a commit.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub id: i32,
    /// Voter id -> controller address; just this broker when alone.
    pub voters: BTreeMap<u64, String>,
    pub listen: Option<std::net::SocketAddr>,
    pub dir: std::path::PathBuf,
    pub lease: Duration,
}

/// This voter's controller.
pub struct Controller {
    pub id: i32,
    raft: Raft<TypeConfig>,
    pub applied: Arc<Applied>,
    voters: BTreeMap<u64, String>,
    lease: Duration,
    /// Leases of brokers, kept while this voter is the Raft leader.
    leases: Mutex<HashMap<i32, Instant>>,
    /// This broker's current registration epoch (-1: not registered).
    registered: AtomicI64,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("id", &self.id)
            .field("voters", &self.voters)
            .finish()
    }
}

impl Controller {
    /// Opens the Raft storage, starts Raft and (with peers) the listener.
    pub async fn start(config: ControllerConfig) -> Result<Arc<Controller>, String> {
        let log = LogStore::open(&config.dir)?;
        let sm = StateMachine::open(&config.dir)?;
        let applied = sm.applied.clone();
        let raft_config = openraft::Config {
            cluster_name: "unlost".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("controller config: {e}"))?;
        let listener = match config.listen {
            Some(addr) if config.voters.len() > 1 => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (--controller-listen): {e}"))?,
            ),
            _ => None,
        };
        let raft = Raft::new(
            config.id as u64,
            Arc::new(raft_config),
            network::Factory,
            log,
            sm,
        )
        .await
        .map_err(|e| format!("start controller: {e}"))?;
        let controller = Arc::new(Controller {
            id: config.id,
            raft,
            applied,
            voters: config.voters.clone(),
            lease: config.lease,
            leases: Mutex::new(HashMap::new()),
            registered: AtomicI64::new(-1),
        });
        if let Some(listener) = listener {
            tokio::spawn(serve(controller.clone(), listener));
        }
        let initialized = controller
            .raft
            .is_initialized()
            .await
            .map_err(|e| format!("controller: {e}"))?;
        if !initialized {
            // Every voter initializes with the same membership; that is safe
            // (they write the same first entry) and needs no extra step.
            let members: BTreeMap<u64, BasicNode> = config
                .voters
                .iter()
                .map(|(&id, addr)| (id, BasicNode { addr: addr.clone() }))
                .collect();
            if let Err(e) = controller.raft.initialize(members).await {
                tracing::debug!("controller initialize: {e}");
            }
        }
        tokio::spawn(lease_task(Arc::downgrade(&controller)));
        Ok(controller)
    }

    /// The current Raft leader, if known.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// This broker's registration epoch, once registered.
    pub fn registered_epoch(&self) -> Option<i64> {
        let e = self.registered.load(Ordering::SeqCst);
        (e >= 0).then_some(e)
    }

    /// Whether this voter is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id as u64)
    }

    /// Waits until this voter (if leader) has applied everything committed
    /// before now, so reads of `applied` are linearizable.
    pub async fn read_barrier(&self) -> Result<(), String> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Proposes a command and waits for its reply, forwarding to the Raft
    /// leader; retries through elections until `PROPOSE_TIMEOUT`.
    pub async fn propose(&self, cmd: Command) -> Result<Reply, String> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut last_error = "no controller leader".to_string();
        while Instant::now() < deadline {
            match self.leader() {
                Some(l) if l == self.id as u64 => match self.raft.client_write(cmd.clone()).await {
                    Ok(r) => return Ok(r.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                    Err(e) => last_error = e.to_string(),
                },
                Some(l) => {
                    let addr = self.voters.get(&l).cloned().unwrap_or_default();
                    let left = deadline.saturating_duration_since(Instant::now());
                    match call_once(&addr, &Request::Write(cmd.clone()), left).await {
                        Ok(Response::Write(Ok(r))) => return Ok(r),
                        Ok(Response::Write(Err(WriteError::Failed(e)))) => last_error = e,
                        Ok(Response::Write(Err(WriteError::NotLeader(_)))) => {}
                        Ok(_) => last_error = format!("{addr}: unexpected answer"),
                        Err(e) => last_error = e,
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("controller: {last_error}"))
    }

    /// Sends this broker's heartbeat to the Raft leader.
    async fn heartbeat(&self, epoch: i64) -> Result<HeartbeatReply, String> {
        match self.leader() {
            None => Ok(HeartbeatReply::NotLeader(None)),
            Some(l) if l == self.id as u64 => Ok(self.on_heartbeat(self.id, epoch)),
            Some(l) => {
                let addr = self.voters.get(&l).cloned().unwrap_or_default();
                match call_once(
                    &addr,
                    &Request::Heartbeat { id: self.id, epoch },
                    self.lease / 2,
                )
                .await?
                {
                    Response::Heartbeat(r) => Ok(r),
                    _ => Err(format!("{addr}: unexpected answer")),
                }
            }
        }
    }

    /// The leader's side of a heartbeat.
    fn on_heartbeat(&self, id: i32, epoch: i64) -> HeartbeatReply {
        if !self.is_leader() {
            return HeartbeatReply::NotLeader(self.leader());
        }
        let current = self
            .applied
            .read(|s| s.brokers.get(&id).map(|b| (b.epoch, b.fenced)));
        match current {
            Some((e, false)) if e == epoch => {
                self.leases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, Instant::now());
                HeartbeatReply::Ok
            }
            _ => HeartbeatReply::Register,
        }
    }

    /// Resolves when this voter's Raft core has stopped for good: openraft
    /// treats a storage error (EIO from the disk) as fatal. A broker whose
    /// controller is dead cannot register, heartbeat or change an ISR, so
    /// it must stop too (fail-stop) rather than linger half alive.
    pub async fn stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "the Raft core is gone".into();
            }
        }
    }

    /// Registers this broker and keeps its lease alive, re-registering when
    /// the controller fenced it. Runs until the process ends.
    pub async fn keep_registered(self: Arc<Self>, host: String, port: i32) {
        let interval = self.lease / 6;
        let mut epoch: Option<i64> = None;
        loop {
            match epoch {
                None => {
                    let cmd = Command::Register {
                        id: self.id,
                        host: host.clone(),
                        port,
                    };
                    match self.propose(cmd).await {
                        Ok(Reply::Registered { epoch: e }) => {
                            tracing::debug!(id = self.id, epoch = e, "registration committed");
                            epoch = Some(e);
                            self.registered.store(e, Ordering::SeqCst);
                            // Wake the replica manager: it acts on this epoch.
                            self.applied.version.send_modify(|v| *v += 1);
                        }
                        Ok(r) => tracing::warn!("register: unexpected reply {r:?}"),
                        Err(e) => tracing::warn!("register: {e}"),
                    }
                }
                Some(e) => match self.heartbeat(e).await {
                    Ok(HeartbeatReply::Register) => {
                        tracing::warn!(
                            id = self.id,
                            epoch = e,
                            "fenced by the controller; registering again"
                        );
                        epoch = None;
                        self.registered.store(-1, Ordering::SeqCst);
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::debug!("heartbeat: {err}"),
                },
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// On the Raft leader: fences brokers whose lease expired.
async fn lease_task(controller: std::sync::Weak<Controller>) {
    let mut was_leader = false;
    let mut last_tick = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(c) = controller.upgrade() else {
            return;
        };
        let leader = c.is_leader();
        // This process was stopped (SIGSTOP) or starved: the silence was
        // ours, not the brokers'. Judge leases afresh, as a new leader does.
        let stalled = last_tick.elapsed() > c.lease / 3;
        last_tick = Instant::now();
        if leader && (!was_leader || stalled) {
            // A new leader does not know when brokers last called: give
            // every broker half a lease to find it (they call every sixth).
            let start = Instant::now()
                .checked_sub(c.lease / 2)
                .unwrap_or_else(Instant::now);
            let ids: Vec<i32> = c.applied.read(|s| s.brokers.keys().copied().collect());
            let mut leases = c.leases.lock().unwrap_or_else(|e| e.into_inner());
            leases.clear();
            leases.extend(ids.into_iter().map(|id| (id, start)));
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        let brokers: Vec<(i32, i64)> = c.applied.read(|s| {
            s.brokers
                .iter()
                .filter(|(_, b)| !b.fenced)
                .map(|(&id, b)| (id, b.epoch))
                .collect()
        });
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut leases = c.leases.lock().unwrap_or_else(|e| e.into_inner());
            for (id, epoch) in brokers {
                let last = *leases.entry(id).or_insert(now);
                if now.duration_since(last) > c.lease {
                    // Not again before another lease period.
                    leases.insert(id, now);
                    expired.push((id, epoch));
                }
            }
        }
        for (id, epoch) in expired {
            tracing::warn!(broker = id, epoch, "broker lease expired; fencing it");
            let c2 = c.clone();
            tokio::spawn(async move {
                if let Err(e) = c2.propose(Command::Fence { id, epoch }).await {
                    tracing::warn!(broker = id, "fence: {e}");
                }
            });
        }
    }
}

/// Serves other voters' requests.
async fn serve(controller: Arc<Controller>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("controller accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let c = controller.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(c, stream).await {
                tracing::debug!("controller connection: {e}");
            }
        });
    }
}

async fn serve_conn(c: Arc<Controller>, mut stream: TcpStream) -> std::io::Result<()> {
    while let Some(req) = read_frame::<Request>(&mut stream).await? {
        let resp = match req {
            Request::AppendEntries(r) => Response::AppendEntries(c.raft.append_entries(r).await),
            Request::Vote(r) => Response::Vote(c.raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Response::InstallSnapshot(c.raft.install_snapshot(r).await)
            }
            Request::Heartbeat { id, epoch } => Response::Heartbeat(c.on_heartbeat(id, epoch)),
            Request::Write(cmd) => Response::Write(match c.raft.client_write(cmd).await {
                Ok(r) => Ok(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(WriteError::NotLeader(f.leader_id))
                }
                Err(e) => Err(WriteError::Failed(e.to_string())),
            }),
        };
        write_frame(&mut stream, &resp).await?;
    }
    Ok(())
}
