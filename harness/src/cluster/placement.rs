//! Node placement: where a node's process runs, and how the harness
//! starts, signals and reaps it and damages its storage. This is the seam
//! where nodes on other machines would plug in (docs/scale-out.md): SSH
//! hosts (Jepsen's model) or Kubernetes pods with Chaos Mesh faults
//! (PodChaos for signals, IOChaos for storage). The network half of the
//! seam is `nemesis::network::Links`.
//!
//! Today's only implementation, [`LocalHosts`], runs every node on this
//! machine: in the sandbox each node is a network namespace of its own
//! (10.77.i.2); without it (library use) nodes share loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{ClusterError, ClusterErrorKind};
use crate::sandbox::spawn;

/// Where a node listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    /// The client port.
    pub port: u16,
    /// The port for traffic between nodes.
    pub peer_port: u16,
    /// The node's data dir, as its process sees it.
    pub data_dir: PathBuf,
}

/// Where nodes run. Calls block; errors name the node.
pub trait Placement: Send {
    /// Makes node `id`'s host, with its data dir under `node_dir` (on a
    /// lazy filesystem when `lazyfs`). Called once per node, before any
    /// start.
    fn add(&mut self, id: u32, node_dir: &Path, lazyfs: bool) -> Result<Endpoint, ClusterError>;

    /// Starts `cmd` as node `id`'s process, in a process group of its own
    /// that dies with the harness (first start and restart alike).
    fn start(&mut self, id: u32, cmd: Command) -> Result<(), ClusterError>;

    /// Sends `sig` to node `id`'s process group; nothing when none runs.
    fn signal(&mut self, id: u32, sig: Signal);

    /// Whether node `id`'s process has exited, with its status (it is
    /// reaped then).
    fn exited(&mut self, id: u32) -> Option<String>;

    /// Waits until node `id`'s process is gone (after SIGKILL).
    fn reap(&mut self, id: u32);

    /// Starts a helper process on node `id`'s host (probes, tests).
    fn spawn_on(&mut self, id: u32, cmd: Command) -> Result<Child, ClusterError>;

    /// Power failure of node `id`'s storage (its process is already
    /// killed): every write not synced is lost; `torn(len)` picks how much
    /// of each file's last write survives. Returns the bytes lost.
    fn drop_unsynced(
        &mut self,
        id: u32,
        torn: Option<&mut dyn FnMut(usize) -> usize>,
    ) -> Result<u64, ClusterError>;

    /// Makes node `id`'s disk fail writes and fsyncs with EIO (or heals it).
    fn disk_errors(&mut self, id: u32, on: bool) -> Result<(), ClusterError>;

    /// Damages node `id`'s newest segment file (its process is stopped):
    /// cut its end or flip bits; `pick(n)` draws below n. Says what it did.
    fn damage(
        &mut self,
        id: u32,
        truncate: bool,
        pick: &mut dyn FnMut(u64) -> u64,
    ) -> Result<String, ClusterError>;

    /// Sets how old an unsynced write must be to survive a power loss of
    /// any node (the kernel's writeback; None: none survives).
    fn writeback(&mut self, after: Option<std::time::Duration>);

    /// Tears down what `add` made (mounts, hosts); processes must be gone.
    fn release(&mut self);
}

/// One node on this machine.
struct LocalNode {
    data_dir: PathBuf,
    child: Option<Child>,
    /// The node's own network namespace (None: the harness's loopback).
    netns: Option<crate::sandbox::Host>,
    /// The lazy filesystem over the data dir (storage.lazyfs).
    lazyfs: Option<crate::lazyfs::LazyFsMount>,
}

/// Every node on this machine (the only placement today).
#[derive(Default)]
pub struct LocalHosts {
    nodes: BTreeMap<u32, LocalNode>,
}

