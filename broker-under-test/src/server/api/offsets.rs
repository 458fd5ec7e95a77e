//! ListOffsets: earliest (-2), latest (-1, the high watermark), max
//! timestamp (-3), or the first offset at or after a timestamp.

use std::sync::Arc;

use kafka_protocol::messages::list_offsets_response::*;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::fetch::epoch_error;
use super::{code, encode, leader_replica, Body};
use crate::server::Broker;

/// Answers ListOffsets.
pub fn list_offsets(broker: &Arc<Broker>, req: ListOffsetsRequest, version: i16) -> Body {
    let mut topics = Vec::new();
    for lt in req.topics {
        let mut parts = Vec::new();
        for lp in lt.partitions {
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(lp.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let outcome =
                leader_replica(broker, lt.name.0.as_str(), lp.partition_index).and_then(|p| {
                    match epoch_error(lp.current_leader_epoch, p.leader_epoch()) {
                        Some(e) => Err(e),
                        None => {
                            if version >= 4 {
                                r.leader_epoch = p.leader_epoch();
                            }
                            let hw = p.progress().high_watermark;
                            match lp.timestamp {
                                -2 => Ok(p.bounds().0),
                                -1 | -3 => Ok(hw),
                                ts => p
                                    .offset_for_timestamp(ts)
                                    .map(|o| o.filter(|&o| o < hw).unwrap_or(-1))
                                    .map_err(|_| ResponseError::KafkaStorageError),
                            }
                        }
                    }
                });
            match outcome {
                Ok(offset) => r.offset = offset,
                Err(e) => r.error_code = code(e),
            }
            parts.push(r);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(lt.name)
                .with_partitions(parts),
        );
    }
    encode(&ListOffsetsResponse::default().with_topics(topics), version)
}
