//! The cluster under test: node processes started from a recipe.
//!
//! Input: the plan's cluster spec and the run dir. Output: running nodes
//! (`host:port` each), process-level fault verbs in inverse pairs
//! (kill/restart, pause/resume) and a clean restart. A restart is the same
//! call as the first start, on the same data dir. Nodes log to
//! `nodes/<id>.log`; data lives in `nodes/<id>/data`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::driver::Driver;
pub mod error;

pub use crate::driver::NodeRecipe;
use crate::error::Error;
use crate::plan::{ClusterSpec, Readiness};
use crate::sandbox::spawn;
pub use error::{ClusterError, ClusterErrorKind};

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
    child: Option<Child>,
    pub state: NodeState,
    /// The node's own network namespace (None: the harness's loopback).
    netns: Option<crate::sandbox::Host>,
    /// The lazy filesystem over the data dir (storage.lazyfs).
    lazyfs: Option<crate::lazyfs::LazyFsMount>,
}

impl Node {
    /// `host:port` for clients.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn pgid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
}

/// The running cluster.
pub struct Cluster {
    pub nodes: Vec<Node>,
    recipe: NodeRecipe,
}

fn free_port(host: &str) -> Result<u16, ClusterError> {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError {
            node: None,
            kind: ClusterErrorKind::Port(e),
        })
}

impl Cluster {
    /// Starts every node and waits until each is ready.
    pub fn start(spec: &ClusterSpec, lazyfs: bool, run_dir: &Path) -> Result<Cluster, Error> {
        let recipe = crate::driver::recipe(spec)?;
        let nodes_dir = run_dir.join("nodes");
        let mut nodes = Vec::new();
        for id in 1..=spec.nodes {
            // In the sandbox each node is a host of its own; otherwise
            // (library use without `sandbox::enter`) nodes share loopback.
            let (host, port, peer_port, netns) = if crate::sandbox::entered() {
                let h = crate::sandbox::add_host(id)?;
                (h.addr.clone(), 9092, 9093, Some(h))
            } else {
                let port = free_port("127.0.0.1")?;
                let mut peer = free_port("127.0.0.1")?;
                while peer == port {
                    peer = free_port("127.0.0.1")?;
                }
                ("127.0.0.1".to_string(), port, peer, None)
            };
            let data_dir = nodes_dir.join(id.to_string()).join("data");
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| ClusterError::io(id, "create", &data_dir, e))?;
            let log = nodes_dir.join(format!("{id}.log"));
            let lazyfs = if lazyfs {
                let backing = nodes_dir.join(id.to_string()).join("backing");
                std::fs::create_dir_all(&backing)
                    .map_err(|e| ClusterError::io(id, "create", &backing, e))?;
                Some(
                    crate::lazyfs::mount(&backing, &data_dir).map_err(|e| Error::Capability {
                        what: "a FUSE mount for storage.lazyfs".into(),
                        hint: e,
                    })?,
                )
            } else {
                None
            };
            nodes.push(Node {
                lazyfs,
                id,
                host,
                port,
                peer_port,
                data_dir,
                log,
                child: None,
                state: NodeState::Down,
                netns,
            });
        }
        let mut cluster = Cluster { nodes, recipe };
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
        crate::driver::connect(&self.recipe, self.nodes.iter().map(Node::addr).collect())
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
        let config_path = n.data_dir.parent().unwrap_or(&n.data_dir).join("node.conf");
        let fill = |s: &str| {
            s.replace("{id}", &id.to_string())
                .replace("{config}", &config_path.display().to_string())
                .replace("{peer_routes}", &peer_routes)
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
        let program = format!("{:?}", cmd.get_program());
        let ns = match &self.node(id)?.netns {
            Some(h) => spawn::Namespace::Join(crate::sandbox::netns_fd(h)),
            None => spawn::Namespace::Inherit,
        };
        let child = spawn::spawn_in(cmd, ns).map_err(|e| {
            ClusterError::node(
                id,
                ClusterErrorKind::Start {
                    program: program.clone(),
                    reason: e.to_string(),
                },
            )
        })?;
        let n = self.node(id)?;
        n.child = Some(child);
        n.state = NodeState::Running;
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
            let n = self.node(id)?;
            if let Some(Ok(Some(status))) = n.child.as_mut().map(|c| c.try_wait()) {
                n.state = NodeState::Down;
                return Err(ClusterError::node(
                    id,
                    ClusterErrorKind::ExitedDuringStart {
                        status: status.to_string(),
                        tail: tail(&n.log, 15),
                        log: n.log.clone(),
                    },
                ));
            }
            if crate::driver::ready(ready, &n.addr(), id) {
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
        let n = self.node(id)?;
        if let Some(pgid) = n.pgid() {
            // ESRCH: the group is already gone, which is what was wanted.
            let _ = killpg(pgid, sig);
        }
        Ok(())
    }

    /// SIGKILL the node's process group and reap it.
    pub fn kill(&mut self, id: u32) -> Result<(), ClusterError> {
        self.signal(id, Signal::SIGKILL)?;
        let n = self.node(id)?;
        if let Some(mut c) = n.child.take() {
            let _ = c.wait();
        }
        n.state = NodeState::Down;
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
        loop {
            let n = self.node(id)?;
            match n.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Some(Ok(None)) => {
                    self.kill(id)?;
                    break;
                }
                _ => {
                    n.child = None;
                    n.state = NodeState::Down;
                    break;
                }
            }
        }
        self.restart(id)
    }

