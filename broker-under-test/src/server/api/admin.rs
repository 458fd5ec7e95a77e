//! ApiVersions and CreateTopics.

use std::sync::Arc;

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, encode, Body, SUPPORTED};
use crate::server::Broker;
use crate::topics::CreateError;

fn versions() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(k, min, max)| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// The versions this broker serves.
pub fn api_versions(version: i16) -> Body {
    encode(
        &ApiVersionsResponse::default().with_api_keys(versions()),
        version,
    )
}

/// KIP-511: an ApiVersions request newer than we serve gets a v0 answer
/// with UNSUPPORTED_VERSION and our versions, so the client can retry lower.
pub fn api_versions_unsupported() -> Body {
    let resp = ApiVersionsResponse::default()
        .with_error_code(code(ResponseError::UnsupportedVersion))
        .with_api_keys(versions());
    encode(&resp, 0)
}

fn create_error_code(e: &CreateError) -> i16 {
    code(match e {
        CreateError::Exists(_) => ResponseError::TopicAlreadyExists,
        CreateError::InvalidName(_) => ResponseError::InvalidTopicException,
        CreateError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        CreateError::InvalidReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
        CreateError::InvalidConfig(_) => ResponseError::InvalidConfig,
        CreateError::Controller(_) => ResponseError::RequestTimedOut,
    })
}

/// Creates topics through the controller (`min.insync.replicas` is the
/// one topic config honoured).
pub async fn create_topics(broker: &Arc<Broker>, req: CreateTopicsRequest, version: i16) -> Body {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let mut min_isr = None;
        let mut error = None;
        for c in &t.configs {
            // Other topic configs are accepted and ignored.
            if let ("min.insync.replicas", Some(v)) =
                (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))
            {
                match v.parse::<i32>() {
                    Ok(n) => min_isr = Some(n),
                    Err(_) => {
                        error = Some(CreateError::InvalidConfig(format!(
                            "min.insync.replicas={v}"
                        )))
                    }
                }
            }
        }
        if !t.assignments.is_empty() && error.is_none() {
            error = Some(CreateError::InvalidConfig(
                "manual replica assignments are not supported; give a replication factor".into(),
            ));
        }
        let outcome = match error {
            Some(e) => Err(e),
            None => broker
                .create_topic(
                    &name,
                    t.num_partitions,
                    t.replication_factor,
                    min_isr,
                    req.validate_only,
                )
                .await
                .map(|_| ()),
        };
        match outcome {
            Ok(()) => {
                let config = broker
                    .controller
                    .applied
                    .read(|s| s.topics.get(&name).map(|t| t.config.clone()));
                if let Some(c) = config {
                    result.num_partitions = c.partitions;
                    result.replication_factor = c.replication_factor;
                } else {
                    result.num_partitions = t.num_partitions;
                    result.replication_factor = t.replication_factor;
                }
            }
            Err(e) => {
                tracing::info!(topic = %name, "create topic refused: {e}");
                result.error_code = create_error_code(&e);
                result.error_message = Some(StrBytes::from_string(e.to_string()));
                result.num_partitions = -1;
                result.replication_factor = -1;
            }
        }
        results.push(result);
    }
    encode(
        &CreateTopicsResponse::default().with_topics(results),
        version,
    )
}

/// Gives an idempotent producer its id (epoch 0), or bumps the epoch of the
/// id it already has (KIP-360). Transactions are not supported.
pub async fn init_producer_id(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
    version: i16,
) -> Body {
    let mut resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        resp.error_code = code(ResponseError::InvalidRequest);
        tracing::info!(
            "InitProducerId with a transactional id refused: transactions are not supported"
        );
        return encode(&resp, version);
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch.saturating_add(1);
        return encode(&resp, version);
    }
    match broker.allocate_producer_id().await {
        Ok(id) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        Err(e) => {
            tracing::error!("allocate a producer id: {e}");
            resp.error_code = code(ResponseError::CoordinatorNotAvailable);
        }
    }
    encode(&resp, version)
}
