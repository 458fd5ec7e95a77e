//! The replica manager: makes the local replicas match the controller's
//! state, and copies data from leaders.
//!
//! Input: the applied `ClusterState` (and its version watch). Output: open
//! partitions with the role the controller gave them, a fetcher per
//! follower replica, and ISR changes proposed for the partitions this
//! broker leads.
//!
//! A broker only leads once it is registered in the current incarnation:
//! after a restart, its replayed controller state may still name it leader
//! from before, and acting on that would serve from a log that lost its
//! unsynced tail. The fetcher truncates first (OffsetForLeaderEpoch against
//! the leader, KIP-101/279), then fetches from its log end with its replica
//! id; with `--flush always` it fsyncs before it asks for more, so the
//! leader counts an offset as replicated only once it is on disk here.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{Config, FlushPolicy};
use crate::controller::state::{Command, Reply};
use crate::partition::{IsrChange, Partition, Role};
use crate::storage::batch;
use crate::topics::Topics;

/// What the replica manager needs of the broker: its config, its local
/// replicas and the controller (cheap to clone).
#[derive(Debug, Clone)]
pub struct ReplicaContext {
    pub config: Arc<Config>,
    pub topics: Arc<Topics>,
    pub controller: Arc<crate::controller::Controller>,
}

/// Longest a follower's fetch waits at the leader for new data.
const FETCH_WAIT_MS: i32 = 500;
/// Pause after an error before a follower tries again.
const RETRY: Duration = Duration::from_millis(100);

/// Follows the controller's state until the process ends.
pub async fn run(broker: ReplicaContext) {
    let mut version = broker.controller.applied.version.subscribe();
    let mut announced = None;
    loop {
        version.borrow_and_update();
        let current = reconcile(&broker);
        let registered = broker.controller.registered_epoch();
        if current && registered != announced {
            // Tests and the harness wait for this line.
            tracing::info!(
                id = broker.config.id,
                epoch = registered,
                "registered with the controller; replicas in their roles"
            );
            announced = registered;
        }
        shrink_isrs(&broker);
        let _ = tokio::time::timeout(Duration::from_millis(200), version.changed()).await;
    }
}

/// Gives every local replica the role the controller assigns. True when
/// the local state already shows this broker's current registration.
fn reconcile(broker: &ReplicaContext) -> bool {
    let me = broker.config.id;
    let state = broker.controller.applied.snapshot();
    let registered = broker.controller.registered_epoch();
    let current = state
        .brokers
        .get(&me)
        .is_some_and(|b| Some(b.epoch) == registered && !b.fenced);
    for (name, t) in &state.topics {
        for (i, p) in t.partitions.iter().enumerate() {
            let index = i as i32;
            if !p.replicas.contains(&me) {
                if let Some(local) = broker.topics.get(name, index) {
                    local.become_follower(-1, p.leader_epoch);
                }
                continue;
            }
            let local = match broker.topics.get(name, index) {
                Some(l) => l,
                None => match broker.topics.open(name, index) {
                    Ok(l) => {
                        tokio::spawn(fetcher(broker.clone(), l.clone()));
                        l
                    }
                    Err(e) => {
                        tracing::error!(topic = %name, partition = index, "cannot open replica: {e}");
                        continue;
                    }
                },
            };
            if p.leader == me {
                if !current {
                    // Led by this broker's previous incarnation: wait.
                    local.become_follower(-1, p.leader_epoch);
                    continue;
                }
                if let Err(e) = local.become_leader(
                    p.leader_epoch,
                    p.partition_epoch,
                    &p.replicas,
                    &p.isr,
                    t.config.min_insync_replicas,
                ) {
                    tracing::error!(topic = %name, partition = index, "cannot take leadership: {e}");
                }
            } else {
                local.become_follower(p.leader, p.leader_epoch);
            }
        }
    }
    current
}

/// Proposes dropping followers that lag more than `--replica-lag-ms`.
fn shrink_isrs(broker: &ReplicaContext) {
    for p in broker.topics.all() {
        if let Some(change) = p.lagging_followers(broker.config.replica_lag) {
            tracing::warn!(topic = %p.topic, partition = p.index, isr = ?change.isr, "shrinking ISR: followers lag");
            propose_isr(broker.clone(), p, change);
        }
    }
}

