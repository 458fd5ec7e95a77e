//! Redis clients: a producer (XADD, then WAIT for the replicas with acks
//! all) whose sends complete as `Completion`s, and a consumer-group member
//! (XREADGROUP, XACK, and XAUTOCLAIM of what a crashed member left).

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Connection;

use super::{entry_id, position, Nodes};
use crate::driver::{
    Completion, Delivery, DriverError, Member, MemberSetup, Producer, ProducerSetup, Route,
};
use crate::history::value_of;
use crate::plan::{Acks, CommitPolicy};

/// The field an entry's payload is stored under.
pub const FIELD: &str = "v";

/// How long a delivered entry may stay unacknowledged before another
/// member claims it (as JetStream's ack wait in the NATS driver).
const CLAIM_AFTER: Duration = Duration::from_secs(5);

/// An XADD producer; with acks all, each XADD is followed by a WAIT for
/// the driver's count of replicas. The client never resends by itself. An error answer
/// from Redis is definite (Redis checks READONLY, NOREPLICAS and the like
/// before it runs a command, and runs it whole or not at all); a timeout
/// or a lost connection is unknown, as is a WAIT that fewer replicas than
/// asked confirmed (the entry is on the primary, maybe not beyond it).
pub struct RedisProducer {
    nodes: Nodes,
    /// Replicas to WAIT for after each XADD (0 with acks 1).
    wait: usize,
    timeout: Duration,
    con: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl RedisProducer {
    pub fn new(nodes: Nodes, setup: &ProducerSetup, wait: u32) -> RedisProducer {
        let wait = match setup.spec.acks {
            Acks::All => wait as usize,
            Acks::Leader | Acks::None => 0,
        };
        RedisProducer {
            nodes,
            wait,
            timeout: setup.spec.timeout,
            con: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection to the primary, found through the Sentinels when
    /// there is none (one discovery at a time).
    async fn connection(&self) -> Result<MultiplexedConnection, DriverError> {
        let mut guard = self.con.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let nodes = self.nodes.clone();
        let primary = tokio::task::spawn_blocking(move || nodes.primary())
            .await
            .map_err(|e| DriverError::refused("find the primary", e))??;
        let connect = |e: redis::RedisError| DriverError::Connect {
            to: primary.clone(),
            reason: e.to_string(),
        };
        let client = redis::Client::open(format!("redis://{primary}/")).map_err(connect)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            // WAIT may take the whole timeout.
            .set_response_timeout(Some(self.timeout + Duration::from_secs(1)));
        let c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(connect)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection, so the next send finds the primary again.
    async fn forget(&self) {
        *self.con.lock().await = None;
    }
}

impl Producer for RedisProducer {
    fn retries_internally(&self) -> bool {
        false
    }

    fn send<'a>(
        &'a self,
        key: &'a str,
        _value: &'a str,
        payload: Vec<u8>,
        _route: &'a Route,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let mut con = match self.connection().await {
                Ok(c) => c,
                // Nothing left the client.
                Err(e) => return Completion::Fail(format!("no connection to the primary: {e}")),
            };
            let added: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg(FIELD)
                .arg(payload)
                .query_async(&mut con)
                .await;
            let id = match added {
                Ok(id) => id,
                Err(e) => {
                    self.forget().await;
                    return match e.code() {
                        Some(_) => Completion::Fail(e.to_string()),
                        None => Completion::Info(e.to_string()),
                    };
                }
            };
            let Some(at) = position(&id) else {
                return Completion::Info(format!("XADD answered an entry id {id:?}"));
            };
            if self.wait > 0 {
                let copied: redis::RedisResult<i64> = redis::cmd("WAIT")
                    .arg(self.wait)
                    .arg(self.timeout.as_millis().max(1) as u64)
                    .query_async(&mut con)
                    .await;
                match copied {
                    Ok(n) if n as usize >= self.wait => {}
                    Ok(n) => {
                        return Completion::Info(format!(
                            "WAIT: {n} of {} replicas within {:?}",
                            self.wait, self.timeout
                        ))
                    }
                    Err(e) => {
                        self.forget().await;
                        return Completion::Info(format!("WAIT: {e}"));
                    }
                }
            }
            Completion::Ok {
                partition: 0,
                position: at,
            }
        })
    }
}

