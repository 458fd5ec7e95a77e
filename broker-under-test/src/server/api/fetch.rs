//! Fetch: consumers read the leader below the high watermark; followers
//! (replica id >= 0) read it up to the log end and, by the offset they ask
//! for, tell the leader how far they have copied. Long-polls up to
//! `max_wait_ms` until `min_bytes` are available.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::{code, encode, leader_replica, local_replica, Reply};
use crate::bugs::{self, Bug};
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

/// Kafka's debugging consumer id: reads any replica up to its log end.
pub const DEBUG_REPLICA: i32 = -2;

/// Records each follower's position (before any long-poll) and proposes
/// ISR expansions; errors are answered by `read_all`.
fn note_followers(broker: &Arc<Broker>, req: &FetchRequest) {
    let follower = req.replica_id.0;
    if follower < 0 {
        return;
    }
    for ft in &req.topics {
        for fp in &ft.partitions {
            let Ok(p) = leader_replica(broker, ft.topic.0.as_str(), fp.partition) else {
                continue;
            };
            if fp.current_leader_epoch >= 0 && fp.current_leader_epoch != p.leader_epoch() {
                continue;
            }
            if fp.fetch_offset > p.progress().log_end {
                continue;
            }
            if let Some(change) = p.follower_fetched(follower, fp.fetch_offset) {
                tracing::info!(topic = %p.topic, partition = p.index, follower, isr = ?change.isr, "follower caught up; expanding ISR");
                crate::replica::propose_isr(broker.replicas(), p, change);
            }
        }
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
    let replica_id = req.replica_id.0;
    for ft in &req.topics {
        let mut parts = Vec::new();
        for fp in &ft.partitions {
            let mut r = PartitionData::default()
                .with_partition_index(fp.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            // Consumers and followers read the leader; Kafka's debugging id any replica.
            let outcome = local_replica(
                broker,
                ft.topic.0.as_str(),
                fp.partition,
                replica_id != DEBUG_REPLICA,
            )
            .and_then(
                |p| match epoch_error(fp.current_leader_epoch, p.leader_epoch()) {
                    Some(e) => Err(e),
                    None => Ok(p),
                },
            )
            .and_then(|p| {
                let progress = p.progress();
                r.high_watermark = progress.high_watermark;
                r.last_stable_offset = progress.high_watermark;
                r.log_start_offset = p.bounds().0;
                let max = (fp.partition_max_bytes.max(0) as usize).min(budget);
                // The first partition may exceed the budget by one batch (KIP-74).
                let max = if total == 0 { max.max(1) } else { max };
                // Replicas read up to the log end; consumers below the high watermark.
                let below = if replica_id == -1 && !bugs::on(Bug::FetchAboveHw) {
                    progress.high_watermark
                } else {
                    progress.log_end
                };
                if max == 0 {
                    Ok(Vec::new())
                } else {
                    p.read_below(fp.fetch_offset, max, below)
                        .map_err(|e| match e {
                            StorageError::OutOfRange { .. } => ResponseError::OffsetOutOfRange,
                            _ => ResponseError::KafkaStorageError,
                        })
                }
            });
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
    note_followers(&broker, &req);
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