/// Sends an ISR change to the controller; applies the answer at once.
pub fn propose_isr(broker: ReplicaContext, p: Arc<Partition>, change: IsrChange) {
    tokio::spawn(async move {
        let cmd = Command::AlterIsr {
            topic: p.topic.clone(),
            partition: p.index,
            leader: broker.config.id,
            leader_epoch: change.leader_epoch,
            partition_epoch: change.partition_epoch,
            isr: change.isr.clone(),
        };
        match broker.controller.propose(cmd).await {
            Ok(Reply::Partition(state)) => {
                tracing::info!(topic = %p.topic, partition = p.index, isr = ?state.isr, "ISR changed");
                let min_isr = broker
                    .controller
                    .applied
                    .read(|s| s.topics.get(&p.topic).map(|t| t.config.min_insync_replicas))
                    .unwrap_or(1);
                if let Err(e) = p.become_leader(
                    state.leader_epoch,
                    state.partition_epoch,
                    &state.replicas,
                    &state.isr,
                    min_isr,
                ) {
                    tracing::error!("apply ISR change: {e}");
                }
            }
            Ok(other) => {
                tracing::info!(topic = %p.topic, partition = p.index, "ISR change refused: {other:?}")
            }
            Err(e) => tracing::warn!(topic = %p.topic, partition = p.index, "ISR change: {e}"),
        }
        p.isr_change_done();
    });
}

/// A minimal Kafka client for broker-to-broker requests.
struct Client {
    addr: String,
    stream: TcpStream,
    correlation: i32,
}

