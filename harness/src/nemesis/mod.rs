//! The nemesis: injects the plan's faults on schedule and undoes them.
//!
//! Input: the timeline (from `schedule`), the cluster and the consumers.
//! Output: fault-start / fault-end events in the history. Every fault has
//! an inverse (kill/restart, pause/resume) applied after its hold, or at
//! the end-of-run heal; restart and consumer-crash complete at once.

pub mod network;
pub mod schedule;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::{Cluster, NodeState};
use crate::draw::Draw;
use crate::history::{EventKind, History};
use crate::plan::value::Shape;
use crate::plan::{FaultAction, FaultKind, Target};
use crate::workload::consumer::Consumers;
use schedule::Planned;

/// What the nemesis could not do to the network.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    /// nft is not installed (exit 3).
    #[error("this machine lacks nft: {0}: apt-get install nftables")]
    NoNft(String),
    /// nft refused or failed (exit 4).
    #[error("nft {command}: {reason}")]
    Nft { command: String, reason: String },
    /// A fault on a node failed (its own exit code).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// This machine lacks what a fault needs (exit 3).
    #[error("this machine lacks {what}: {hint}")]
    Missing { what: String, hint: String },
}

impl NemesisError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            NemesisError::NoNft(_) | NemesisError::Missing { .. } => crate::exit::CAPABILITY,
            NemesisError::Nft { .. } => crate::exit::HARNESS,
            NemesisError::Cluster(e) => e.exit_code(),
        }
    }
}

/// A fault whose inverse is still due.
#[derive(Debug, Clone)]
struct Active {
    id: u32,
    kind: FaultKind,
    nodes: Vec<u32>,
    until: Option<Instant>,
}

/// Faults currently in effect, for the status line.
pub type ActiveFaults = Arc<Mutex<Vec<String>>>;

/// Injects and heals faults.
pub struct Nemesis {
    cluster: Arc<Mutex<Cluster>>,
    history: History,
    consumers: Consumers,
    topic: String,
    partitions: i32,
    draw: Draw,
    next_id: u32,
    active: Vec<Active>,
    pub shown: ActiveFaults,
    /// Where partitions and packet loss are applied.
    links: Arc<dyn network::Links>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

impl Nemesis {
    /// A nemesis for this run.
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        history: History,
        consumers: Consumers,
        topic: String,
        partitions: i32,
        seed: u64,
    ) -> Self {
        Nemesis {
            cluster,
            history,
            consumers,
            topic,
            partitions,
            draw: Draw::new(seed, "targets"),
            next_id: 0,
            active: Vec::new(),
            shown: Arc::new(Mutex::new(Vec::new())),
            links: Arc::new(network::LocalNft),
        }
    }

    /// Applies network faults through `links` instead of local nft rules
    /// (the network half of a node placement other than local hosts).
    pub fn with_links(mut self, links: Arc<dyn network::Links>) -> Self {
        self.links = links;
        self
    }

    /// Runs the timeline from `start` until `end`, applying inverses as they fall due.
    pub async fn run(
        &mut self,
        timeline: Vec<Planned>,
        start: Instant,
        end: Instant,
    ) -> Result<(), NemesisError> {
        for p in timeline {
            let at = start + p.at;
            self.inverses_until(at).await?;
            tokio::time::sleep_until(at).await;
            self.apply(&p).await?;
        }
        self.inverses_until(end).await
    }

    async fn inverses_until(&mut self, t: Instant) -> Result<(), NemesisError> {
        loop {
            let due = self
                .active
                .iter()
                .filter_map(|a| a.until.filter(|u| *u <= t).map(|u| (u, a.id)))
                .min();
            let Some((when, id)) = due else { return Ok(()) };
            tokio::time::sleep_until(when).await;
            let i = self.active.iter().position(|a| a.id == id).expect("listed");
            let a = self.active.remove(i);
            self.undo(a).await?;
        }
    }

