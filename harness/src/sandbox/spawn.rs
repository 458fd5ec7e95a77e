//! Starts node processes from one long-lived thread.
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked a child exits, not
//! the process; runtime worker threads come and go, so every node is forked
//! by this thread, which lives as long as the harness. Each child gets its
//! own process group (faults signal the whole group), SIGKILL when the
//! harness dies (even by SIGKILL), and optionally a network namespace: a
//! node host's (setns) or a new one (unshare), entered before exec.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use nix::sched::CloneFlags;

/// Which network namespace the child runs in.
#[derive(Debug, Clone, Copy)]
pub enum Namespace {
    /// The harness's own.
    Inherit,
    /// A fresh, empty one.
    New,
    /// The namespace behind this fd (kept open by the caller).
    Join(i32),
}

type Request = (Command, Namespace, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("unlost-spawner".into())
            .spawn(move || {
                for (mut cmd, ns, reply) in rx {
                    unsafe {
                        cmd.pre_exec(move || {
                            nix::unistd::setpgid(
                                nix::unistd::Pid::from_raw(0),
                                nix::unistd::Pid::from_raw(0),
                            )
                            .map_err(std::io::Error::from)?;
                            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                                .map_err(std::io::Error::from)?;
                            match ns {
                                Namespace::Inherit => Ok(()),
                                Namespace::New => nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                                    .map_err(std::io::Error::from),
                                Namespace::Join(fd) => {
                                    let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                                    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                                        .map_err(std::io::Error::from)
                                }
                            }
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the process-starting thread");
        Mutex::new(tx)
    })
}

/// Starts `cmd` in its own process group, killed if the harness dies.
pub fn spawn(cmd: Command) -> std::io::Result<Child> {
    spawn_in(cmd, Namespace::Inherit)
}

/// Like `spawn`, in the given network namespace.
pub fn spawn_in(cmd: Command, ns: Namespace) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, ns, tx))
        .map_err(|_| std::io::Error::other("process-starting thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("process-starting thread is gone"))?
}