impl Client {
    async fn connect(addr: &str) -> Result<Client, String> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            addr: addr.to_string(),
            stream,
            correlation: 0,
        })
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, String> {
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let frame = unlost_wire::request(key, version, correlation, "unlost-broker-replica", req)
            .map_err(|e| e.to_string())?;
        let addr = self.addr.clone();
        let io = async {
            self.stream.write_all(&frame).await?;
            unlost_wire::read_frame_async(&mut self.stream, unlost_wire::MAX_FRAME).await
        };
        let body = tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .map_err(|_| format!("{addr}: no answer within 10s"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        unlost_wire::response(key, version, correlation, body).map_err(|e| format!("{addr}: {e}"))
    }
}

/// Copies the partition from its leader while this replica follows.
async fn fetcher(broker: ReplicaContext, p: Arc<Partition>) {
    let me = broker.config.id;
    let mut client: Option<(i32, Client)> = None;
    let mut progress = p.watch();
    loop {
        let Role::Follower {
            leader,
            epoch,
            truncated,
        } = p.role()
        else {
            client = None;
            let _ = tokio::time::timeout(Duration::from_millis(500), progress.changed()).await;
            continue;
        };
        let addr = broker.controller.applied.read(|s| {
            s.brokers
                .get(&leader)
                .map(|b| format!("{}:{}", b.host, b.port))
        });
        let Some(addr) = addr else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        if client
            .as_ref()
            .is_none_or(|(l, c)| *l != leader || c.addr != addr)
        {
            match Client::connect(&addr).await {
                Ok(c) => client = Some((leader, c)),
                Err(e) => {
                    tracing::debug!(topic = %p.topic, partition = p.index, "fetcher: {e}");
                    client = None;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        let (_, c) = client.as_mut().expect("connected");
        // A new leadership interrupts a request in flight: the old leader
        // may be unreachable, and waiting out its timeout would keep this
        // replica out of the new leader's ISR.
        let mut role = p.watch();
        let moved = role.wait_for(|pr| pr.leader_epoch != epoch || pr.is_leader);
        let step = tokio::select! {
            r = async {
                if truncated {
                    fetch_once(&p, c, me, epoch).await
                } else {
                    truncate(&p, c, me, epoch).await
                }
            } => Some(r),
            _ = moved => None,
        };
        let Some(step) = step else {
            client = None;
            continue;
        };
        if let Err(e) = step {
            tracing::debug!(topic = %p.topic, partition = p.index, leader, "fetcher: {e}");
            if e.starts_with("connection") {
                client = None;
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

fn topic_name(p: &Partition) -> TopicName {
    TopicName(StrBytes::from_string(p.topic.clone()))
}

/// Finds where this replica's log diverges from the leader's and cuts it
/// there (KIP-101 with KIP-279's per-epoch end offsets).
async fn truncate(p: &Partition, c: &mut Client, me: i32, epoch: i32) -> Result<(), String> {
    // A log that recovery found damaged refuses writes; a follower has a
    // leader to copy from, so the damage goes aside and it copies again.
    if let Some(what) = p.set_aside_damage().map_err(|e| e.to_string())? {
        let (_, end) = p.bounds();
        tracing::warn!(topic = %p.topic, partition = p.index, epoch, log_end = end, "corruption set aside (kept as *.damaged) to copy the rest from the leader: {what}");
    }
    let (_, end) = p.bounds();
    let Some(latest) = p.latest_epoch() else {
        if end > 0 {
            // Data without an epoch history: nothing to compare, start over.
            p.truncate_to(0).map_err(|e| e.to_string())?;
        }
        p.set_truncated(epoch);
        return Ok(());
    };
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(me))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(topic_name(p))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(p.index)
                .with_current_leader_epoch(epoch)
                .with_leader_epoch(latest)])]);
    let resp: OffsetForLeaderEpochResponse = c
        .call(ApiKey::OffsetForLeaderEpoch, 3, &req)
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let r = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("empty OffsetForLeaderEpoch response")?;
    if r.error_code != 0 {
        return Err(format!(
            "OffsetForLeaderEpoch: {:?}",
            ResponseError::try_from_code(r.error_code)
        ));
    }
    let cut = if r.leader_epoch < 0 || r.end_offset < 0 {
        // The leader knows no epoch this old: nothing here is shared.
        0
    } else {
        let (_, mine) = p.end_offset_for(r.leader_epoch);
        r.end_offset.min(if mine < 0 { end } else { mine })
    };
    if cut < end {
        p.truncate_to(cut).map_err(|e| e.to_string())?;
    }
    tracing::info!(topic = %p.topic, partition = p.index, epoch, leader_epoch = r.leader_epoch, leader_end = r.end_offset, log_end = cut.min(end), "follower truncation done");
    p.set_truncated(epoch);
    Ok(())
}

/// One fetch from the leader: append what it sends, then (with `--flush
/// always`) fsync before the next fetch reports the new log end.
async fn fetch_once(p: &Partition, c: &mut Client, me: i32, epoch: i32) -> Result<(), String> {
    if p.policy() == FlushPolicy::Always {
        // The offset asked for tells the leader what this replica holds:
        // with flush always it must be on disk first (also after a fetch
        // that was interrupted between its append and its fsync).
        p.flush().await?;
    }
    let (_, end) = p.bounds();
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(me))
        .with_max_wait_ms(FETCH_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(16 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(p))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(p.index)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(end)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(8 << 20)])]);
    let resp: FetchResponse = c
        .call(ApiKey::Fetch, 12, &req)
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let r = resp
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("empty fetch response")?;
    match ResponseError::try_from_code(r.error_code) {
        None => {}
        Some(ResponseError::OffsetOutOfRange) => {
            // The leader's log is shorter: find the divergence again.
            p.reset_truncation();
            return Err(format!("offset {end} out of range at the leader"));
        }
        Some(e) => return Err(format!("fetch: {e:?}")),
    }
    let records = r.records.clone().unwrap_or_default();
    if !records.is_empty() {
        let batches =
            batch::split(&records).map_err(|e| format!("leader sent a bad batch: {e}"))?;
        let mut start = 0;
        let mut headers = Vec::new();
        for (range, h) in batches {
            if h.last_offset() < end {
                start = range.end;
                continue;
            }
            if h.base_offset < end {
                return Err(format!(
                    "leader batch {}..={} straddles our log end {end}",
                    h.base_offset,
                    h.last_offset()
                ));
            }
            headers.push(h);
        }
        if !headers.is_empty() {
            p.append_replicated(&records[start..], &headers)
                .map_err(|e| format!("append: {e}"))?;
            if p.policy() == FlushPolicy::Always {
                p.flush().await?;
            }
        }
    }
    p.set_follower_high_watermark(r.high_watermark);
    Ok(())
}