    fn all_nodes(&self) -> Vec<u32> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner()).ids()
    }

    async fn resolve(&mut self, target: &Target) -> (Vec<u32>, String) {
        let nodes = self.all_nodes();
        let n = nodes.len();
        let subset = |draw: &mut Draw, k: usize| -> Vec<u32> {
            let mut pool = nodes.clone();
            let mut out = Vec::new();
            for _ in 0..k.min(pool.len()) {
                let i = draw.value(0..pool.len());
                out.push(pool.remove(i));
            }
            out.sort_unstable();
            out
        };
        match target {
            Target::All => (nodes.clone(), "all".into()),
            Target::Nodes(ids) => (ids.clone(), format!("nodes {ids:?}")),
            Target::Random => (subset(&mut self.draw, 1), "random".into()),
            Target::Minority => (subset(&mut self.draw, (n - 1) / 2), "minority".into()),
            Target::Majority => (subset(&mut self.draw, n / 2 + 1), "majority".into()),
            Target::Leader(p) | Target::Follower(p) => {
                let partition = p.unwrap_or_else(|| self.draw.value(0..self.partitions));
                let (driver, running) = {
                    let c = self.cluster.lock().unwrap_or_else(|e| e.into_inner());
                    let running: BTreeSet<u32> = c
                        .nodes
                        .iter()
                        .filter(|n| n.state == NodeState::Running)
                        .map(|n| n.id)
                        .collect();
                    (c.driver(), running)
                };
                let topic = self.topic.clone();
                let layout = blocking(move || driver.layout(&topic, Duration::from_secs(5))).await;
                let leader = layout
                    .as_ref()
                    .ok()
                    .and_then(|l| l.leaders.get(&partition).copied())
                    .filter(|l| *l >= 0);
                match (target, leader) {
                    (Target::Leader(_), Some(l)) => {
                        (vec![l as u32], format!("leader of partition {partition}"))
                    }
                    (Target::Follower(_), Some(l)) => {
                        let followers: Vec<u32> = layout
                            .ok()
                            .and_then(|lay| lay.replicas.get(&partition).cloned())
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|r| *r != l)
                            .map(|r| r as u32)
                            // A follower a fault can still act on: not one
                            // that another fault holds down or paused.
                            .filter(|r| running.contains(r))
                            .collect();
                        if followers.is_empty() {
                            (
                                Vec::new(),
                                format!("no running follower of partition {partition}"),
                            )
                        } else {
                            let i = self.draw.value(0..followers.len());
                            (
                                vec![followers[i]],
                                format!("follower of partition {partition}"),
                            )
                        }
                    }
                    _ => (
                        Vec::new(),
                        format!("partition {partition} has no leader now"),
                    ),
                }
            }
        }
    }

    /// The leader of a partition (given, or drawn) and its other replicas;
    /// Err says why there are none.
    async fn replicas_of(&mut self, part: Option<i32>) -> Result<(u32, Vec<u32>), String> {
        let partition = part.unwrap_or_else(|| self.draw.value(0..self.partitions));
        let driver = self
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .driver();
        let topic = self.topic.clone();
        let layout = blocking(move || driver.layout(&topic, Duration::from_secs(5)))
            .await
            .map_err(|e| format!("no layout of partition {partition}: {e}"))?;
        let leader = layout
            .leaders
            .get(&partition)
            .copied()
            .filter(|l| *l >= 0)
            .ok_or_else(|| format!("partition {partition} has no leader now"))?;
        let followers: Vec<u32> = layout
            .replicas
            .get(&partition)
            .into_iter()
            .flatten()
            .filter(|r| **r != leader)
            .map(|r| *r as u32)
            .collect();
        if followers.is_empty() {
            return Err(format!("partition {partition} has no follower"));
        }
        Ok((leader as u32, followers))
    }

    /// A due fault that had nothing to act on: recorded, so that a plan
    /// fault that never acts leaves the verdict unknown.
    fn skipped(&self, p: &Planned, reason: String) {
        self.history.record(
            "nemesis",
            EventKind::FaultSkipped {
                fault: p.action.kind.name().into(),
                line: p.line,
                reason,
            },
        );
    }

    /// A consumer-crash fault: crashes that many consumers mid-batch.
    fn crash_consumers(&mut self, id: u32, p: &Planned, consumers: u32) {
        let name = p.action.kind.name();
        let crashed = self.consumers.crash(consumers as usize, &mut self.draw);
        if crashed.is_empty() {
            self.skipped(p, "no consumer was running".into());
            return;
        }
        self.history.record(
            "nemesis",
            EventKind::FaultStart {
                id,
                fault: name.into(),
                targets: vec![],
                detail: format!("consumers {crashed:?}"),
                line: Some(p.line),
            },
        );
        self.history.record(
            "nemesis",
            EventKind::FaultEnd {
                id,
                fault: name.into(),
                targets: vec![],
            },
        );
    }

    async fn apply(&mut self, p: &Planned) -> Result<(), NemesisError> {
        self.next_id += 1;
        let id = self.next_id;
        let FaultAction {
            kind,
            target,
            consumers,
        } = &p.action;
        let name = kind.name();
        if matches!(
            kind,
            FaultKind::Partition { .. } | FaultKind::PacketLoss { .. }
        ) {
            return self.apply_network(id, p).await;
        }
        if *kind == FaultKind::ConsumerCrash {
            self.crash_consumers(id, p, *consumers);
            return Ok(());
        }
        let (nodes, detail) = self.resolve(target).await;
        if nodes.is_empty() {
            self.skipped(p, detail);
            return Ok(());
        }
        self.history.record(
            "nemesis",
            EventKind::FaultStart {
                id,
                fault: name.into(),
                targets: nodes.clone(),
                detail,
                line: Some(p.line),
            },
        );
        let cluster = self.cluster.clone();
        let (k, ns) = (kind.clone(), nodes.clone());
        let mut pick = Draw::new(self.draw.value(0u64..u64::MAX), "pick");
        let outcome = blocking(move || {
            let mut c = cluster.lock().unwrap_or_else(|e| e.into_inner());
            on_nodes(&mut c, &k, ns, &mut pick)
        })
        .await?;
        for note in outcome {
            self.history.record(
                "nemesis",
                EventKind::Note {
                    message: format!("{name}#{id} {note}"),
                },
            );
        }
        match kind {
            FaultKind::Kill
            | FaultKind::Pause
            | FaultKind::PowerLoss { .. }
            | FaultKind::DiskError => {
                let until = p.hold.map(|h| Instant::now() + h);
                self.active.push(Active {
                    id,
                    kind: kind.clone(),
                    nodes,
                    until,
                });
                self.show();
            }
            _ => self.history.record(
                "nemesis",
                EventKind::FaultEnd {
                    id,
                    fault: name.into(),
                    targets: nodes,
                },
            ),
        }
        Ok(())
    }

    /// Partitions and packet loss: a cut installed as one nft table.
    async fn apply_network(&mut self, id: u32, p: &Planned) -> Result<(), NemesisError> {
        let kind = &p.action.kind;
        let name = kind.name();
        let all = self.all_nodes();
        let cut = match kind {
            FaultKind::Partition { shape, clients } => {
                let shape = match shape {
                    Shape::IsolateLeader(part) => {
                        let (leader, why) = self.resolve(&Target::Leader(*part)).await;
                        if leader.is_empty() {
                            self.skipped(p, why);
                            return Ok(());
                        }
                        Shape::Isolate(leader)
                    }
                    Shape::LeaderFromFollowers(part) => match self.replicas_of(*part).await {
                        Ok((leader, followers)) => Shape::Apart(vec![leader], followers),
                        Err(why) => {
                            self.skipped(p, why);
                            return Ok(());
                        }
                    },
                    other => other.clone(),
                };
                network::cut(&shape, &all, *clients, &mut self.draw)
            }
            FaultKind::PacketLoss { percent, clients } => {
                let (nodes, _) = self.resolve(&p.action.target).await;
                let mut cut = network::loss(&nodes, *percent);
                if *clients {
                    cut.clients = nodes;
                }
                cut
            }
            _ => unreachable!("only network faults come here"),
        };
        let mut targets: Vec<u32> = cut
            .pairs
            .iter()
            .flat_map(|(a, b)| [*a, *b])
            .chain(cut.clients.iter().copied())
            .collect();
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            self.skipped(p, format!("the cut {} drops nothing", cut.describe()));
            return Ok(());
        }
        self.history.record(
            "nemesis",
            EventKind::FaultStart {
                id,
                fault: name.into(),
                targets: targets.clone(),
                detail: cut.describe(),
                line: Some(p.line),
            },
        );
        let links = self.links.clone();
        blocking(move || links.cut(id, &cut)).await?;
        let until = p.hold.map(|h| Instant::now() + h);
        self.active.push(Active {
            id,
            kind: kind.clone(),
            nodes: targets,
            until,
        });
        self.show();
        Ok(())
    }

    async fn undo(&mut self, a: Active) -> Result<(), NemesisError> {
        let cluster = self.cluster.clone();
        let (k, ns) = (a.kind.clone(), a.nodes.clone());
        // A node hit by two overlapping faults is only brought back when the
        // last of them ends.
        let still: BTreeSet<u32> = self
            .active
            .iter()
            .filter(|x| x.kind == a.kind)
            .flat_map(|x| x.nodes.clone())
            .collect();
        if matches!(
            a.kind,
            FaultKind::Partition { .. } | FaultKind::PacketLoss { .. }
        ) {
            let id = a.id;
            let links = self.links.clone();
            blocking(move || links.heal(id)).await?;
        }
        type Undone = (Vec<String>, Vec<u32>);
        let (down, revived) = blocking(move || -> Result<Undone, NemesisError> {
            let mut c = cluster.lock().unwrap_or_else(|e| e.into_inner());
            let (mut down, mut revived) = (Vec::new(), Vec::new());
            let back: Vec<u32> = ns.into_iter().filter(|n| !still.contains(n)).collect();
            if matches!(k, FaultKind::Kill | FaultKind::PowerLoss { .. }) {
                // All at once: nodes may need each other to start.
                down.extend(c.restart_all_or_report(&back)?);
            }
            for id in back {
                match k {
                    FaultKind::Pause => c.resume(id)?,
                    FaultKind::DiskError => {
                        c.disk_error(id, false)?;
                        // A broker that stopped on the failing disk is
                        // started again once the disk works, as a
                        // supervisor would.
                        if c.exited(id)? {
                            revived.push(id);
                            down.extend(c.restart_or_report(id)?);
                        }
                    }
                    _ => {}
                }
            }
            Ok((down, revived))
        })
        .await?;
        for id in revived {
            self.history.record(
                "nemesis",
                EventKind::Note {
                    message: format!(
                        "{}#{} node {id} had stopped on its failing disk: started again",
                        a.kind.name(),
                        a.id
                    ),
                },
            );
        }
        self.report_down(down);
        self.history.record(
            "nemesis",
            EventKind::FaultEnd {
                id: a.id,
                fault: a.kind.name().into(),
                targets: a.nodes,
            },
        );
        self.show();
        Ok(())
    }

    /// Ends every active fault and brings every node back.
    pub async fn heal(&mut self) -> Result<(), NemesisError> {
        let mut pending = std::mem::take(&mut self.active);
        // Resume before restarting so no node is left stopped.
        pending.sort_by_key(|a| a.kind != FaultKind::Pause);
        for a in pending {
            self.undo(a).await?;
        }
        let cluster = self.cluster.clone();
        let down =
            blocking(move || cluster.lock().unwrap_or_else(|e| e.into_inner()).heal()).await?;
        self.report_down(down);
        Ok(())
    }

    /// Nodes that could not start again: on record, and on the terminal.
    fn report_down(&self, down: Vec<String>) {
        for why in down {
            let first = why.lines().next().unwrap_or_default().to_string();
            eprintln!("\nunlost: a node stays down: {first}");
            self.history.record(
                "nemesis",
                EventKind::Note {
                    message: format!("node did not start again: {why}"),
                },
            );
        }
    }

    fn show(&self) {
        let list = self
            .active
            .iter()
            .map(|a| format!("{}#{}{:?}", a.kind.name(), a.id, a.nodes))
            .collect();
        *self.shown.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }
}

