//! Broker drivers: everything the harness knows about one broker's client
//! protocol, and the recipe that starts one node of it.
//!
//! Input: a plan's cluster spec (for the recipe) and the nodes' addresses
//! (for the client side). Output: the traits below, whose results are the
//! history's vocabulary (positions, completions, deliveries).
//!
//! The run, the nemesis, the workload, the checker and the reports talk to
//! a broker only through these traits; no other module names a broker or
//! its client crate. A driver has the capabilities every broker has
//! ([`Driver`]: admin, a producer, a group member, a final drain) and may
//! have optional ones, kept apart ([`ReplicaReads`], [`CommittedPositions`]),
//! as Jepsen keeps client, nemesis and checker capabilities apart.
//!
//! # The model a driver maps onto
//! A message lives at a (partition, position): Kafka's partition and
//! offset; a NATS stream is partition 0 and positions are stream sequences;
//! a Redis stream is partition 0 and an entry id is a position. Positions grow within a
//! partition; the checker's offset properties (`skipped`, `reordered`,
//! `inconsistent-offset`, `nonmonotonic-poll`) rest on that. A broker
//! without positions (a queue: RabbitMQ) reports position -1 everywhere
//! (acknowledgements, deliveries, the drain) and per-message
//! acknowledgements instead of commits; the checker's queue model (lost,
//! duplicated, unexpected, recovered, redelivered, skipped) takes it from
//! there. Such a driver must not invent positions.
//!
//! # Contracts common to every call
//! - Blocking calls say so; call them from a blocking thread
//!   (`tokio::task::spawn_blocking`), never from an async task.
//! - Unknown is never absent: an operation whose effect the driver cannot
//!   prove is reported as unknown (`Completion::Info`), never as failed.

pub mod cache;
pub mod kafka;
pub mod nats;
pub mod rabbitmq;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::history::History;
use crate::plan::{BrokerKind, ClusterSpec, ConsumerSpec, ProducerSpec, Readiness, TopicSpec};

/// What a driver call could not do. Driver errors are transient from the
/// harness's point of view: callers note them and retry or give up per
/// their own deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// No connection to the cluster (nodes down, cut off, not started).
    #[error("connect to {to}: {reason}")]
    Connect { to: String, reason: String },
    /// The cluster answered, but not with what was asked for.
    #[error("{what}: {reason}")]
    Refused { what: String, reason: String },
    /// No answer within the call's timeout.
    #[error("{what}: no answer within {after:?}")]
    Timeout { what: String, after: Duration },
    /// This machine lacks what the recipe runs (exit 3).
    #[error("this machine lacks {what}: {hint}")]
    Missing { what: String, hint: String },
    /// The plan's recipe cannot be used (exit 2).
    #[error("{0}")]
    Recipe(String),
}

impl DriverError {
    /// A refusal of `what`.
    pub fn refused(what: impl Into<String>, reason: impl std::fmt::Display) -> DriverError {
        DriverError::Refused {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl DriverError {
    /// The process exit code when a driver error ends a run: the harness
    /// could not talk to the cluster (4), a program is missing (3), the
    /// recipe is unusable (2).
    pub fn exit_code(&self) -> i32 {
        match self {
            DriverError::Missing { .. } => crate::exit::CAPABILITY,
            DriverError::Recipe(_) => crate::exit::USAGE,
            _ => crate::exit::HARNESS,
        }
    }
}

/// How one send attempt ended (Jepsen's ok / fail / info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Acknowledged by the broker at this place (position -1: none given,
    /// as with acks 0 or a queue).
    Ok { partition: i32, position: i64 },
    /// Definitely not written: only errors raised before the message left
    /// the client (a full local queue, an unknown partition, an invalid
    /// argument). A broker's error answer is never a proof: the request
    /// may have been applied, or retried invisibly by the client.
    Fail(String),
    /// Unknown: a timeout, a lost connection, a broker error. The message
    /// may or may not be stored; the checker never counts it as absent.
    Info(String),
}

/// Where a producer puts a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Partition(i32),
    Key(String),
}

/// One message a group member received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    /// -1 for a queue's message, which has none.
    pub position: i64,
    /// The value id (see `history::value_of`).
    pub value: String,
    /// The broker says it delivered this message before (it was not
    /// acknowledged in time, or by a member that crashed): this member's
    /// position legitimately moves back, as after a reassignment.
    pub redelivered: bool,
}

/// Leader and replicas of each partition, by node id (-1: no leader).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicLayout {
    pub leaders: BTreeMap<i32, i32>,
    pub replicas: BTreeMap<i32, Vec<i32>>,
}

/// What a final drain established: partition -> the end position the
/// confirmed read reached (Kafka: the high watermark; NATS: last
/// sequence + 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    pub high: BTreeMap<i32, i64>,
}

/// What a single-sequence drain (one read of every partition, confirmed)
/// returns: the end each partition reached and the ranges its leader
/// reported but did not serve; or why it could not finish.
pub type DrainResult = Result<(BTreeMap<i32, i64>, Vec<crate::history::Unreadable>), String>;

