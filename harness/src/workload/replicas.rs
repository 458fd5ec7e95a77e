//! After the drain: read every replica of every partition, offset by
//! offset up to the drain's high watermark, so the checker can prove the
//! replicas agree (a value that differs is `inconsistent-offset`).
//!
//! Uses Kafka's debugging replica id (-2) in Fetch, which the builtin broker
//! serves from any replica; brokers that refuse it are noted, not failed
//! ("where possible"). A replica's copy never counts as the message being
//! present: only the drain through the leaders decides `lost`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;

use super::value_of;
use crate::cluster::kafka::layout;
use crate::history::{EventKind, History};

/// Kafka's debugging consumer: may read a follower.
const DEBUG_REPLICA: i32 = -2;

/// Reads each replica below `high` (partition -> high watermark); `nodes`
/// maps node ids to their Kafka addresses. Returns how many replicas were
/// read in full.
pub fn read_replicas(
    bootstrap: &str,
    nodes: &BTreeMap<u32, String>,
    topic: &str,
    high: &BTreeMap<i32, i64>,
    timeout: Duration,
    history: &History,
) -> usize {
    let deadline = Instant::now() + timeout;
    let replicas = match layout(bootstrap, topic, Duration::from_secs(10)) {
        Ok(l) => l.replicas,
        Err(e) => {
            note(history, format!("replica reads skipped: {e}"));
            return 0;
        }
    };
    let mut complete = 0;
    for (&partition, ids) in &replicas {
        let Some(&hw) = high.get(&partition) else {
            continue;
        };
        for &id in ids {
            let Some(addr) = nodes.get(&(id as u32)) else {
                continue;
            };
            match read_replica(addr, topic, partition, hw, deadline) {
                Ok(records) => {
                    for (offset, value) in records {
                        history.record(
                            "replicas",
                            EventKind::ReplicaRead {
                                node: id,
                                partition,
                                offset,
                                value,
                            },
                        );
                    }
                    complete += 1;
                }
                Err(e) => note(
                    history,
                    format!("replica read of partition {partition} on node {id}: {e}"),
                ),
            }
        }
    }
    complete
}

fn note(history: &History, message: String) {
    history.record("replicas", EventKind::Note { message });
}

/// One request and its response on a blocking connection.
fn call<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Result<Resp, String> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("unlost-replicas")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    req.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&buf).map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    let mut body = Bytes::from(body);
    ResponseHeader::decode(&mut body, key.response_header_version(version))
        .map_err(|e| e.to_string())?;
    Resp::decode(&mut body, version).map_err(|e| e.to_string())
}

/// Everything one replica (the broker at `addr`) holds of a partition
/// below `high`, offset and value.
pub fn read_replica(
    addr: &str,
    topic: &str,
    partition: i32,
    high: i64,
    deadline: Instant,
) -> Result<Vec<(i64, String)>, String> {
    let sock = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < high {
        if Instant::now() >= deadline {
            return Err(format!("timed out at offset {offset} of {high}"));
        }
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(DEBUG_REPLICA))
            .with_max_wait_ms(0)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(4 << 20)])]);
        let resp: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &req)?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or("empty fetch response")?;
        if p.error_code != 0 {
            return Err(format!("fetch error code {}", p.error_code));
        }
        let mut records = p.records.clone().unwrap_or_default();
        if records.is_empty() {
            // A replica still catching up (or truncated): compare what it has.
            break;
        }
        let sets = RecordBatchDecoder::decode_all(&mut records)
            .map_err(|e| format!("undecodable batch at offset {offset}: {e}"))?;
        for set in sets {
            for r in set.records {
                if r.offset >= high {
                    return Ok(out);
                }
                offset = r.offset + 1;
                out.push((r.offset, value_of(r.value.as_deref())));
            }
        }
    }
    Ok(out)
}
