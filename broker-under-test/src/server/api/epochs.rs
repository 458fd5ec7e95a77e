//! OffsetForLeaderEpoch: for each partition, the largest leader epoch at or
//! below the one asked and the offset where it ended on this leader. A
//! follower cuts its log there before it fetches (KIP-101/279); clients use
//! it to detect truncation (KIP-320).

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::*;
use kafka_protocol::messages::*;

use super::fetch::epoch_error;
use super::{code, encode, leader_replica, Body};
use crate::server::Broker;

/// Answers OffsetForLeaderEpoch (leaders only).
pub fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    req: OffsetForLeaderEpochRequest,
    version: i16,
) -> Body {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|rp| {
                    let mut r = EpochEndOffset::default()
                        .with_partition(rp.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let outcome = leader_replica(broker, t.topic.0.as_str(), rp.partition)
                        .and_then(|p| {
                            match epoch_error(rp.current_leader_epoch, p.leader_epoch()) {
                                Some(e) => Err(e),
                                None => Ok(p.end_offset_for(rp.leader_epoch)),
                            }
                        });
                    match outcome {
                        Ok((epoch, end)) => {
                            r.leader_epoch = epoch;
                            r.end_offset = end;
                        }
                        Err(e) => r.error_code = code(e),
                    }
                    r
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    encode(
        &OffsetForLeaderEpochResponse::default().with_topics(topics),
        version,
    )
}