/// sync, then drop the kernel's page cache, dentries and inodes. The
/// kernel never drops dirty pages, so this alone cannot lose data.
fn drop_kernel_caches() -> Result<(), NemesisError> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| NemesisError::Missing {
        what: "write access to /proc/sys/vm/drop_caches".into(),
        hint: format!("{e}: drop-kernel-caches needs real root"),
    })
}

/// A process or storage fault on each node (blocking).
fn on_nodes(
    c: &mut Cluster,
    k: &FaultKind,
    ns: Vec<u32>,
    pick: &mut Draw,
) -> Result<Vec<String>, NemesisError> {
    let mut notes = Vec::new();
    if *k == FaultKind::DropKernelCaches {
        return drop_kernel_caches()
            .map(|()| vec!["sync; echo 3 > /proc/sys/vm/drop_caches".into()]);
    }
    for id in ns {
        match *k {
            FaultKind::Kill => c.kill(id)?,
            FaultKind::Pause => c.pause(id)?,
            FaultKind::Restart => c.clean_restart(id)?,
            FaultKind::PowerLoss { torn } => {
                let mut keep = |len: usize| if len == 0 { 0 } else { pick.value(0..len) };
                let torn: Option<&mut dyn FnMut(usize) -> usize> =
                    if torn { Some(&mut keep) } else { None };
                let lost = c.power_loss(id, torn)?;
                notes.push(format!("node {id}: {lost} unsynced bytes lost"));
            }
            FaultKind::DiskError => c.disk_error(id, true)?,
            FaultKind::Corrupt { truncate } => {
                let mut below = |n: u64| if n == 0 { 0 } else { pick.value(0..n) };
                notes.push(format!(
                    "node {id}: {}",
                    c.corrupt(id, truncate, &mut below)?
                ));
            }
            FaultKind::ConsumerCrash
            | FaultKind::DropKernelCaches
            | FaultKind::Partition { .. }
            | FaultKind::PacketLoss { .. } => {}
        }
    }
    Ok(notes)
}