/// A member of the stream's consumer group. It reads new entries with
/// XREADGROUP and, first, claims entries another member (a crashed
/// incarnation) left unacknowledged for 5 s, which count as redelivered.
/// Acknowledgement is per entry (XACK) and there is no committed position.
/// With `auto` the member reads with NOACK: entries are acknowledged as
/// they are delivered.
pub struct RedisMember {
    con: Connection,
    key: String,
    group: String,
    name: String,
    auto: bool,
}

impl RedisMember {
    pub fn new(nodes: &Nodes, setup: MemberSetup) -> Result<RedisMember, DriverError> {
        let mut con = nodes.primary_connection(Duration::from_secs(5))?;
        let made: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&setup.topic)
            .arg(&setup.spec.group)
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut con);
        if let Err(e) = made {
            if e.code() != Some("BUSYGROUP") {
                return Err(DriverError::refused(
                    format!("group {}", setup.spec.group),
                    e,
                ));
            }
        }
        Ok(RedisMember {
            con,
            key: setup.topic,
            group: setup.spec.group.clone(),
            name: setup.name,
            auto: setup.spec.commit == CommitPolicy::Auto,
        })
    }

    fn delivery(entry: &StreamId, redelivered: bool) -> Option<Delivery> {
        let payload = match entry.map.get(FIELD) {
            Some(redis::Value::BulkString(b)) => Some(b.as_slice()),
            _ => None,
        };
        Some(Delivery {
            partition: 0,
            position: position(&entry.id)?,
            value: value_of(payload),
            redelivered,
        })
    }
}

impl RedisMember {
    /// New entries for this member (XREADGROUP ... >), waiting up to
    /// `block` ms for the first.
    fn read_new(&mut self, count: usize, block: Option<u64>) -> Result<Vec<Delivery>, DriverError> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.group)
            .arg(&self.name)
            .arg("COUNT")
            .arg(count);
        if let Some(ms) = block {
            read.arg("BLOCK").arg(ms);
        }
        if self.auto {
            read.arg("NOACK");
        }
        let got: Option<StreamReadReply> = read
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .query(&mut self.con)
            .map_err(|e| DriverError::refused("XREADGROUP", e))?;
        Ok(got
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .filter_map(|e| Self::delivery(&e, false))
            .collect())
    }
}

impl Member for RedisMember {
    fn poll(&mut self, max: usize) -> Result<Vec<Delivery>, DriverError> {
        let failed = |what: &str, e: redis::RedisError| DriverError::refused(what, e);
        if !self.auto {
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.name)
                .arg(CLAIM_AFTER.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query(&mut self.con)
                .map_err(|e| failed("XAUTOCLAIM", e))?;
            if !claimed.claimed.is_empty() {
                return Ok(claimed
                    .claimed
                    .iter()
                    .filter_map(|e| Self::delivery(e, true))
                    .collect());
            }
        }
        // A batch is what arrives within 50 ms of its first entry (as the
        // Kafka driver's): XREADGROUP answers as soon as one entry is there.
        let mut got = self.read_new(max, Some(200))?;
        if !got.is_empty() && got.len() < max {
            std::thread::sleep(Duration::from_millis(50));
            got.extend(self.read_new(max - got.len(), None)?);
        }
        Ok(got)
    }

    fn commit(&mut self, batch: &[Delivery]) -> Result<Vec<(i32, i64)>, DriverError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&self.key).arg(&self.group);
        for d in batch {
            ack.arg(entry_id(d.position));
        }
        let _: i64 = ack
            .query(&mut self.con)
            .map_err(|e| DriverError::refused(format!("XACK of {} entries", batch.len()), e))?;
        Ok(Vec::new())
    }
}
