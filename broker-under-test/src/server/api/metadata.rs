//! Metadata: the live brokers, and per partition its leader, leader epoch,
//! replicas and ISR, from this broker's copy of the controller state;
//! auto-creation of unknown topics through the controller.

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, encode, Body};
use crate::controller::state::{ClusterState, TopicState};
use crate::server::Broker;
use crate::topics::{valid_name, CreateError};

fn ids(v: &[i32]) -> Vec<BrokerId> {
    v.iter().map(|&i| BrokerId(i)).collect()
}

fn topic_entry(
    broker: &Broker,
    state: &ClusterState,
    name: &str,
    topic: &TopicState,
) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let offline: Vec<i32> = p
                .replicas
                .iter()
                .copied()
                .filter(|r| !state.live(*r))
                .collect();
            let local_failure = (p.leader == broker.config.id)
                .then(|| broker.topics.get(name, i as i32))
                .flatten()
                .and_then(|l| l.offline());
            let error = if p.leader < 0 {
                code(ResponseError::LeaderNotAvailable)
            } else if local_failure.is_some() {
                code(ResponseError::KafkaStorageError)
            } else {
                0
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(i as i32)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_partitions(partitions)
}

/// Answers Metadata; creates unknown topics when allowed.
pub async fn handle(broker: &Arc<Broker>, req: MetadataRequest, version: i16) -> Body {
    let allow_create =
        broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let requested: Option<Vec<String>> = match req.topics {
        None => None,
        Some(ref t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    };
    if let Some(names) = &requested {
        for name in names {
            let exists = broker
                .controller
                .applied
                .read(|s| s.topics.contains_key(name));
            if !exists && allow_create && valid_name(name) {
                match broker.create_topic(name, -1, -1, None, false).await {
                    Ok(_) | Err(CreateError::Exists(_)) => {}
                    Err(e) => tracing::warn!(topic = %name, "auto-create failed: {e}"),
                }
            }
        }
    }
    // Built under the state's read lock: no copy of the whole state.
    let (topics, brokers) = broker.controller.applied.read(|state| {
        let topics = match requested {
            None => state
                .topics
                .iter()
                .map(|(n, t)| topic_entry(broker, state, n, t))
                .collect(),
            Some(names) => names
                .into_iter()
                .map(|name| match state.topics.get(&name) {
                    Some(t) => topic_entry(broker, state, &name, t),
                    None => MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                        .with_error_code(code(if valid_name(&name) {
                            ResponseError::UnknownTopicOrPartition
                        } else {
                            ResponseError::InvalidTopicException
                        })),
                })
                .collect(),
        };
        // Only registered, unfenced brokers: a broker that is not (yet or any
        // more) part of the cluster sends clients elsewhere.
        let brokers: Vec<MetadataResponseBroker> = state
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(&id, b)| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(id))
                    .with_host(StrBytes::from_string(b.host.clone()))
                    .with_port(b.port)
            })
            .collect();
        (topics, brokers)
    });
    let controller = broker.controller.leader().map_or(-1, |l| l as i32);
    let resp = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_static_str("unlost")))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics);
    encode(&resp, version)
}