    /// Restarts a node; a node that exits while starting (it cannot
    /// recover its data, say) is a finding, not a harness failure: it stays
    /// down and the reason is returned.
    pub fn restart_or_report(&mut self, id: u32) -> Result<Option<String>, ClusterError> {
        match self.restart(id) {
            Ok(()) => Ok(None),
            Err(e) if self.node(id)?.state == NodeState::Down => Ok(Some(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Resumes paused nodes, restarts stopped ones, and waits until every
    /// running node is ready (end-of-run heal). Returns why nodes that
    /// could not start again stayed down.
    pub fn heal(&mut self) -> Result<Vec<String>, ClusterError> {
        let mut down = Vec::new();
        let ids: Vec<u32> = self.nodes.iter().map(|n| n.id).collect();
        for id in ids {
            self.resume(id)?;
            // A node that died on its own is restarted too.
            let n = self.node(id)?;
            if let Some(Ok(Some(_))) = n.child.as_mut().map(|c| c.try_wait()) {
                n.child = None;
                n.state = NodeState::Down;
            }
            if let Some(why) = self.restart_or_report(id)? {
                down.push(why);
            }
        }
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
        for n in &mut self.nodes {
            n.lazyfs = None;
        }
    }

    fn lazyfs(&mut self, id: u32) -> Result<crate::lazyfs::LazyFsControl, ClusterError> {
        self.node(id)?
            .lazyfs
            .as_ref()
            .map(|m| m.control.clone())
            .ok_or_else(|| ClusterError::node(id, ClusterErrorKind::NoLazyFs))
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
        let lost = self
            .lazyfs(id)?
            .power_loss(torn)
            .map_err(|e| ClusterError::node(id, ClusterErrorKind::LazyFs(e)))?;
        Ok(lost.bytes_lost)
    }

    /// Makes the node's disk fail writes and fsyncs with EIO (None: heal).
    pub fn disk_error(&mut self, id: u32, on: bool) -> Result<(), ClusterError> {
        let e = on.then_some(crate::lazyfs::DiskError {
            writes: true,
            fsyncs: true,
        });
        self.lazyfs(id)?.set_disk_error(e);
        Ok(())
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
        let dir = self.node(id)?.data_dir.clone();
        let file = newest_file(&dir)
            .ok_or_else(|| ClusterError::node(id, ClusterErrorKind::NoDataFile(dir.clone())))?;
        let len = std::fs::metadata(&file)
            .map_err(|e| ClusterError::io(id, "stat", &file, e))?
            .len();
        let done = if len == 0 {
            format!("{} is empty: nothing to damage", file.display())
        } else if truncate {
            let cut = 1 + pick(len.min(4096));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .map_err(|e| ClusterError::io(id, "open", &file, e))?;
            f.set_len(len - cut)
                .and_then(|_| f.sync_all())
                .map_err(|e| ClusterError::io(id, "truncate", &file, e))?;
            format!("cut {cut} bytes from the end of {}", file.display())
        } else {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file)
                .map_err(|e| ClusterError::io(id, "open", &file, e))?;
            let window = len.min(65536);
            let mut flipped = Vec::new();
            for _ in 0..8 {
                let at = len - window + pick(window);
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at)
                    .map_err(|e| ClusterError::io(id, "read", &file, e))?;
                b[0] ^= 1 << pick(8);
                f.write_all_at(&b, at)
                    .map_err(|e| ClusterError::io(id, "write", &file, e))?;
                flipped.push(at);
            }
            f.sync_all()
                .map_err(|e| ClusterError::io(id, "fsync", &file, e))?;
            format!("flipped bits at bytes {flipped:?} of {}", file.display())
        };
        self.restart(id)?;
        Ok(done)
    }

    /// Starts `cmd` inside node `id`'s network namespace (tests, probes).
    pub fn spawn_in_node(&mut self, id: u32, cmd: Command) -> Result<Child, ClusterError> {
        let cmd_program = cmd.get_program().to_os_string();
        let ns = match &self.node(id)?.netns {
            Some(h) => spawn::Namespace::Join(crate::sandbox::netns_fd(h)),
            None => spawn::Namespace::Inherit,
        };
        spawn::spawn_in(cmd, ns).map_err(|e| {
            ClusterError::node(
                id,
                ClusterErrorKind::Start {
                    program: format!("{:?}", cmd_program),
                    reason: e.to_string(),
                },
            )
        })
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

/// The newest `*.log` file under `dir` (or the newest file when none).
fn newest_file(dir: &Path) -> Option<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => files.push((
                    p.extension().is_some_and(|x| x == "log"),
                    m.modified().ok(),
                    p,
                )),
                _ => {}
            }
        }
    }
    files.sort();
    files.pop().map(|(_, _, p)| p)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
