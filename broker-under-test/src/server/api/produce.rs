//! Produce: validate batches, append them in request order, then answer
//! per acks and flush policy (acks=0: no answer; acks=1/-1 with flush
//! `always`: after the fsync that covers the batch; otherwise at once).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{code, encode, ready, Reply};
use crate::config::FlushPolicy;
use crate::partition::Partition;
use crate::server::Broker;
use crate::storage::{batch, StorageError};

struct Failure(ResponseError, String);

fn append_one(
    broker: &Broker,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
) -> Result<(Arc<Partition>, i64, i64), Failure> {
    let Some(t) = broker.topics.get(topic) else {
        return Err(Failure(
            ResponseError::UnknownTopicOrPartition,
            format!("unknown topic {topic}"),
        ));
    };
    let Some(p) = usize::try_from(index)
        .ok()
        .and_then(|i| t.partitions.get(i))
    else {
        return Err(Failure(
            ResponseError::UnknownTopicOrPartition,
            format!("{topic} has no partition {index}"),
        ));
    };
    let records = records.unwrap_or_default();
    if records.is_empty() {
        return Err(Failure(
            ResponseError::CorruptMessage,
            "produce request without records".into(),
        ));
    }
    let mut headers: Vec<_> = batch::split(&records)
        .map_err(|e| Failure(ResponseError::CorruptMessage, e.to_string()))?
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    if let Some(reason) = p.offline() {
        return Err(Failure(ResponseError::KafkaStorageError, reason));
    }
    let mut buf = records.to_vec();
    match p.append(&mut buf, &mut headers) {
        Ok(a) => Ok((p.clone(), a.base_offset, a.last_offset + 1)),
        Err(e @ StorageError::Offline { .. }) | Err(e @ StorageError::Io { .. }) => {
            Err(Failure(ResponseError::KafkaStorageError, e.to_string()))
        }
        Err(e @ StorageError::OutOfOrderSequence { .. }) => Err(Failure(
            ResponseError::OutOfOrderSequenceNumber,
            e.to_string(),
        )),
        Err(e @ StorageError::FencedEpoch { .. }) => {
            Err(Failure(ResponseError::InvalidProducerEpoch, e.to_string()))
        }
        Err(e) => Err(Failure(ResponseError::UnknownServerError, e.to_string())),
    }
}

/// Handles a produce request; the reply completes when the acks are due.
pub fn handle(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> Reply {
    let acks = req.acks;
    let mut waits = Vec::new();
    let mut topics = Vec::new();
    for (ti, td) in req.topic_data.into_iter().enumerate() {
        let name = td.name.0.to_string();
        let mut parts = Vec::new();
        for (pi, pd) in td.partition_data.into_iter().enumerate() {
            let mut r = PartitionProduceResponse::default()
                .with_index(pd.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let outcome = if !matches!(acks, -1..=1) {
                Err(Failure(
                    ResponseError::InvalidRequiredAcks,
                    format!("acks={acks}"),
                ))
            } else {
                append_one(broker, &name, pd.index, pd.records)
            };
            match outcome {
                Ok((p, base, end)) => {
                    r.base_offset = base;
                    r.log_start_offset = p.bounds().0;
                    waits.push((ti, pi, p, end));
                }
                Err(Failure(e, msg)) => {
                    tracing::debug!(topic = %name, partition = pd.index, "produce refused: {msg}");
                    r.error_code = code(e);
                    r.error_message = Some(StrBytes::from_string(msg));
                }
            }
            parts.push(r);
        }
        topics.push(
            TopicProduceResponse::default()
                .with_name(td.name)
                .with_partition_responses(parts),
        );
    }
    if acks == 0 {
        return ready(Ok(None));
    }
    let mut resp = ProduceResponse::default().with_responses(topics);
    if broker.config.flush != FlushPolicy::Always || waits.is_empty() {
        return ready(encode(&resp, version));
    }
    Box::pin(async move {
        for (ti, pi, p, end) in waits {
            if let Err(e) = p.wait_durable(end).await {
                let r = &mut resp.responses[ti].partition_responses[pi];
                r.error_code = code(ResponseError::KafkaStorageError);
                r.error_message = Some(StrBytes::from_string(e));
                r.base_offset = -1;
            }
        }
        encode(&resp, version)
    })
}
