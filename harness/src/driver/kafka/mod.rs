//! The Kafka-API driver: the builtin broker (unlost-broker), custom Kafka
//! recipes, and later Apache Kafka. Producers and group members through
//! librdkafka (rdkafka); the final drain and replica reads through the
//! harness's own blocking connection (`wire`), which sees which node
//! answered and its leader epoch.

pub mod apache;
mod client;
pub mod drain;
pub mod replicas;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::{
    CommittedPositions, Drained, Driver, DriverError, Member, MemberSetup, NodeRecipe, Producer,
    ProducerSetup, Protocol, ReplicaReads, TopicLayout,
};
use crate::history::History;
use crate::plan::{ClusterSpec, Readiness, TopicSpec};

/// Where the builtin broker binary is: $UNLOST_BROKER_BIN, next to this
/// executable (cargo puts both in target/<profile>), or on PATH.
pub fn broker_binary() -> Result<PathBuf, DriverError> {
    if let Ok(p) = std::env::var("UNLOST_BROKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| DriverError::Missing {
        what: "unlost-broker".into(),
        hint: format!("this program's own path is unknown ({e}): set UNLOST_BROKER_BIN"),
    })?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("unlost-broker");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("unlost-broker"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| DriverError::Missing {
            what: "unlost-broker".into(),
            hint: "build it (cargo build -p unlost-broker) or set UNLOST_BROKER_BIN".into(),
        })
}

/// The builtin broker's recipe: plan settings become `--flag value`.
pub fn builtin_recipe(spec: &ClusterSpec) -> Result<NodeRecipe, DriverError> {
    let mut command = vec![
        broker_binary()?.display().to_string(),
        "--id".into(),
        "{id}".into(),
        "--listen".into(),
        "{host}:{port}".into(),
        "--data-dir".into(),
        "{data_dir}".into(),
        "--controller-listen".into(),
        "{host}:{peer_port}".into(),
        "--voters".into(),
        "{peer_addrs}".into(),
    ];
    for (k, v) in &spec.settings {
        command.push(format!("--{}", k.replace('_', "-")));
        command.push(v.clone());
    }
    Ok(NodeRecipe {
        command,
        config: None,
        ready: Readiness::KafkaMetadata,
        ready_timeout: Duration::from_secs(30),
        protocol: Protocol::Kafka,
        // The builtin broker serves Fetch with the debugging replica id
        // from any replica.
        replica_reads: true,
    })
}

/// A Kafka-API cluster's client side.
pub struct KafkaDriver {
    nodes: Vec<String>,
    bootstrap: String,
    replica_reads: bool,
    /// The leadership the last drain was confirmed against (replica reads
    /// start from it).
    confirmed: Mutex<Option<drain::Confirmed>>,
    /// One metadata client for `layout`, kept between calls (the run asks
    /// every 500 ms; a client per call started and stopped its threads
    /// 7,200 times an hour). Dropped after an error, made again on the
    /// next call.
    metadata: Mutex<Option<Arc<BaseConsumer>>>,
}

impl KafkaDriver {
    /// A driver for the nodes at `nodes` (`host:port` each).
    pub fn new(nodes: Vec<String>, replica_reads: bool) -> KafkaDriver {
        KafkaDriver {
            bootstrap: nodes.join(","),
            nodes,
            replica_reads,
            confirmed: Mutex::new(None),
            metadata: Mutex::new(None),
        }
    }

    /// The kept metadata client (made when there is none).
    fn metadata_client(&self) -> Result<Arc<BaseConsumer>, DriverError> {
        let mut m = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(admin_client(&self.bootstrap)?);
        *m = Some(c.clone());
        Ok(c)
    }
}

fn admin_client(bootstrap: &str) -> Result<BaseConsumer, DriverError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        // Reconnect quickly after a node restarts (default backoff grows to 10 s).
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .map_err(|e| DriverError::Connect {
            to: bootstrap.to_string(),
            reason: e.to_string(),
        })
}

