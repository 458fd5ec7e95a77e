//! The cluster under test: node processes started from a recipe.
//!
//! Input: the plan's cluster spec and the run dir. Output: running nodes
//! (`host:port` each), process-level fault verbs in inverse pairs
//! (kill/restart, pause/resume), a clean restart and storage faults. A
//! restart is the same call as the first start, on the same data dir.
//! Nodes log to `nodes/<id>.log`; data lives in `nodes/<id>/data`. Where
//! a node runs is its `Placement` (today: local hosts in the sandbox).

pub mod error;
pub mod placement;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::driver::Driver;
pub use crate::driver::NodeRecipe;
use crate::plan::{ClusterSpec, Readiness};
pub use error::{ClusterError, ClusterErrorKind};
pub use placement::{free_loopback_port, LocalHosts, Placement};

/// Whether a node process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Paused,
    Down,
}

/// One node.
pub struct Node {
    pub id: u32,
    pub host: String,
    pub port: u16,
    /// Port for traffic between nodes (the builtin broker's controller).
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub state: NodeState,
}

impl Node {
    /// `host:port` for clients.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The running cluster.
pub struct Cluster {
    pub nodes: Vec<Node>,
    recipe: NodeRecipe,
    placement: Box<dyn Placement>,
}

impl Cluster {
    /// Starts every node on this machine and waits until each is ready.
    pub fn start(
        spec: &ClusterSpec,
        lazyfs: bool,
        run_dir: &Path,
    ) -> Result<Cluster, ClusterError> {
        Cluster::start_on(Box::<LocalHosts>::default(), spec, lazyfs, run_dir)
    }

    /// Starts every node where `placement` puts it and waits until each
    /// is ready.
    pub fn start_on(
        mut placement: Box<dyn Placement>,
        spec: &ClusterSpec,
        lazyfs: bool,
        run_dir: &Path,
    ) -> Result<Cluster, ClusterError> {
        let recipe = crate::driver::recipe(spec)?;
        // Absolute, so a recipe may change directory (Redis's does) and
        // still find its config and data.
        let nodes_dir = std::path::absolute(run_dir.join("nodes"))
            .map_err(|e| ClusterError::io(0, "resolve", run_dir, e))?;
        let mut nodes = Vec::new();
        for id in 1..=spec.nodes {
            let at = placement.add(id, &nodes_dir.join(id.to_string()), lazyfs)?;
            nodes.push(Node {
                id,
                host: at.host,
                port: at.port,
                peer_port: at.peer_port,
                data_dir: at.data_dir,
                log: nodes_dir.join(format!("{id}.log")),
                state: NodeState::Down,
            });
        }
        let mut cluster = Cluster {
            nodes,
            recipe,
            placement,
        };
        for id in 1..=spec.nodes {
            cluster.launch(id)?;
        }
        for id in 1..=spec.nodes {
            cluster.wait_ready(id)?;
        }
        Ok(cluster)
    }

    /// The client side of this cluster (its broker's driver).
    pub fn driver(&self) -> Arc<dyn Driver> {
        crate::driver::connect(
            &self.recipe,
            self.nodes.iter().map(Node::addr).collect(),
            self.nodes
                .iter()
                .map(|n| format!("{}:{}", n.host, n.peer_port))
                .collect(),
        )
    }

    /// Every node's `host:port`, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Node::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, id: u32) -> Result<&mut Node, ClusterError> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| ClusterError::node(id, ClusterErrorKind::NoNode))
    }