/// Records a drain's `drain-end` event and turns its result into what
/// `Driver::drain` returns.
pub fn end_drain(history: &History, result: DrainResult) -> Option<Drained> {
    let (complete, high, error, unreadable) = match &result {
        Ok((h, u)) => (true, h.clone(), None, u.clone()),
        Err(e) => (false, BTreeMap::new(), Some(e.clone()), Vec::new()),
    };
    history.record(
        "drain",
        crate::history::EventKind::DrainEnd {
            complete,
            high_watermarks: high.iter().map(|(p, h)| (p.to_string(), *h)).collect(),
            error,
            unreadable,
        },
    );
    result.ok().map(|(high, _)| Drained { high })
}

/// Records a confirmed read of `partition`: one `drain` event per
/// (position, value).
pub fn record_drained(history: &History, partition: i32, records: Vec<(i64, String)>) {
    for (offset, value) in records {
        history.record(
            "drain",
            crate::history::EventKind::Drain {
                partition,
                offset,
                value,
            },
        );
    }
}

/// How long a drain may make no progress below a partition's reported end
/// before it calls the rest `unreadable`: a third of the drain timeout, at
/// least 5 s.
pub fn patience(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_secs(5))
}

/// What a producer client is made from.
#[derive(Debug, Clone)]
pub struct ProducerSetup {
    pub index: u32,
    pub spec: ProducerSpec,
}

/// What a group member is made from.
#[derive(Clone)]
pub struct MemberSetup {
    pub spec: ConsumerSpec,
    pub topic: String,
    /// The incarnation's name in the history (`c<i>#<n>`).
    pub name: String,
    /// For membership events the client reports (`assign`).
    pub history: History,
}

/// The client side of a cluster: admin and the factories of producers and
/// group members. Shared by every task of a run (`Arc<dyn Driver>`).
pub trait Driver: Send + Sync {
    /// The broker's name in messages ("kafka-api", "nats").
    fn name(&self) -> &'static str;

    /// Creates the topic (or stream); an existing one is fine. Retries
    /// while the cluster elects whatever it needs, up to its own deadline.
    fn create_topic<'a>(&'a self, spec: &'a TopicSpec) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Leaders and replicas as the cluster reports them now. Blocking.
    fn layout(&self, topic: &str, timeout: Duration) -> Result<TopicLayout, DriverError>;

    /// A producer client. Async: call from the runtime.
    fn producer<'a>(
        &'a self,
        setup: &'a ProducerSetup,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>, DriverError>>;

    /// A new member of the consumer group (one incarnation). Blocking; the
    /// member lives on the thread that made it.
    fn member(&self, setup: MemberSetup) -> Result<Box<dyn Member>, DriverError>;

    /// The final read after the heal: records a `drain` event for every
    /// message of a read the driver confirmed (nothing moved while it
    /// read), and one `drain-end` (complete or why not, with `unreadable`
    /// ranges). None when it could not finish. Bounded by `timeout`.
    /// Blocking.
    fn drain(
        &self,
        topic: &str,
        partitions: i32,
        timeout: Duration,
        history: &History,
    ) -> Option<Drained>;

    /// Reading each replica on its own, if the broker allows it.
    fn replica_reads(&self) -> Option<&dyn ReplicaReads> {
        None
    }

    /// The group's committed positions as the broker stores them, if it
    /// has any.
    fn committed_positions(&self) -> Option<&dyn CommittedPositions> {
        None
    }
}

/// One producer client, shared by its concurrent sends.
pub trait Producer: Send + Sync {
    /// Whether the client resends by itself (then the harness makes one
    /// attempt per value and the client's retries are invisible).
    fn retries_internally(&self) -> bool;

    /// What the client knows of its connections (librdkafka's statistics:
    /// broker states, queued and unanswered requests, partition leaders),
    /// for a note when this producer's sends have all been failing for a
    /// while. None when the client cannot tell.
    fn diagnose(&self) -> Option<String> {
        None
    }

    /// One attempt: resolves once the broker answered or the attempt timed
    /// out (the spec's timeout, plus the client's own retries when it
    /// retries internally). `value` is the value id (an idempotence key
    /// for brokers that deduplicate by id).
    fn send<'a>(
        &'a self,
        topic: &'a str,
        value: &'a str,
        payload: Vec<u8>,
        route: &'a Route,
    ) -> BoxFuture<'a, Completion>;
}

/// One incarnation of a consumer-group member. Blocking calls on the
/// member's own thread.
///
/// Commit policies: after-process and before-process call `commit` at
/// their point; with `auto` the member commits by itself (the client's
/// periodic auto-commit, or acknowledging on receipt) and `commit` is not
/// called. Dropping a member leaves the group without committing anything
/// more (a crash), except what `auto` commits on close.
pub trait Member {
    /// Up to `max` messages: what arrives within a short window after the
    /// first one (waiting a few hundred ms for it). Empty when nothing
    /// came. Err: the member is unusable; the caller drops it and starts
    /// a new incarnation.
    fn poll(&mut self, max: usize) -> Result<Vec<Delivery>, DriverError>;

