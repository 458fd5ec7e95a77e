//! The sandbox: private network and mount namespaces for a run, and one
//! network namespace per node, joined to the harness by a veth pair.
//!
//! `enter` must run before the process starts any thread: it unshares the
//! network and mount namespaces (and a user namespace first when not real
//! root). That namespace is the "switch": the harness and its clients live
//! there. `Sandbox::add_host` makes node i a host of its own at 10.77.i.2,
//! with the switch side at 10.77.i.1 and IP forwarding between hosts, so a
//! broker sees real source addresses whatever sockets it opens. Nothing is
//! created in the host's namespaces: when the harness exits, for any
//! reason, the namespaces vanish with every interface, rule and mount.
//! The per-node namespace is held by a `sleep` process that dies with the
//! harness (PR_SET_PDEATHSIG).

mod error;
pub mod spawn;

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use nix::sched::{unshare, CloneFlags};

pub use error::SandboxError;

/// The network namespaces `enter` made (their inode numbers). A namespace
/// belongs to a thread and what it starts: the `unlost` binary enters
/// before any thread exists, a test enters on its own thread.
static ENTERED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// The inode of the calling thread's network namespace.
fn netns_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}
/// Whether the process was real root before entering (a user namespace
/// makes everyone root inside, without the host's privileges).
static REAL_ROOT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the harness runs as real root (not only root in a user namespace).
pub fn real_root() -> bool {
    REAL_ROOT.load(std::sync::atomic::Ordering::SeqCst)
}

/// The address of node `id` (1-based).
pub fn node_addr(id: u32) -> String {
    format!("10.77.{id}.2")
}

fn write(path: &str, text: &str) -> Result<(), SandboxError> {
    std::fs::write(path, text).map_err(|e| SandboxError::Missing {
        what: format!("write {path}"),
        hint: e.to_string(),
    })
}

fn run(cmd: &mut Command) -> Result<(), SandboxError> {
    let out = cmd.output().map_err(|e| SandboxError::Missing {
        what: format!("{:?}", cmd.get_program()),
        hint: format!("{e} (install iproute2 and util-linux)"),
    })?;
    if !out.status.success() {
        return Err(SandboxError::failed(
            format!("{cmd:?}"),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

/// Enters private namespaces. Call before any thread exists.
pub fn enter() -> Result<(), SandboxError> {
    let root = nix::unistd::geteuid().is_root();
    REAL_ROOT.store(root, std::sync::atomic::Ordering::SeqCst);
    if !root {
        let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| SandboxError::Missing {
            what: "user namespaces".into(),
            hint: format!(
                "unshare(CLONE_NEWUSER): {e}; run as root or enable user.max_user_namespaces"
            ),
        })?;
        write("/proc/self/setgroups", "deny")?;
        write("/proc/self/uid_map", &format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    }
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).map_err(|e| {
        SandboxError::Missing {
            what: "network and mount namespaces".into(),
            hint: format!("unshare: {e}; run as root or with user namespaces enabled"),
        }
    })?;
    // Mounts made during the run (the lazy filesystem) stay in here.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| SandboxError::failed("make mounts private", e))?;
    run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    write("/proc/sys/net/ipv4/ip_forward", "1")?;
    if let Some(ino) = netns_inode() {
        ENTERED.lock().unwrap_or_else(|e| e.into_inner()).push(ino);
    }
    Ok(())
}

/// Whether the calling thread is in a sandbox `enter` made (in this
/// process).
pub fn entered() -> bool {
    netns_inode().is_some_and(|ino| {
        ENTERED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&ino)
    })
}

/// A node's host: its network namespace, held open.
pub struct Host {
    pub id: u32,
    pub addr: String,
    /// The namespace, for setns before a node's exec.
    pub netns: OwnedFd,
    holder: Child,
}

impl Drop for Host {
    fn drop(&mut self) {
        // The kernel tears a dead namespace down asynchronously; delete the
        // veth pair now so the next run (a suite) can reuse the name.
        let _ = Command::new("ip")
            .args(["link", "del", &format!("un{}", self.id)])
            .stderr(Stdio::null())
            .status();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Creates node `id`'s host: a network namespace with eth0 at 10.77.id.2,
/// joined to the switch by veth `un<id>` at 10.77.id.1.
pub fn add_host(id: u32) -> Result<Host, SandboxError> {
    if !entered() {
        return Err(SandboxError::failed(
            format!("add host {id}"),
            "sandbox::add_host before sandbox::enter",
        ));
    }
    let mut cmd = Command::new("sleep");
    cmd.arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let holder = spawn::spawn_in(cmd, spawn::Namespace::New)
        .map_err(|e| SandboxError::failed(format!("start namespace holder for node {id}"), e))?;
    let pid = holder.id();
    let ns_path = format!("/proc/{pid}/ns/net");
    let netns: OwnedFd = std::fs::File::open(&ns_path)
        .map_err(|e| SandboxError::failed(format!("open {ns_path}"), e))?
        .into();
    let host = Host {
        id,
        addr: node_addr(id),
        netns,
        holder,
    };
    let switch = format!("un{id}");
    // A pair left by an earlier run in this sandbox (namespace teardown is
    // asynchronous) would make the name clash.
    let _ = Command::new("ip")
        .args(["link", "del", &switch])
        .stderr(Stdio::null())
        .status();
    let inside = |args: &[&str]| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={ns_path}")).arg("ip").args(args);
        c
    };
    run(Command::new("ip").args([
        "link",
        "add",
        &switch,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pid.to_string(),
    ]))?;
    run(Command::new("ip").args(["addr", "add", &format!("10.77.{id}.1/24"), "dev", &switch]))?;
    run(Command::new("ip").args(["link", "set", &switch, "up"]))?;
    run(&mut inside(&[
        "addr",
        "add",
        &format!("{}/24", host.addr),
        "dev",
        "eth0",
    ]))?;
    run(&mut inside(&["link", "set", "eth0", "up"]))?;
    run(&mut inside(&["link", "set", "lo", "up"]))?;
    run(&mut inside(&[
        "route",
        "add",
        "default",
        "via",
        &format!("10.77.{id}.1"),
    ]))?;
    Ok(host)
}

/// The raw fd of a host's namespace (valid while the `Host` lives).
pub fn netns_fd(h: &Host) -> i32 {
    h.netns.as_raw_fd()
}