    fn command_for(&self, id: u32) -> Result<Command, ClusterError> {
        let peers = self
            .nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.addr()))
            .collect::<Vec<_>>()
            .join(",");
        let peer_addrs = self
            .nodes
            .iter()
            .map(|n| format!("{}@{}:{}", n.id, n.host, n.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let n = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ClusterError::node(id, ClusterErrorKind::NoNode))?;
        let peer_routes = self
            .nodes
            .iter()
            .filter(|m| m.id != id)
            .map(|m| format!("nats://{}:{}", m.host, m.peer_port))
            .collect::<Vec<_>>()
            .join(", ");
        let primary = self
            .nodes
            .first()
            .map(|m| format!("{} {}", m.host, m.port))
            .unwrap_or_default();
        let config_path = n.data_dir.parent().unwrap_or(&n.data_dir).join("node.conf");
        let fill = |s: &str| {
            s.replace("{id}", &id.to_string())
                .replace("{config}", &config_path.display().to_string())
                .replace("{peer_routes}", &peer_routes)
                .replace("{primary}", &primary)
                .replace("{host}", &n.host)
                .replace("{port}", &n.port.to_string())
                .replace("{data_dir}", &n.data_dir.display().to_string())
                .replace("{peers}", &peers)
                .replace("{peer_port}", &n.peer_port.to_string())
                .replace("{peer_addrs}", &peer_addrs)
        };
        let argv: Vec<String> = self.recipe.command.iter().map(|a| fill(a)).collect();
        if let Some(template) = &self.recipe.config {
            std::fs::write(&config_path, fill(template))
                .map_err(|e| ClusterError::io(id, "write", &config_path, e))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| ClusterError::io(id, "open", &n.log, e))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| ClusterError::io(id, "open", &n.log, e))?,
            )
            .stderr(log);
        Ok(cmd)
    }

    /// Starts node `id` (first start and restart alike).
    fn launch(&mut self, id: u32) -> Result<(), ClusterError> {
        let cmd = self.command_for(id)?;
        self.placement.start(id, cmd)?;
        self.node(id)?.state = NodeState::Running;
        Ok(())
    }

    /// Waits until node `id` passes the recipe's readiness check.
    pub fn wait_ready(&mut self, id: u32) -> Result<(), ClusterError> {
        self.wait_until(id, self.recipe.ready)
    }

    /// Waits until node `id` passes `ready`.
    fn wait_until(&mut self, id: u32, ready: Readiness) -> Result<(), ClusterError> {
        let timeout = self.recipe.ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.placement.exited(id) {
                let n = self.node(id)?;
                n.state = NodeState::Down;
                return Err(ClusterError::node(
                    id,
                    ClusterErrorKind::ExitedDuringStart {
                        status,
                        tail: tail(&n.log, 15),
                        log: n.log.clone(),
                    },
                ));
            }
            if crate::driver::ready(ready, &self.node(id)?.addr(), id) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.node(id)?.log.clone();
                return Err(ClusterError::node(
                    id,
                    ClusterErrorKind::NotReady {
                        after: timeout,
                        tail: tail(&log, 15),
                        log,
                    },
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&mut self, id: u32, sig: Signal) -> Result<(), ClusterError> {
        self.node(id)?;
        self.placement.signal(id, sig);
        Ok(())
    }

    /// SIGKILL the node's process group and reap it.
    pub fn kill(&mut self, id: u32) -> Result<(), ClusterError> {
        self.signal(id, Signal::SIGKILL)?;
        self.placement.reap(id);
        self.node(id)?.state = NodeState::Down;
        Ok(())
    }

    /// SIGSTOP the node's process group.
    pub fn pause(&mut self, id: u32) -> Result<(), ClusterError> {
        if self.node(id)?.state == NodeState::Running {
            self.signal(id, Signal::SIGSTOP)?;
            self.node(id)?.state = NodeState::Paused;
        }
        Ok(())
    }

    /// SIGCONT a paused node.
    pub fn resume(&mut self, id: u32) -> Result<(), ClusterError> {
        if self.node(id)?.state == NodeState::Paused {
            self.signal(id, Signal::SIGCONT)?;
            self.node(id)?.state = NodeState::Running;
        }
        Ok(())
    }

    /// Starts a node that is down, on the same data dir, and waits until it
    /// listens. Not for full readiness: a cluster member may need peers
    /// that are still paused or down to rejoin, and the run goes on.
    pub fn restart(&mut self, id: u32) -> Result<(), ClusterError> {
        if self.node(id)?.state == NodeState::Down {
            self.launch(id)?;
            self.wait_until(id, Readiness::Tcp)?;
        }
        Ok(())
    }

    /// SIGTERM, wait up to 10 s (then SIGKILL), and start again.
    pub fn clean_restart(&mut self, id: u32) -> Result<(), ClusterError> {
        self.resume(id)?;
        self.signal(id, Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.node(id)?.state != NodeState::Down {
            if self.placement.exited(id).is_some() {
                self.node(id)?.state = NodeState::Down;
            } else if Instant::now() >= deadline {
                self.kill(id)?;
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.restart(id)
    }

    /// Whether node `id`'s process has stopped on its own (it is then
    /// down, for `restart`).
    pub fn exited(&mut self, id: u32) -> Result<bool, ClusterError> {
        if self.node(id)?.state == NodeState::Down {
            return Ok(false);
        }
        if self.placement.exited(id).is_some() {
            self.node(id)?.state = NodeState::Down;
            return Ok(true);
        }
        Ok(false)
    }

    /// Restarts a node; a node that exits while starting (it cannot
    /// recover its data, say) is a finding, not a harness failure: it stays
    /// down and the reason is returned.
    pub fn restart_or_report(&mut self, id: u32) -> Result<Option<String>, ClusterError> {
        self.restart_all_or_report(&[id]).map(|mut down| down.pop())
    }

    /// Restarts every down node of `ids` at once, then waits until each
    /// listens: nodes that need a quorum of each other to open their
    /// listeners (Kafka's KRaft nodes) cannot be brought back one by one.
    /// A node that exits while starting stays down, with the reason.
    pub fn restart_all_or_report(&mut self, ids: &[u32]) -> Result<Vec<String>, ClusterError> {
        let mut started = Vec::new();
        let mut down = Vec::new();
        for &id in ids {
            if self.node(id)?.state == NodeState::Down {
                match self.launch(id) {
                    Ok(()) => started.push(id),
                    Err(e) if self.node(id)?.state == NodeState::Down => down.push(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
        }
        for id in started {
            match self.wait_until(id, Readiness::Tcp) {
                Ok(()) => {}
                Err(e) if self.node(id)?.state == NodeState::Down => down.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Ok(down)
    }

    /// Resumes paused nodes, restarts stopped ones, and waits until every
    /// running node is ready (end-of-run heal). Returns why nodes that
    /// could not start again stayed down.
    pub fn heal(&mut self) -> Result<Vec<String>, ClusterError> {
        let mut down = Vec::new();
        let ids: Vec<u32> = self.nodes.iter().map(|n| n.id).collect();
        for &id in &ids {
            self.resume(id)?;
            // A node that died on its own is restarted too.
            if self.placement.exited(id).is_some() {
                self.node(id)?.state = NodeState::Down;
            }
        }
        down.extend(self.restart_all_or_report(&ids)?);
        // Now that every node runs, each must become ready again.
        for n in 0..self.nodes.len() {
            let id = self.nodes[n].id;
            if self.nodes[n].state == NodeState::Down {
                continue;
            }
            if let Err(e) = self.wait_ready(id) {
                if self.node(id)?.state != NodeState::Down {
                    return Err(e);
                }
                down.push(e.to_string());
            }
        }
        Ok(down)
    }

    /// Kills every node and unmounts its lazy filesystem (also on drop).
    pub fn shutdown(&mut self) {
        let ids: Vec<u32> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            let _ = self.kill(id);
        }
        self.placement.release();
    }

    /// Power failure of one node: SIGKILL, then every unsynced write is
    /// lost (`torn` picks how much of each file's last write survives).
    /// Returns the bytes lost. The node stays down until `restart`.
    pub fn power_loss(
        &mut self,
        id: u32,
        torn: Option<&mut dyn FnMut(usize) -> usize>,
    ) -> Result<u64, ClusterError> {
        self.kill(id)?;
        self.placement.drop_unsynced(id, torn)
    }

    /// How old an unsynced write must be to survive a power loss (the
    /// kernel wrote it back); None: none survives.
    pub fn set_writeback(&mut self, after: Option<Duration>) {
        self.placement.writeback(after);
    }

    /// Makes the node's disk fail writes and fsyncs with EIO (None: heal).
    pub fn disk_error(&mut self, id: u32, on: bool) -> Result<(), ClusterError> {
        self.node(id)?;
        self.placement.disk_errors(id, on)
    }

    /// Stops the node, damages its newest segment file (`*.log` if any,
    /// else the newest file) as the broker sees it, and starts it again.
    /// `pick(n)` draws a number below n. Returns what was done.
    pub fn corrupt(
        &mut self,
        id: u32,
        truncate: bool,
        pick: &mut dyn FnMut(u64) -> u64,
    ) -> Result<String, ClusterError> {
        self.kill(id)?;
        let done = self.placement.damage(id, truncate, pick)?;
        self.restart(id)?;
        Ok(done)
    }

    /// Starts `cmd` on node `id`'s host (tests, probes).
    pub fn spawn_in_node(&mut self, id: u32, cmd: Command) -> Result<Child, ClusterError> {
        self.node(id)?;
        self.placement.spawn_on(id, cmd)
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Carriage returns (an Erlang crash report has them) would make a
    // terminal print lines over each other.
    let text = text.replace('\r', "");
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
