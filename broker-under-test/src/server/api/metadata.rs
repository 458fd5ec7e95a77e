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

/// The brokers a Metadata response lists: the registered, unfenced ones (a
/// broker that is not, yet or any more, part of the cluster sends clients
/// elsewhere). When every broker is fenced (all cut off from the controller
/// at once) that list is empty, and librdkafka 2.12.1 then forgets every
/// broker it knows, the bootstrap servers included, and never asks again
/// (its guard ignores only a response with neither brokers nor topics):
/// the client stalls for good. So a broker whose list would be empty lists
/// itself: it answered, so the client can reach it.
fn listed_brokers(state: &ClusterState, self_id: i32) -> Vec<MetadataResponseBroker> {
    let entry = |id: i32, b: &crate::controller::state::BrokerInfo| {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(b.host.clone()))
            .with_port(b.port)
    };
    let mut brokers: Vec<MetadataResponseBroker> = state
        .brokers
        .iter()
        .filter(|(_, b)| !b.fenced)
        .map(|(&id, b)| entry(id, b))
        .collect();
    if brokers.is_empty() {
        brokers.extend(state.brokers.get(&self_id).map(|b| entry(self_id, b)));
    }
    brokers
}

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
        let brokers = listed_brokers(state, broker.config.id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::BrokerInfo;

    fn state(fenced: &[bool]) -> ClusterState {
        let mut s = ClusterState::default();
        for (i, &f) in fenced.iter().enumerate() {
            let id = i as i32 + 1;
            s.brokers.insert(
                id,
                BrokerInfo {
                    host: format!("10.77.{id}.2"),
                    port: 9092,
                    epoch: 1,
                    fenced: f,
                },
            );
        }
        s
    }

    fn listed(s: &ClusterState, me: i32) -> Vec<i32> {
        listed_brokers(s, me).iter().map(|b| b.node_id.0).collect()
    }

    #[test]
    fn metadata_lists_unfenced_brokers_and_never_none_while_this_one_is_registered() {
        assert_eq!(listed(&state(&[false, true, false]), 2), vec![1, 3]);
        // Everyone fenced: the answering broker lists itself.
        assert_eq!(listed(&state(&[true, true, true]), 2), vec![2]);
        // Not registered at all (a new broker): nothing to list.
        assert_eq!(listed(&state(&[true, true, true]), 4), Vec::<i32>::new());
    }
}
