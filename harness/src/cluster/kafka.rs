//! What the harness asks a Kafka-API cluster through the protocol itself:
//! readiness, topic creation, partition leaders and replicas (Metadata).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::plan::TopicSpec;

/// Leader and replicas of each partition, by node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicLayout {
    pub leaders: BTreeMap<i32, i32>,
    pub replicas: BTreeMap<i32, Vec<i32>>,
}

fn client(bootstrap: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        // Reconnect quickly after a node restarts (default backoff grows to 10 s).
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .map_err(|e| format!("kafka client: {e}"))
}

/// Metadata of `topic`, or None when the topic has no leader for some partition.
pub fn layout(bootstrap: &str, topic: &str, timeout: Duration) -> Result<TopicLayout, String> {
    let c = client(bootstrap)?;
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata: {e}"))?;
    let mut out = TopicLayout::default();
    for t in md.topics() {
        if t.name() != topic {
            continue;
        }
        if let Some(e) = t.error() {
            return Err(format!("topic {topic}: {:?}", RDKafkaErrorCode::from(e)));
        }
        for p in t.partitions() {
            out.leaders.insert(p.id(), p.leader());
            out.replicas.insert(p.id(), p.replicas().to_vec());
        }
    }
    Ok(out)
}

/// Whether a node answers Metadata listing itself among the brokers.
pub fn metadata_ready(addr: &str, id: u32, timeout: Duration) -> bool {
    let Ok(c) = client(addr) else { return false };
    c.fetch_metadata(None, timeout)
        .is_ok_and(|md| md.brokers().iter().any(|b| b.id() == id as i32))
}

/// Creates the workload topic (an existing one is fine).
pub async fn create_topic(bootstrap: &str, spec: &TopicSpec) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let min_isr = spec.min_insync_replicas.to_string();
    let topic = NewTopic::new(
        &spec.name,
        spec.partitions,
        TopicReplication::Fixed(i32::from(spec.replication_factor)),
    )
    .set("min.insync.replicas", &min_isr);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| format!("create topic: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("create topic {name}: {code:?}")),
        }
    }
    Ok(())
}
