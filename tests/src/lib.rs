//! Support for the end-to-end tests: builds the project's binaries, starts
//! real broker processes on loopback, and speaks raw Kafka requests.
//!
//! Every process started here gets PR_SET_PDEATHSIG(SIGKILL) and is killed
//! on drop, so a failing or aborted test leaves no broker behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

/// The workspace's target directory for the profile these tests run in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path of a workspace binary, built (once per test process) so it is never stale.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the binaries");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Whether a test's prerequisite is here. Without it the test says
/// SKIPPED and passes on a developer's machine, but fails under CI=true,
/// where ci/test installs everything: a green CI must have run it.
pub fn prerequisite(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true and this test's prerequisite is missing: {what}"
    );
    eprintln!("SKIPPED: {what}");
    false
}

/// A free TCP port on 127.0.0.1 that no other call in this process has
/// handed out (see [`unlost::cluster::free_loopback_port`]).
pub fn free_port() -> u16 {
    unlost::cluster::free_loopback_port().expect("a free port on 127.0.0.1")
}

/// Fails with a clear message when an external program is missing.
pub fn require_program(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run ci/test, or apt-get install -y {package}"
    );
}

/// A running unlost-broker process with its own data dir.
pub struct BrokerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// What a broker logs once the controller has registered it.
pub const REGISTERED: &str = "registered with the controller";

impl BrokerProcess {
    /// Starts a broker in a fresh temporary data dir with extra flags.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut b = Self::start_in(tmp.path(), extra);
        b._tmp = Some(tmp);
        b
    }

    /// Starts a broker whose data dir and log live in `dir`.
    pub fn start_in(dir: &Path, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_node(dir, 1, addr, extra)
    }

    /// Starts broker `id` on `addr` with its data dir and log in `dir`.
    pub fn start_node(dir: &Path, id: i32, addr: SocketAddr, extra: &[&str]) -> Self {
        let data_dir = dir.join("data");
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".into(),
            addr.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut b = BrokerProcess {
            child: None,
            addr,
            data_dir,
            log: dir.join("broker.log"),
            args,
            _tmp: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let mut cmd = Command::new(binary("unlost-broker"));
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let registered_before = self.log_text().matches(REGISTERED).count();
        self.child = Some(cmd.spawn().expect("spawn unlost-broker"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr).is_err() {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "broker exited during start ({status}):\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "broker did not listen in 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // A lone broker is ready once its controller registered it (a
        // cluster member needs its peers for that: see `Cluster`).
        if !self.args.iter().any(|a| a == "--voters") {
            self.wait_log(REGISTERED, registered_before + 1, Duration::from_secs(20));
        }
    }

    /// Waits until `needle` occurs `count` times in the broker log.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "broker log does not show {needle:?} {count} times after {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        c.wait().ok()?.code()
    }

    /// SIGSTOP (pause) or SIGCONT (resume) the process.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Starts the process again with the same flags, port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Everything the broker logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw Kafka protocol connection.
pub struct KafkaConn {
    stream: TcpStream,
    correlation: i32,
}

impl KafkaConn {
    /// Connects with a read timeout.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to broker");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        KafkaConn {
            stream,
            correlation: 0,
        }
    }

    /// Sends a request and decodes its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> std::io::Result<Resp> {
        self.correlation += 1;
        let frame = unlost_wire::request(key, version, self.correlation, "unlost-tests", req)
            .expect("encodable request");
        self.stream.write_all(&frame)?;
        let resp = self.read_frame()?;
        Ok(unlost_wire::response(key, version, self.correlation, resp)
            .expect("a decodable response to this request"))
    }

    /// Writes a size-prefixed frame.
    pub fn send_frame(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&unlost_wire::frame(body))
    }

    /// Writes raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one size-prefixed frame.
    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        unlost_wire::read_frame(&mut self.stream, unlost_wire::MAX_FRAME).map_err(|e| match e {
            unlost_wire::WireError::Io(e) => e,
            other => std::io::Error::other(other),
        })
    }

    /// Closes the sending side, so the broker sees end of input.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Reads until the broker closes the connection; returns what came.
    pub fn read_to_close(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.stream.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// A cluster of unlost-broker processes on loopback, every one a
/// controller voter.
pub struct Cluster {
    pub brokers: Vec<BrokerProcess>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` brokers (ids 1..=n) with extra flags and waits until each
    /// is registered with the controller.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers: Vec<BrokerProcess> = ports
            .iter()
            .enumerate()
            .map(|(i, (k, c))| {
                let dir = tmp.path().join(format!("n{}", i + 1));
                std::fs::create_dir_all(&dir).unwrap();
                let controller = format!("127.0.0.1:{c}");
                let mut args = vec!["--controller-listen", &controller, "--voters", &voters];
                args.extend_from_slice(extra);
                let addr: SocketAddr = format!("127.0.0.1:{k}").parse().unwrap();
                BrokerProcess::start_node(&dir, i as i32 + 1, addr, &args)
            })
            .collect();
        for b in &brokers {
            b.wait_log(REGISTERED, 1, Duration::from_secs(60));
        }
        Cluster { brokers, _tmp: tmp }
    }

    /// Every broker's address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Broker `id` (1-based).
    pub fn broker(&mut self, id: i32) -> &mut BrokerProcess {
        &mut self.brokers[id as usize - 1]
    }

    /// Restarts broker `id` and waits until it is registered again.
    pub fn restart(&mut self, id: i32) {
        let b = self.broker(id);
        let before = b.log_text().matches(REGISTERED).count();
        b.restart();
        b.wait_log(REGISTERED, before + 1, Duration::from_secs(60));
    }

    /// A running broker's address.
    pub fn any_running(&mut self) -> SocketAddr {
        self.brokers
            .iter_mut()
            .find_map(|b| b.is_running().then_some(b.addr))
            .expect("a running broker")
    }
}

/// Leadership of one partition, as Metadata reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// A topic's partitions from a broker's Metadata answer (none while the
/// broker answers the topic with an error), through the harness's own
/// Metadata call.
pub fn partitions(addr: SocketAddr, topic: &str) -> Vec<PartitionInfo> {
    let view = match unlost::driver::kafka::wire::metadata(
        &addr.to_string(),
        topic,
        Duration::from_secs(10),
    ) {
        Ok(view) => view,
        Err(e) if e.contains(&format!("topic {topic}: error code")) => return Vec::new(),
        Err(e) => panic!("metadata: {e}"),
    };
    view.partitions
        .into_iter()
        .map(|(partition, p)| PartitionInfo {
            partition,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            replicas: p.replicas,
            isr: p.isr,
        })
        .collect()
}

/// Everything one replica holds of a partition, (offset, value), read with
/// Kafka's debugging replica id (-2), which this broker serves from any
/// replica up to its log end (the harness's own replica reader).
pub fn replica_contents(addr: SocketAddr, topic: &str, partition: i32) -> Vec<(i64, String)> {
    unlost::driver::kafka::replicas::read_replica(
        &addr.to_string(),
        topic,
        partition,
        i64::MAX,
        Instant::now() + Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("read replica {addr}: {e}"))
    .0
}

/// A run dir's history as text (decompressed), whatever its format.
pub fn history_text(dir: &Path) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut unlost::history::open(&unlost::history::in_dir(dir)).expect("open the history"),
        &mut text,
    )
    .expect("read the history");
    text
}
