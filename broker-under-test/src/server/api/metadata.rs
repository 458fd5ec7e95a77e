//! Metadata: this broker, its topics, and auto-creation of unknown topics.

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, encode, Body};
use crate::server::Broker;
use crate::topics::{valid_name, Topic};

fn topic_entry(broker: &Broker, topic: &Topic) -> MetadataResponseTopic {
    let id = BrokerId(broker.config.id);
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let offline = p.offline().is_some();
            MetadataResponsePartition::default()
                .with_error_code(if offline {
                    code(ResponseError::KafkaStorageError)
                } else {
                    0
                })
                .with_partition_index(p.index)
                .with_leader_id(id)
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(vec![id])
                .with_isr_nodes(vec![id])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
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
    let mut topics = Vec::new();
    match requested {
        None => topics.extend(broker.topics.all().iter().map(|t| topic_entry(broker, t))),
        Some(names) => {
            for name in names {
                let mut found = broker.topics.get(&name);
                if found.is_none() && allow_create && valid_name(&name) {
                    let b = broker.clone();
                    let n = name.clone();
                    let created =
                        tokio::task::spawn_blocking(move || b.topics.create(&n, -1, 1, 1)).await;
                    match created {
                        Ok(Ok(t)) => found = Some(t),
                        // Lost a race with another creator: the topic exists now.
                        Ok(Err(crate::topics::CreateError::Exists(_))) => {
                            found = broker.topics.get(&name)
                        }
                        Ok(Err(e)) => tracing::warn!(topic = %name, "auto-create failed: {e}"),
                        Err(e) => tracing::warn!(topic = %name, "auto-create task failed: {e}"),
                    }
                }
                topics.push(match found {
                    Some(t) => topic_entry(broker, &t),
                    None => MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                        .with_error_code(code(if valid_name(&name) {
                            ResponseError::UnknownTopicOrPartition
                        } else {
                            ResponseError::InvalidTopicException
                        })),
                });
            }
        }
    }
    let c = &broker.config;
    let resp = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(c.id))
            .with_host(StrBytes::from_string(c.advertise_host.clone()))
            .with_port(c.advertise_port)])
        .with_cluster_id(Some(StrBytes::from_static_str("unlost")))
        .with_controller_id(BrokerId(c.id))
        .with_topics(topics);
    encode(&resp, version)
}