    /// Commits (or acknowledges) everything in `batch`; returns the
    /// positions now committed, (partition, next position), for brokers
    /// that store positions (empty for per-message acknowledgement).
    fn commit(&mut self, batch: &[Delivery]) -> Result<Vec<(i32, i64)>, DriverError>;
}

/// Optional: read every replica on its own after the drain, so the
/// checker can prove replicas agree (`inconsistent-offset`).
pub trait ReplicaReads: Send + Sync {
    /// Records a `replica` event per replica read; `nodes` maps node ids
    /// to client addresses; compares only below `drained`'s ends.
    /// Returns how many replicas were read. Blocking.
    fn read_replicas(
        &self,
        nodes: &BTreeMap<u32, String>,
        topic: &str,
        drained: &Drained,
        timeout: Duration,
        history: &History,
    ) -> usize;
}

/// Optional: the group's committed positions as the broker stores them.
pub trait CommittedPositions: Send + Sync {
    /// (partition, committed position) for each partition that has one.
    /// Blocking.
    fn committed(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<(i32, i64)>, DriverError>;
}

/// Log targets of the drivers' client crates, silenced by default (their
/// complaints about nodes the nemesis killed are expected).
pub const QUIET_LOGS: &str = "rdkafka=off,librdkafka=off,lapin=off";

/// The client protocol a recipe's nodes speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Kafka,
    Nats,
    /// With the replicas a WAIT must confirm for acks all.
    Redis {
        wait: u32,
    },
    /// Whether the queue is a quorum queue, and the consumers' prefetch.
    Rabbitmq {
        quorum: bool,
        prefetch: u16,
    },
}

/// How one node is started and judged ready.
#[derive(Debug, Clone)]
pub struct NodeRecipe {
    /// argv with placeholders {id} {host} {port} {data_dir} {peers}
    /// {peer_port} {peer_addrs} {config}, and {primary} (node 1 as
    /// `host port`, for recipes that start with node 1 as the primary).
    pub command: Vec<String>,
    /// A config file written for each node (same placeholders, and
    /// {peer_routes}: `nats://host:peer_port` of the other nodes); its path
    /// is {config}.
    pub config: Option<String>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    pub protocol: Protocol,
    /// Whether the nodes serve replica reads (Kafka's debugging replica
    /// id) that the harness knows to be meaningful.
    pub replica_reads: bool,
}

/// The recipe for a plan's cluster.
pub fn recipe(spec: &ClusterSpec) -> Result<NodeRecipe, DriverError> {
    match spec.broker {
        BrokerKind::Builtin => kafka::builtin_recipe(spec),
        BrokerKind::Nats => nats::recipe(spec),
        BrokerKind::Kafka => kafka::apache::recipe(spec),
        BrokerKind::Redis => redis::recipe(spec),
        BrokerKind::Rabbitmq => rabbitmq::recipe(spec),
        BrokerKind::Custom => {
            let r = spec
                .recipe
                .as_ref()
                .ok_or_else(|| DriverError::Recipe("custom broker without a recipe".into()))?;
            Ok(NodeRecipe {
                command: r.command.clone(),
                config: None,
                ready: r.ready,
                ready_timeout: r.ready_timeout,
                protocol: Protocol::Kafka,
                replica_reads: false,
            })
        }
    }
}

/// Fetches the broker release a cluster spec names (Kafka's jars, a
/// nats-server version) into the release cache, if it is not there yet.
/// Called before the harness enters its sandbox, which has no uplink.
pub fn fetch_release(spec: &ClusterSpec) -> Result<(), DriverError> {
    match (&spec.broker, spec.version.as_deref()) {
        (BrokerKind::Kafka, v) => {
            kafka::apache::jars(v.unwrap_or(kafka::apache::DEFAULT_VERSION)).map(|_| ())
        }
        (BrokerKind::Nats, Some(v)) => nats::server_binary_at(v).map(|_| ()),
        _ => Ok(()),
    }
}

/// The client side for nodes started from `recipe`, reached at `addrs`
/// (`host:port`, node 1 first); `peer_addrs` are their `host:peer_port`.
pub fn connect(
    recipe: &NodeRecipe,
    addrs: Vec<String>,
    peer_addrs: Vec<String>,
) -> Arc<dyn Driver> {
    match recipe.protocol {
        Protocol::Kafka => Arc::new(kafka::KafkaDriver::new(addrs, recipe.replica_reads)),
        Protocol::Nats => Arc::new(nats::NatsDriver::new(addrs)),
        Protocol::Redis { wait } => Arc::new(redis::RedisDriver::new(addrs, peer_addrs, wait)),
        Protocol::Rabbitmq { quorum, prefetch } => {
            Arc::new(rabbitmq::RabbitDriver::new(addrs, quorum, prefetch))
        }
    }
}

/// Whether the node at `addr` (node `id`) passes `ready`. Blocking.
pub fn ready(ready: Readiness, addr: &str, id: u32) -> bool {
    match ready {
        Readiness::Tcp => addr.parse().is_ok_and(|a| {
            std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
        }),
        Readiness::KafkaMetadata => {
            std::net::TcpStream::connect(addr).is_ok()
                && kafka::metadata_ready(addr, id, Duration::from_secs(2))
        }
    }
}