/// Whether a node answers Metadata listing itself among the brokers.
pub fn metadata_ready(addr: &str, id: u32, timeout: Duration) -> bool {
    let Ok(c) = admin_client(addr) else {
        return false;
    };
    c.fetch_metadata(None, timeout)
        .is_ok_and(|md| md.brokers().iter().any(|b| b.id() == id as i32))
}

/// Creates the topic, retrying for up to a minute: a node that accepts
/// connections may not have joined its controller yet (a custom recipe
/// that only waits for TCP), and CreateTopics then times out or is refused.
async fn create_topic(bootstrap: &str, spec: &TopicSpec) -> Result<(), DriverError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match create_topic_once(bootstrap, spec).await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn create_topic_once(bootstrap: &str, spec: &TopicSpec) -> Result<(), DriverError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create()
        .map_err(|e| DriverError::Connect {
            to: bootstrap.to_string(),
            reason: e.to_string(),
        })?;
    let min_isr = spec.min_insync_replicas.to_string();
    let topic = NewTopic::new(
        &spec.name,
        spec.partitions,
        TopicReplication::Fixed(i32::from(spec.replication_factor)),
    )
    .set("min.insync.replicas", &min_isr);
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| DriverError::refused("create topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(DriverError::refused(
                    format!("create topic {name}"),
                    format!("{code:?}"),
                ))
            }
        }
    }
    Ok(())
}

impl Driver for KafkaDriver {
    fn name(&self) -> &'static str {
        "kafka-api"
    }

    fn create_topic<'a>(&'a self, spec: &'a TopicSpec) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(create_topic(&self.bootstrap, spec))
    }

    fn layout(&self, topic: &str, timeout: Duration) -> Result<TopicLayout, DriverError> {
        let c = self.metadata_client()?;
        let md = c.fetch_metadata(Some(topic), timeout).map_err(|e| {
            *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = None;
            DriverError::refused("metadata", e)
        })?;
        let mut out = TopicLayout::default();
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            if let Some(e) = t.error() {
                return Err(DriverError::refused(
                    format!("topic {topic}"),
                    format!("{:?}", RDKafkaErrorCode::from(e)),
                ));
            }
            for p in t.partitions() {
                out.leaders.insert(p.id(), p.leader());
                out.replicas.insert(p.id(), p.replicas().to_vec());
            }
        }
        Ok(out)
    }

    fn producer<'a>(
        &'a self,
        setup: &'a ProducerSetup,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>, DriverError>> {
        Box::pin(async move {
            let p = client::KafkaProducer::new(&self.bootstrap, setup)?;
            Ok(Box::new(p) as Box<dyn Producer>)
        })
    }

    fn member(&self, setup: MemberSetup) -> Result<Box<dyn Member>, DriverError> {
        Ok(Box::new(client::KafkaMember::new(&self.bootstrap, setup)?))
    }

    fn drain(
        &self,
        topic: &str,
        partitions: i32,
        timeout: Duration,
        history: &History,
    ) -> Option<Drained> {
        let confirmed = drain::drain(&self.nodes, topic, partitions, timeout, history)?;
        let high = confirmed.high.clone();
        *self.confirmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(confirmed);
        Some(Drained { high })
    }

    fn replica_reads(&self) -> Option<&dyn ReplicaReads> {
        self.replica_reads.then_some(self as &dyn ReplicaReads)
    }

    fn committed_positions(&self) -> Option<&dyn CommittedPositions> {
        Some(self)
    }
}

impl ReplicaReads for KafkaDriver {
    fn read_replicas(
        &self,
        nodes: &BTreeMap<u32, String>,
        topic: &str,
        drained: &Drained,
        timeout: Duration,
        history: &History,
    ) -> usize {
        let confirmed = self
            .confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|c| c.high == drained.high);
        match confirmed {
            Some(c) => replicas::read_replicas(nodes, topic, &c, timeout, history),
            None => {
                history.record(
                    "replicas",
                    crate::history::EventKind::Note {
                        message: "replicas not read: no drain of this driver confirmed these ends"
                            .into(),
                    },
                );
                0
            }
        }
    }
}

impl CommittedPositions for KafkaDriver {
    fn committed(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<(i32, i64)>, DriverError> {
        client::committed(&self.bootstrap, group, topic, partitions)
    }
}
