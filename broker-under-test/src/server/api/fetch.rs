//! Fetch: reads batches below the high watermark, long-polling up to
//! `max_wait_ms` until `min_bytes` are available.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::{code, encode, Reply};
use crate::server::Broker;
use crate::storage::StorageError;

/// Longest long-poll honoured, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Checks a client's view of the leader epoch against ours.
pub fn epoch_error(client: i32, ours: i32) -> Option<ResponseError> {
    match client {
        c if c < 0 || c == ours => None,
        c if c < ours => Some(ResponseError::FencedLeaderEpoch),
        _ => Some(ResponseError::UnknownLeaderEpoch),
    }
}

/// Builds a response from the current logs; returns it with its record bytes
/// and whether any partition had an error.
fn read_all(broker: &Broker, req: &FetchRequest) -> (FetchResponse, usize, bool) {
    let mut budget = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut total = 0;
    let mut errors = false;
    let mut topics = Vec::new();
    for ft in &req.topics {
        let topic = broker.topics.get(ft.topic.0.as_str());
        let mut parts = Vec::new();
        for fp in &ft.partitions {
            let mut r = PartitionData::default()
                .with_partition_index(fp.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            let p = topic.as_ref().and_then(|t| {
                usize::try_from(fp.partition)
                    .ok()
                    .and_then(|i| t.partitions.get(i))
            });
            let outcome = match p {
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(p) => match epoch_error(fp.current_leader_epoch, p.leader_epoch) {
                    Some(e) => Err(e),
                    None => {
                        let progress = p.progress();
                        r.high_watermark = progress.high_watermark;
                        r.last_stable_offset = progress.high_watermark;
                        r.log_start_offset = p.bounds().0;
                        let max = (fp.partition_max_bytes.max(0) as usize).min(budget);
                        // The first partition may exceed the budget by one batch (KIP-74).
                        let max = if total == 0 { max.max(1) } else { max };
                        if max == 0 {
                            Ok(Vec::new())
                        } else {
                            p.read(fp.fetch_offset, max).map_err(|e| match e {
                                StorageError::OutOfRange { .. } => ResponseError::OffsetOutOfRange,
                                _ => ResponseError::KafkaStorageError,
                            })
                        }
                    }
                },
            };
            match outcome {
                Ok(bytes) => {
                    total += bytes.len();
                    budget = budget.saturating_sub(bytes.len());
                    r.records = Some(Bytes::from(bytes));
                }
                Err(e) => {
                    errors = true;
                    r.error_code = code(e);
                    r.records = Some(Bytes::new());
                }
            }
            parts.push(r);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(ft.topic.clone())
                .with_partitions(parts),
        );
    }
    (
        FetchResponse::default().with_responses(topics),
        total,
        errors,
    )
}

/// Handles a fetch; the reply completes when data or the deadline arrives.
pub fn handle(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> Reply {
    let broker = broker.clone();
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    Box::pin(async move {
        let mut appended = broker.appended.subscribe();
        loop {
            appended.borrow_and_update();
            let (resp, bytes, errors) = read_all(&broker, &req);
            if bytes >= min_bytes || errors || req.topics.is_empty() || Instant::now() >= deadline {
                return encode(&resp, version);
            }
            if tokio::time::timeout_at(deadline, appended.changed())
                .await
                .is_err()
            {
                let (resp, _, _) = read_all(&broker, &req);
                return encode(&resp, version);
            }
        }
    })
}
