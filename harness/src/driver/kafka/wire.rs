//! A blocking Kafka protocol connection for the harness's own reads (the
//! final drain, replica reads): one request and its response at a time,
//! framed by `unlost_wire` (with its size cap), plus the two calls they need: Metadata with
//! leader epochs and ISR as one node sees them, and Fetch.
//!
//! rdkafka hides which broker answered and its leader epoch; a final read
//! that must be certain needs both.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;

use crate::history::value_of;

pub use unlost_wire::MAX_FRAME;

/// Kafka's ordinary consumer id in Fetch: reads the leader below its high watermark.
pub const CONSUMER: i32 = -1;
/// Kafka's debugging consumer id: may read a follower (the builtin broker
/// serves it from any replica up to its log end).
pub const DEBUG_REPLICA: i32 = -2;

/// Error codes the final reads act on.
pub mod codes {
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
}

/// One blocking connection to one node.
pub struct Conn {
    addr: String,
    stream: TcpStream,
    correlation: i32,
}

impl Conn {
    /// Connects with short timeouts: a node that does not answer is
    /// reported, not waited for.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn, String> {
        let sock = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(10))))
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(Conn {
            addr: addr.to_string(),
            stream,
            correlation: 0,
        })
    }

    /// The node's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One request and its response.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, String> {
        self.correlation += 1;
        unlost_wire::call(
            &mut self.stream,
            key,
            version,
            self.correlation,
            "unlost",
            req,
        )
        .map_err(|e| format!("{key:?} to {}: {e}", self.addr))
    }
}

/// One partition as one node's Metadata answer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// A topic as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Broker id -> "host:port", as this node lists them.
    pub brokers: BTreeMap<i32, String>,
    pub partitions: BTreeMap<i32, PartitionState>,
}

/// Asks one node for `topic`'s leaders, leader epochs, replicas and ISR.
pub fn metadata(addr: &str, topic: &str, timeout: Duration) -> Result<NodeView, String> {
    let mut conn = Conn::connect(addr, timeout)?;
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let resp: MetadataResponse = conn.call(ApiKey::Metadata, 9, &req)?;
    let mut view = NodeView {
        brokers: resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect(),
        ..Default::default()
    };
    for t in &resp.topics {
        if t.name.as_ref().map(|n| n.0.as_str()) != Some(topic) {
            continue;
        }
        if t.error_code != 0 {
            return Err(format!(
                "{addr}: topic {topic}: error code {}",
                t.error_code
            ));
        }
        for p in &t.partitions {
            view.partitions.insert(
                p.partition_index,
                PartitionState {
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                },
            );
        }
    }
    Ok(view)
}

/// One partition's part of a Fetch answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetched {
    pub error_code: i16,
    /// The answering replica's own high watermark.
    pub high_watermark: i64,
    /// (offset, value) of every record at or above the fetch offset.
    pub records: Vec<(i64, String)>,
}

/// Fetches one partition from `offset`, as `replica_id` (CONSUMER or
/// DEBUG_REPLICA), checking the leader epoch when `leader_epoch >= 0`.
pub fn fetch(
    conn: &mut Conn,
    topic: &str,
    partition: i32,
    offset: i64,
    replica_id: i32,
    leader_epoch: i32,
) -> Result<Fetched, String> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_max_wait_ms(0)
        .with_max_bytes(8 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(leader_epoch)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(4 << 20)])]);
    let resp: FetchResponse = conn.call(ApiKey::Fetch, 12, &req)?;
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or_else(|| format!("{}: empty fetch answer", conn.addr))?;
    let mut out = Fetched {
        error_code: p.error_code,
        high_watermark: p.high_watermark,
        records: Vec::new(),
    };
    if p.error_code != 0 {
        return Ok(out);
    }
    let mut records = p.records.clone().unwrap_or_default();
    if records.is_empty() {
        return Ok(out);
    }
    let sets = RecordBatchDecoder::decode_all(&mut records).map_err(|e| {
        format!(
            "{}: undecodable batch at offset {offset} of partition {partition}: {e}",
            conn.addr
        )
    })?;
    for set in sets {
        for r in set.records {
            if r.offset >= offset {
                out.records.push((r.offset, value_of(r.value.as_deref())));
            }
        }
    }
    Ok(out)
}
