//! Consumer-group coordination on a single broker: FindCoordinator (always
//! this broker), OffsetCommit (durable before the answer) and OffsetFetch.

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::*;
use kafka_protocol::messages::offset_fetch_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, encode, ready, Body, Reply};
use crate::server::Broker;
use crate::storage::offsets::{Committed, OffsetKey};

/// This broker coordinates every group.
pub fn find_coordinator(broker: &Arc<Broker>, req: FindCoordinatorRequest, version: i16) -> Body {
    let c = &broker.config;
    let host = StrBytes::from_string(c.advertise_host.clone());
    let mut resp = FindCoordinatorResponse::default();
    if version < 4 {
        resp = resp
            .with_node_id(BrokerId(c.id))
            .with_host(host.clone())
            .with_port(c.advertise_port);
    } else {
        resp.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(c.id))
                    .with_host(host.clone())
                    .with_port(c.advertise_port)
            })
            .collect();
    }
    encode(&resp, version)
}

/// Stores commits; the answer is sent after they are fsynced.
pub fn offset_commit(broker: &Arc<Broker>, req: OffsetCommitRequest, version: i16) -> Reply {
    let group = req.group_id.0.to_string();
    // A commit tagged with a generation must come from a current member.
    let member_error = broker.coordinator.check_commit(
        &group,
        req.generation_id_or_member_epoch,
        req.member_id.as_str(),
    );
    let mut entries = Vec::new();
    let mut topics = Vec::new();
    for t in req.topics {
        let topic = broker.topics.get(t.name.0.as_str());
        let mut parts = Vec::new();
        for p in t.partitions {
            let known = topic.as_ref().is_some_and(|tp| {
                usize::try_from(p.partition_index).is_ok_and(|i| i < tp.partitions.len())
            });
            let mut r =
                OffsetCommitResponsePartition::default().with_partition_index(p.partition_index);
            if member_error != 0 {
                r.error_code = member_error;
            } else if known {
                entries.push((
                    OffsetKey {
                        group: group.clone(),
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                    },
                    Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.map(|m| m.to_string()),
                    },
                ));
            } else {
                r.error_code = code(ResponseError::UnknownTopicOrPartition);
            }
            parts.push(r);
        }
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    let mut resp = OffsetCommitResponse::default().with_topics(topics);
    if entries.is_empty() {
        return ready(encode(&resp, version));
    }
    let store = broker.offsets.clone();
    Box::pin(async move {
        let result = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .commit(entries)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = result {
            tracing::error!(group = %group, "offset commit failed: {e}");
            for t in &mut resp.topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = code(ResponseError::KafkaStorageError);
                    }
                }
            }
        }
        encode(&resp, version)
    })
}

/// Committed offsets of one group: the requested partitions, or all.
fn group_offsets(
    broker: &Broker,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Vec<(String, Vec<(i32, Committed)>)> {
    let store = broker.offsets.lock().unwrap_or_else(|e| e.into_inner());
    let none = || Committed {
        offset: -1,
        leader_epoch: -1,
        metadata: Some(String::new()),
    };
    match wanted {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, parts)| {
                let list = parts
                    .into_iter()
                    .map(|p| {
                        let key = OffsetKey {
                            group: group.to_string(),
                            topic: topic.clone(),
                            partition: p,
                        };
                        (p, store.get(&key).cloned().unwrap_or_else(none))
                    })
                    .collect();
                (topic, list)
            })
            .collect(),
        None => {
            let mut out: Vec<(String, Vec<(i32, Committed)>)> = Vec::new();
            for (k, v) in store.group(group) {
                match out.last_mut() {
                    Some((t, list)) if *t == k.topic => list.push((k.partition, v.clone())),
                    _ => out.push((k.topic.clone(), vec![(k.partition, v.clone())])),
                }
            }
            out
        }
    }
}

/// Answers OffsetFetch, in the single-group (v1-7) or multi-group (v8) shape.
pub fn offset_fetch(broker: &Arc<Broker>, req: OffsetFetchRequest, version: i16) -> Body {
    let meta = |c: &Committed| {
        Some(StrBytes::from_string(
            c.metadata.clone().unwrap_or_default(),
        ))
    };
    if version < 8 {
        let wanted = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let topics = group_offsets(broker, req.group_id.0.as_str(), wanted)
            .into_iter()
            .map(|(topic, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic)))
                    .with_partitions(
                        parts
                            .iter()
                            .map(|(p, c)| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(c.offset)
                                    .with_committed_leader_epoch(c.leader_epoch)
                                    .with_metadata(meta(c))
                            })
                            .collect(),
                    )
            })
            .collect();
        return encode(&OffsetFetchResponse::default().with_topics(topics), version);
    }
    let groups = req
        .groups
        .into_iter()
        .map(|g| {
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let topics = group_offsets(broker, g.group_id.0.as_str(), wanted)
                .into_iter()
                .map(|(topic, parts)| {
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(StrBytes::from_string(topic)))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|(p, c)| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(c.offset)
                                        .with_committed_leader_epoch(c.leader_epoch)
                                        .with_metadata(meta(c))
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponseGroup::default()
                .with_group_id(g.group_id)
                .with_topics(topics)
        })
        .collect();
    encode(&OffsetFetchResponse::default().with_groups(groups), version)
}