/// A free TCP port on 127.0.0.1 that no other call in this process has
/// handed out, for nodes that share the machine's loopback (no sandbox).
///
/// Ports come from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port asked of the kernel with
/// `bind(:0)` and released is, until the node binds it, free for the kernel
/// to give again: to another node's listener or to any outgoing
/// connection's source port, and the node then fails to start with
/// "Address already in use". Below that range the kernel hands out nothing
/// by itself; a counter keeps this process's nodes apart and a start
/// derived from the process id keeps two processes apart.
pub fn free_loopback_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static RANGE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let &(low, span) = RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        // At most 12,000 ports just below the ephemeral range, above 1024.
        let low = ephemeral_low.saturating_sub(12_000).max(1025);
        let span = ephemeral_low.saturating_sub(low).max(1);
        NEXT.store(
            std::process::id().wrapping_mul(2_654_435_761) % span,
            Ordering::Relaxed,
        );
        (low, span)
    });
    let mut last = None;
    for _ in 0..span {
        let port = (low + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port to try")))
}

fn free_port() -> Result<u16, ClusterError> {
    free_loopback_port().map_err(|e| ClusterError {
        node: None,
        kind: ClusterErrorKind::Port(e),
    })
}

impl LocalHosts {
    fn node(&mut self, id: u32) -> Result<&mut LocalNode, ClusterError> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| ClusterError::node(id, ClusterErrorKind::NoNode))
    }

    fn namespace(&mut self, id: u32) -> Result<spawn::Namespace, ClusterError> {
        Ok(match &self.node(id)?.netns {
            Some(h) => spawn::Namespace::Join(crate::sandbox::netns_fd(h)),
            None => spawn::Namespace::Inherit,
        })
    }

    fn lazyfs(&mut self, id: u32) -> Result<crate::lazyfs::LazyFsControl, ClusterError> {
        self.node(id)?
            .lazyfs
            .as_ref()
            .map(|m| m.control.clone())
            .ok_or_else(|| ClusterError::node(id, ClusterErrorKind::NoLazyFs))
    }
}

impl Placement for LocalHosts {
    fn add(&mut self, id: u32, node_dir: &Path, lazyfs: bool) -> Result<Endpoint, ClusterError> {
        // In the sandbox each node is a host of its own; otherwise
        // (library use without `sandbox::enter`) nodes share loopback.
        let (host, port, peer_port, netns) = if crate::sandbox::entered() {
            let h = crate::sandbox::add_host(id).map_err(|e| ClusterError::node(id, e.into()))?;
            (h.addr.clone(), 9092, 9093, Some(h))
        } else {
            ("127.0.0.1".to_string(), free_port()?, free_port()?, None)
        };
        let data_dir = node_dir.join("data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| ClusterError::io(id, "create", &data_dir, e))?;
        let lazyfs = if lazyfs {
            let backing = node_dir.join("backing");
            std::fs::create_dir_all(&backing)
                .map_err(|e| ClusterError::io(id, "create", &backing, e))?;
            Some(crate::lazyfs::mount(&backing, &data_dir).map_err(|e| {
                ClusterError::node(
                    id,
                    ClusterErrorKind::Missing {
                        what: "a FUSE mount for storage.lazyfs".into(),
                        hint: e,
                    },
                )
            })?)
        } else {
            None
        };
        self.nodes.insert(
            id,
            LocalNode {
                data_dir: data_dir.clone(),
                child: None,
                netns,
                lazyfs,
            },
        );
        Ok(Endpoint {
            host,
            port,
            peer_port,
            data_dir,
        })
    }

    fn start(&mut self, id: u32, cmd: Command) -> Result<(), ClusterError> {
        let program = format!("{:?}", cmd.get_program());
        let ns = self.namespace(id)?;
        let child = spawn::spawn_in(cmd, ns).map_err(|e| {
            ClusterError::node(
                id,
                ClusterErrorKind::Start {
                    program,
                    reason: e.to_string(),
                },
            )
        })?;
        self.node(id)?.child = Some(child);
        Ok(())
    }

    fn signal(&mut self, id: u32, sig: Signal) {
        let pgid = self
            .nodes
            .get(&id)
            .and_then(|n| n.child.as_ref())
            .map(|c| Pid::from_raw(c.id() as i32));
        if let Some(pgid) = pgid {
            // ESRCH: the group is already gone, which is what was wanted.
            let _ = killpg(pgid, sig);
        }
    }

    fn exited(&mut self, id: u32) -> Option<String> {
        let n = self.nodes.get_mut(&id)?;
        match n.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                n.child = None;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    fn reap(&mut self, id: u32) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.wait();
        }
    }

    fn spawn_on(&mut self, id: u32, cmd: Command) -> Result<Child, ClusterError> {
        let program = format!("{:?}", cmd.get_program());
        let ns = self.namespace(id)?;
        spawn::spawn_in(cmd, ns).map_err(|e| {
            ClusterError::node(
                id,
                ClusterErrorKind::Start {
                    program,
                    reason: e.to_string(),
                },
            )
        })
    }

