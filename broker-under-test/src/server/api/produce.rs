//! Produce (leaders only): validate batches, append them in request order,
//! then answer per acks and flush policy. acks=0: no answer. acks=1: after
//! the local append (and its fsync with flush `always`). acks=all: checks
//! min.insync.replicas before the append (NOT_ENOUGH_REPLICAS), then waits
//! for the high watermark to pass the batch and checks again
//! (NOT_ENOUGH_REPLICAS_AFTER_APPEND), as Kafka does.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use std::time::Duration;

use tokio::time::Instant;

use super::{code, encode, leader_replica, ready, Reply};
use crate::bugs::{self, Bug};
use crate::config::FlushPolicy;
use crate::partition::Partition;
use crate::server::Broker;
use crate::storage::{batch, StorageError};

struct Failure(ResponseError, String);

/// An append made, and what its answer still waits for.
struct Pending {
    partition: Arc<Partition>,
    end: i64,
    epoch: i32,
    min_isr: i32,
}

fn append_one(
    broker: &Broker,
    topic: &str,
    index: i32,
    records: Option<Bytes>,
    acks: i16,
) -> Result<(i64, i64, Pending), Failure> {
    let p = leader_replica(broker, topic, index)
        .map_err(|e| Failure(e, format!("{topic}-{index}: {e:?}")))?;
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
    let min_isr = broker
        .controller
        .applied
        .read(|s| s.topics.get(topic).map(|t| t.config.min_insync_replicas))
        .unwrap_or(1);
    let progress = p.progress();
    if acks == -1 && (progress.isr_size as i32) < min_isr && !bugs::on(Bug::MinIsrNotEnforced) {
        return Err(Failure(
            ResponseError::NotEnoughReplicas,
            format!(
                "{topic}-{index}: ISR has {} members, min.insync.replicas is {min_isr}",
                progress.isr_size
            ),
        ));
    }
    let mut buf = records.to_vec();
    match p.append(&mut buf, &mut headers) {
        Ok(Some(a)) => Ok((
            a.base_offset,
            p.bounds().0,
            Pending {
                end: a.last_offset + 1,
                epoch: progress.leader_epoch,
                min_isr,
                partition: p,
            },
        )),
        Ok(None) => Err(Failure(
            ResponseError::NotLeaderOrFollower,
            format!("{topic}-{index}: no longer the leader"),
        )),
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

/// Waits for what acks=1 / acks=all need: the fsync (flush `always`), and
/// for acks=all the high watermark past the batch with the ISR still at
/// min.insync.replicas.
async fn wait_acks(pending: &Pending, acks: i16, deadline: Instant) -> Result<(), Failure> {
    let p = &pending.partition;
    if p.policy() == FlushPolicy::Always && !bugs::on(Bug::AckBeforeFsync) {
        match tokio::time::timeout_at(deadline, p.wait_durable(pending.end)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failure(ResponseError::KafkaStorageError, e)),
            Err(_) => {
                return Err(Failure(
                    ResponseError::RequestTimedOut,
                    "fsync did not finish in time".into(),
                ))
            }
        }
    }
    if acks != -1 {
        return Ok(());
    }
    let mut rx = p.watch();
    let waited = tokio::time::timeout_at(
        deadline,
        rx.wait_for(|pr| {
            pr.high_watermark >= pending.end
                || !pr.is_leader
                || pr.leader_epoch != pending.epoch
                || pr.failed.is_some()
        }),
    )
    .await;
    let pr = match waited {
        Err(_) => {
            return Err(Failure(
                ResponseError::RequestTimedOut,
                format!(
                    "offsets below {} not replicated to the ISR in time",
                    pending.end
                ),
            ))
        }
        Ok(Err(_)) => {
            return Err(Failure(
                ResponseError::NotLeaderOrFollower,
                "partition closed".into(),
            ))
        }
        Ok(Ok(pr)) => pr.clone(),
    };
    if let Some(e) = pr.failed {
        return Err(Failure(ResponseError::KafkaStorageError, e));
    }
    if !pr.is_leader || pr.leader_epoch != pending.epoch {
        return Err(Failure(
            ResponseError::NotLeaderOrFollower,
            "leadership changed before the ISR had the batch".into(),
        ));
    }
    if (pr.isr_size as i32) < pending.min_isr && !bugs::on(Bug::MinIsrNotEnforced) {
        return Err(Failure(
            ResponseError::NotEnoughReplicasAfterAppend,
            format!(
                "written, but the ISR shrank to {} below min.insync.replicas {}",
                pr.isr_size, pending.min_isr
            ),
        ));
    }
    Ok(())
}

/// Handles a produce request; the reply completes when the acks are due.
pub fn handle(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> Reply {
    let acks = req.acks;
    let deadline = Instant::now() + Duration::from_millis(req.timeout_ms.clamp(0, 300_000) as u64);
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
                append_one(broker, &name, pd.index, pd.records, acks)
            };
            match outcome {
                Ok((base, start, pending)) => {
                    r.base_offset = base;
                    r.log_start_offset = start;
                    waits.push((ti, pi, pending));
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
    if waits.is_empty() || (acks == 1 && broker.config.flush != FlushPolicy::Always) {
        return ready(encode(&resp, version));
    }
    Box::pin(async move {
        for (ti, pi, pending) in waits {
            if let Err(Failure(e, msg)) = wait_acks(&pending, acks, deadline).await {
                tracing::debug!(topic = %pending.partition.topic, partition = pending.partition.index, "produce not acknowledged: {msg}");
                let r = &mut resp.responses[ti].partition_responses[pi];
                r.error_code = code(e);
                r.error_message = Some(StrBytes::from_string(msg));
                r.base_offset = -1;
            }
        }
        encode(&resp, version)
    })
}
