//! Request dispatch: decodes a request body by API key and version and runs
//! its handler. Input: header + body bytes. Output: a `Reply`, a future of
//! the encoded response body (None for produce with acks=0).

mod admin;
mod epochs;
mod fetch;
mod groups;
mod membership;
mod metadata;
mod offsets;
mod produce;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::Broker;

/// An encoded response body; None when no response is due (acks=0);
/// Err when it cannot be encoded (the connection is then closed).
pub type Body = Result<Option<Bytes>, String>;

/// The response body, once the request is complete.
pub type Reply = Pin<Box<dyn Future<Output = Body> + Send>>;

/// The APIs and versions this broker serves (advertised in ApiVersions).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 9),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::JoinGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 3),
    (ApiKey::Heartbeat, 0, 3),
    (ApiKey::LeaveGroup, 0, 3),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
];

/// Whether this broker serves `version` of `key`.
pub fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

/// Encodes a response body at `version`.
pub fn encode<T: Encodable>(resp: &T, version: i16) -> Body {
    let mut buf = BytesMut::new();
    match resp.encode(&mut buf, version) {
        Ok(()) => Ok(Some(buf.freeze())),
        Err(e) => Err(format!(
            "cannot encode {} v{version}: {e}",
            std::any::type_name::<T>()
        )),
    }
}

/// A reply that is complete already.
pub fn ready(body: Body) -> Reply {
    Box::pin(std::future::ready(body))
}

fn decode<T: Decodable>(key: ApiKey, mut body: Bytes, version: i16) -> Result<T, String> {
    T::decode(&mut body, version)
        .map_err(|e| format!("undecodable {key:?} v{version} request: {e}"))
}

/// Runs one request. Err closes the connection with that reason.
pub async fn dispatch(
    broker: &Arc<Broker>,
    key: ApiKey,
    header: &RequestHeader,
    body: Bytes,
) -> Result<Reply, String> {
    let v = header.request_api_version;
    if !supported(key, v) {
        if key == ApiKey::ApiVersions {
            return Ok(ready(admin::api_versions_unsupported()));
        }
        return Err(format!("unsupported API {key:?} v{v}"));
    }
    Ok(match key {
        ApiKey::ApiVersions => {
            let _: ApiVersionsRequest = decode(key, body, v)?;
            ready(admin::api_versions(v))
        }
        ApiKey::Metadata => ready(metadata::handle(broker, decode(key, body, v)?, v).await),
        ApiKey::CreateTopics => ready(admin::create_topics(broker, decode(key, body, v)?, v).await),
        ApiKey::Produce => produce::handle(broker, decode(key, body, v)?, v),
        ApiKey::Fetch => fetch::handle(broker, decode(key, body, v)?, v),
        ApiKey::ListOffsets => ready(offsets::list_offsets(broker, decode(key, body, v)?, v)),
        ApiKey::FindCoordinator => {
            ready(groups::find_coordinator(broker, decode(key, body, v)?, v))
        }
        ApiKey::OffsetCommit => groups::offset_commit(broker, decode(key, body, v)?, v),
        ApiKey::OffsetFetch => ready(groups::offset_fetch(broker, decode(key, body, v)?, v).await),
        ApiKey::JoinGroup => {
            let client = header
                .client_id
                .as_ref()
                .map_or("consumer".to_string(), |c| c.to_string());
            membership::join(broker, &client, decode(key, body, v)?, v)
        }
        ApiKey::SyncGroup => membership::sync(broker, decode(key, body, v)?, v),
        ApiKey::Heartbeat => membership::heartbeat(broker, decode(key, body, v)?, v),
        ApiKey::LeaveGroup => membership::leave(broker, decode(key, body, v)?, v),
        ApiKey::InitProducerId => {
            ready(admin::init_producer_id(broker, decode(key, body, v)?, v).await)
        }
        ApiKey::OffsetForLeaderEpoch => ready(epochs::offset_for_leader_epoch(
            broker,
            decode(key, body, v)?,
            v,
        )),
        _ => return Err(format!("unsupported API {key:?} v{v}")),
    })
}

/// The local replica a client request must go to: the partition's leader.
pub fn leader_replica(
    broker: &Broker,
    topic: &str,
    partition: i32,
) -> Result<Arc<crate::partition::Partition>, kafka_protocol::ResponseError> {
    local_replica(broker, topic, partition, true)
}

/// This broker's replica of a partition (only if it leads, with
/// `leader_only`): UNKNOWN_TOPIC_OR_PARTITION when the cluster has no such
/// partition, NOT_LEADER_OR_FOLLOWER when this broker cannot serve it.
pub fn local_replica(
    broker: &Broker,
    topic: &str,
    partition: i32,
    leader_only: bool,
) -> Result<Arc<crate::partition::Partition>, kafka_protocol::ResponseError> {
    use kafka_protocol::ResponseError;
    let known = broker
        .controller
        .applied
        .read(|s| s.partition(topic, partition).is_some());
    if !known {
        return Err(ResponseError::UnknownTopicOrPartition);
    }
    match broker.topics.get(topic, partition) {
        Some(p) if !leader_only || p.is_leader() => Ok(p),
        _ => Err(ResponseError::NotLeaderOrFollower),
    }
}

/// The error code of a Kafka error.
pub fn code(e: kafka_protocol::ResponseError) -> i16 {
    e.code()
}
