//! Consumer-group offsets: FindCoordinator (the controller's Raft leader),
//! OffsetCommit (a controller write, so it is on a majority of voters'
//! disks before the answer) and OffsetFetch (a linearizable read of the
//! controller state on the coordinator).

use std::sync::Arc;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::*;
use kafka_protocol::messages::offset_fetch_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::membership::not_coordinator;
use super::{code, encode, ready, Body, Reply};
use crate::bugs::{self, Bug};
use crate::controller::state::{Command, Reply as ControllerReply};
use crate::server::Broker;
use crate::storage::offsets::Committed;

/// The coordinator of every group: the Raft leader, as a (id, host, port).
fn coordinator(broker: &Broker) -> Option<(i32, String, i32)> {
    let leader = broker.controller.leader()? as i32;
    broker.controller.applied.read(|s| {
        s.brokers
            .get(&leader)
            .map(|b| (leader, b.host.clone(), b.port))
    })
}

/// Points clients at the coordinator (COORDINATOR_NOT_AVAILABLE during an
/// election).
pub fn find_coordinator(broker: &Arc<Broker>, req: FindCoordinatorRequest, version: i16) -> Body {
    let found = coordinator(broker);
    let (error, id, host, port) = match &found {
        Some((id, host, port)) => (0, *id, host.clone(), *port),
        None => (
            code(ResponseError::CoordinatorNotAvailable),
            -1,
            String::new(),
            -1,
        ),
    };
    let host = StrBytes::from_string(host);
    let mut resp = FindCoordinatorResponse::default();
    if version < 4 {
        resp = resp
            .with_error_code(error)
            .with_node_id(BrokerId(id))
            .with_host(host.clone())
            .with_port(port);
    } else {
        resp.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_error_code(error)
                    .with_node_id(BrokerId(id))
                    .with_host(host.clone())
                    .with_port(port)
            })
            .collect();
    }
    encode(&resp, version)
}

/// Stores commits through the controller; answered once committed there.
pub fn offset_commit(broker: &Arc<Broker>, req: OffsetCommitRequest, version: i16) -> Reply {
    let group = req.group_id.0.to_string();
    // A commit tagged with a generation must come from a current member.
    let member_error = if broker.controller.is_leader() {
        broker.coordinator.check_commit(
            &group,
            req.generation_id_or_member_epoch,
            req.member_id.as_str(),
        )
    } else {
        not_coordinator()
    };
    let mut entries = Vec::new();
    let mut topics = Vec::new();
    for t in req.topics {
        let mut parts = Vec::new();
        for p in t.partitions {
            let known = broker
                .controller
                .applied
                .read(|s| s.partition(t.name.0.as_str(), p.partition_index).is_some());
            let mut r =
                OffsetCommitResponsePartition::default().with_partition_index(p.partition_index);
            if member_error != 0 {
                tracing::info!(group = %group, partition = p.partition_index, error = member_error, "offset commit refused");
                r.error_code = member_error;
            } else if known {
                entries.push((
                    t.name.0.to_string(),
                    p.partition_index,
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
    if bugs::on(Bug::CommitFirstPartitionOnly) {
        entries.truncate(1);
    }
    if entries.is_empty() {
        return ready(encode(&resp, version));
    }
    let broker = broker.clone();
    Box::pin(async move {
        let cmd = Command::CommitOffsets {
            group: group.clone(),
            offsets: entries,
        };
        let failure = match broker.controller.propose(cmd).await {
            Ok(ControllerReply::Ok) => None,
            Ok(other) => Some(format!("unexpected controller reply {other:?}")),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            tracing::warn!(group = %group, "offset commit failed: {e}");
            for t in &mut resp.topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = code(ResponseError::CoordinatorNotAvailable);
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
    let none = || Committed {
        offset: -1,
        leader_epoch: -1,
        metadata: Some(String::new()),
    };
    broker.controller.applied.read(|s| {
        let stored = s.offsets.get(group);
        match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, parts)| {
                    let list = parts
                        .into_iter()
                        .map(|p| {
                            let c = stored
                                .and_then(|g| g.get(&(topic.clone(), p)))
                                .cloned()
                                .unwrap_or_else(none);
                            (p, c)
                        })
                        .collect();
                    (topic, list)
                })
                .collect(),
            None => {
                let mut out: Vec<(String, Vec<(i32, Committed)>)> = Vec::new();
                for ((topic, partition), v) in stored.into_iter().flatten() {
                    match out.last_mut() {
                        Some((t, list)) if t == topic => list.push((*partition, v.clone())),
                        _ => out.push((topic.clone(), vec![(*partition, v.clone())])),
                    }
                }
                out
            }
        }
    })
}

/// Answers OffsetFetch, in the single-group (v1-7) or multi-group (v8) shape.
pub async fn offset_fetch(broker: &Arc<Broker>, req: OffsetFetchRequest, version: i16) -> Body {
    // Only the coordinator answers, after catching up with every commit.
    let error = if !broker.controller.is_leader() {
        not_coordinator()
    } else if let Err(e) = broker.controller.read_barrier().await {
        tracing::info!("offset fetch refused: {e}");
        not_coordinator()
    } else {
        0
    };
    if error != 0 {
        let resp = if version < 8 {
            OffsetFetchResponse::default().with_error_code(if version >= 2 { error } else { 0 })
        } else {
            OffsetFetchResponse::default().with_groups(
                req.groups
                    .into_iter()
                    .map(|g| {
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(error)
                    })
                    .collect(),
            )
        };
        return encode(&resp, version);
    }
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
                                    .with_committed_offset(
                                        c.offset + i64::from(bugs::on(Bug::OffsetFetchPlusOne)),
                                    )
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
                                        .with_committed_offset(
                                            c.offset + i64::from(bugs::on(Bug::OffsetFetchPlusOne)),
                                        )
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