    fn drop_unsynced(
        &mut self,
        id: u32,
        torn: Option<&mut dyn FnMut(usize) -> usize>,
    ) -> Result<u64, ClusterError> {
        let lost = self
            .lazyfs(id)?
            .power_loss(torn)
            .map_err(|e| ClusterError::node(id, ClusterErrorKind::LazyFs(e)))?;
        Ok(lost.bytes_lost)
    }

    fn disk_errors(&mut self, id: u32, on: bool) -> Result<(), ClusterError> {
        let e = on.then_some(crate::lazyfs::DiskError {
            writes: true,
            fsyncs: true,
        });
        self.lazyfs(id)?.set_disk_error(e);
        Ok(())
    }

    fn damage(
        &mut self,
        id: u32,
        truncate: bool,
        pick: &mut dyn FnMut(u64) -> u64,
    ) -> Result<String, ClusterError> {
        let dir = self.node(id)?.data_dir.clone();
        damage_newest(id, &dir, truncate, pick)
    }

    fn writeback(&mut self, after: Option<std::time::Duration>) {
        for m in self.nodes.values().filter_map(|n| n.lazyfs.as_ref()) {
            m.control.set_writeback(after);
        }
    }

    fn release(&mut self) {
        for n in self.nodes.values_mut() {
            n.lazyfs = None;
        }
    }
}

/// Cuts the end of, or flips bits in, the newest data file under `dir`.
fn damage_newest(
    id: u32,
    dir: &Path,
    truncate: bool,
    pick: &mut dyn FnMut(u64) -> u64,
) -> Result<String, ClusterError> {
    let file = newest_file(dir)
        .ok_or_else(|| ClusterError::node(id, ClusterErrorKind::NoDataFile(dir.to_path_buf())))?;
    let len = std::fs::metadata(&file)
        .map_err(|e| ClusterError::io(id, "stat", &file, e))?
        .len();
    if len == 0 {
        return Ok(format!("{} is empty: nothing to damage", file.display()));
    }
    if truncate {
        let cut = 1 + pick(len.min(4096));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(|e| ClusterError::io(id, "open", &file, e))?;
        f.set_len(len - cut)
            .and_then(|_| f.sync_all())
            .map_err(|e| ClusterError::io(id, "truncate", &file, e))?;
        return Ok(format!(
            "cut {cut} bytes from the end of {}",
            file.display()
        ));
    }
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
    Ok(format!(
        "flipped bits at bytes {flipped:?} of {}",
        file.display()
    ))
}

/// Whether `p` is a log segment: `<base offset>.log`, as Kafka and
/// unlost-broker name them. A broker's other `.log` files (unlost-broker's
/// controller/raft.log) are not segments: the `corrupt` fault damaged a
/// Raft log once, which no broker can survive silently.
fn is_segment(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "log")
        && p.file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

/// The newest segment file under `dir` (or the newest file when none).
fn newest_file(dir: &Path) -> Option<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => files.push((is_segment(&p), m.modified().ok(), p)),
                _ => {}
            }
        }
    }
    files.sort();
    files.pop().map(|(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corrupt_fault_picks_the_newest_segment_not_another_log() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("unlost-0/00000000000000000000.log");
        let raft = dir.path().join("controller/raft.log");
        for f in [&seg, &raft] {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        }
        std::fs::write(&seg, b"segment").unwrap();
        std::fs::write(&raft, b"raft, written last").unwrap();
        let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_modified(earlier)
            .unwrap();
        assert_eq!(newest_file(dir.path()), Some(seg.clone()));
        assert!(is_segment(&seg) && !is_segment(&raft));
        std::fs::remove_file(&seg).unwrap();
        // No segment at all: the newest file.
        assert_eq!(newest_file(dir.path()), Some(raft));
    }

    #[test]
    fn loopback_ports_are_distinct_and_outside_the_kernels_ephemeral_range() {
        let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..500).map(|_| free_loopback_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        for p in ports {
            assert!(
                p > 1024 && p < ephemeral_low,
                "{p} is not below {ephemeral_low}"
            );
            // Each is free to bind right after it was handed out.
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
