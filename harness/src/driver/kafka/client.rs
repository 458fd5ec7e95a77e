//! librdkafka clients: a producer whose sends complete as `Completion`s,
//! and a consumer-group member that records its assignments.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::driver::{
    Completion, Delivery, DriverError, Member, MemberSetup, Producer, ProducerSetup, Route,
};
use crate::history::{value_of, EventKind, History};
use crate::plan::CommitPolicy;

/// Whether an error proves the value was not written: only errors raised
/// before the message left the client. A broker error on the last request
/// proves nothing about earlier ones, and librdkafka re-sends a message
/// after a leader change without counting a retry (seen in plans/ci: a
/// batch appended by a deposed leader and kept by its successor, whose
/// NOT_ENOUGH_REPLICAS answered the hidden re-send). So broker errors are
/// indeterminate.
pub fn definite(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    match e {
        KafkaError::MessageProduction(code) => matches!(
            code,
            QueueFull | UnknownPartition | UnknownTopic | InvalidArgument
        ),
        _ => false,
    }
}

/// librdkafka's latest statistics (every 10 s), for `diagnose`.
type LastStats = std::sync::Arc<std::sync::Mutex<Option<serde_json::Value>>>;

/// Keeps librdkafka's latest statistics.
#[derive(Default)]
pub struct StatsContext {
    last: LastStats,
}

impl ClientContext for StatsContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Ok(v) = serde_json::from_slice(statistics) {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        }
    }
}

/// One line from librdkafka's statistics: each broker connection's state
/// and queues (requests waiting to be sent, awaiting a response, timed
/// out), and the leader the client believes each partition has.
fn stats_line(v: &serde_json::Value) -> String {
    let n = |b: &serde_json::Value, k: &str| b.get(k).and_then(|x| x.as_i64()).unwrap_or(-1);
    let brokers: Vec<String> = v
        .get("brokers")
        .and_then(|b| b.as_object())
        .map(|m| {
            m.values()
                .filter(|b| b.get("nodeid").and_then(|x| x.as_i64()).unwrap_or(-1) >= 0)
                .map(|b| {
                    format!(
                        "node {} {} outbuf {} waitresp {} timeouts {} disconnects {}",
                        n(b, "nodeid"),
                        b.get("state").and_then(|x| x.as_str()).unwrap_or("?"),
                        n(b, "outbuf_cnt"),
                        n(b, "waitresp_cnt"),
                        n(b, "req_timeouts"),
                        n(b, "disconnects"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let leaders: Vec<String> = v
        .get("topics")
        .and_then(|t| t.as_object())
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|t| t.get("partitions").and_then(|p| p.as_object()))
        .flat_map(|m| m.iter())
        .filter(|(k, _)| !k.starts_with('-'))
        .map(|(k, p)| format!("{k}->{}", n(p, "leader")))
        .collect();
    format!(
        "{}; partition leaders {}",
        brokers.join(", "),
        leaders.join(" ")
    )
}

/// A librdkafka producer. Idempotent: librdkafka retries internally
/// within `timeout * (retries + 1)`; otherwise it never retries.
pub struct KafkaProducer {
    client: FutureProducer<StatsContext>,
    stats: LastStats,
    idempotent: bool,
    /// How long to wait for a delivery report: message.timeout.ms plus slack.
    wait: Duration,
}

impl KafkaProducer {
    pub fn new(bootstrap: &str, setup: &ProducerSetup) -> Result<KafkaProducer, DriverError> {
        let s = &setup.spec;
        let timeout = s.timeout.as_millis().to_string();
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("acks", s.acks.as_config())
            .set("linger.ms", "2")
            .set(
                "max.in.flight.requests.per.connection",
                s.max_in_flight.to_string(),
            )
            .set("request.timeout.ms", &timeout)
            .set("log_level", "0")
            // For `diagnose`: what the client sees of its connections.
            .set("statistics.interval.ms", "10000")
            // Reconnect quickly after a node restarts (default backoff grows to 10 s).
            .set("reconnect.backoff.max.ms", "1000");
        let total = if s.idempotent {
            s.timeout * (s.retries + 1)
        } else {
            s.timeout
        };
        if s.idempotent {
            c.set("enable.idempotence", "true");
        } else {
            c.set("enable.idempotence", "false")
                .set("message.send.max.retries", "0");
        }
        c.set("message.timeout.ms", total.as_millis().to_string());
        let stats = LastStats::default();
        let client = c
            .create_with_context(StatsContext {
                last: stats.clone(),
            })
            .map_err(|e| DriverError::Connect {
                to: bootstrap.to_string(),
                reason: format!("producer {}: {e}", setup.index),
            })?;
        Ok(KafkaProducer {
            client,
            stats,
            idempotent: s.idempotent,
            wait: total + Duration::from_secs(5),
        })
    }
}

impl Producer for KafkaProducer {
    fn retries_internally(&self) -> bool {
        self.idempotent
    }

    fn diagnose(&self) -> Option<String> {
        let last = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref().map(stats_line)
    }

    fn send<'a>(
        &'a self,
        topic: &'a str,
        _value: &'a str,
        payload: Vec<u8>,
        route: &'a Route,
    ) -> BoxFuture<'a, Completion> {
        Box::pin(async move {
            let mut record = FutureRecord::to(topic).payload(&payload[..]);
            record = match route {
                Route::Partition(n) => record.partition(*n),
                Route::Key(k) => record.key(k.as_str()),
            };
            match self.client.send_result::<str, [u8]>(record) {
                Err((e, _)) => Completion::Fail(e.to_string()),
                Ok(fut) => match tokio::time::timeout(self.wait, fut).await {
                    Ok(Ok(Ok(d))) => Completion::Ok {
                        partition: d.partition,
                        position: d.offset,
                    },
                    Ok(Ok(Err((e, _)))) if definite(&e) => Completion::Fail(e.to_string()),
                    Ok(Ok(Err((e, _)))) => Completion::Info(e.to_string()),
                    Ok(Err(_)) => Completion::Info(KafkaError::Canceled.to_string()),
                    Err(_) => Completion::Info(
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
                            .to_string(),
                    ),
                },
            }
        })
    }
}

/// Records the partitions a member holds after each rebalance.
struct Membership {
    /// None: a client that only reads committed offsets.
    history: Option<History>,
    name: String,
}

impl ClientContext for Membership {}

impl ConsumerContext for Membership {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Some(history) = &self.history else {
            return;
        };
        let partitions = match rebalance {
            Rebalance::Assign(tpl) => tpl.elements().iter().map(|e| e.partition()).collect(),
            Rebalance::Revoke(_) => Vec::new(),
            Rebalance::Error(e) => {
                history.record(
                    &self.name,
                    EventKind::Note {
                        message: format!("rebalance error: {e}"),
                    },
                );
                return;
            }
        };
        history.record(&self.name, EventKind::Assign { partitions });
    }
}

fn group_client(
    bootstrap: &str,
    group: &str,
    auto: bool,
    history: Option<History>,
    name: &str,
) -> Result<BaseConsumer<Membership>, DriverError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", if auto { "true" } else { "false" })
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        // Bounded prefetch: librdkafka's defaults keep up to 64 MiB (and
        // 100,000 messages per partition) queued per consumer, and fetch
        // up to 50 MiB at once; a consumer that catches up after a crash
        // or a stall would hold that much (the soak's memory stepped up
        // by 27 MiB at once). The members poll 50 at a time.
        .set("queued.min.messages", "2000")
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.max.bytes", "4194304")
        .set("log_level", "0")
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(Membership {
            history,
            name: name.to_string(),
        })
        .map_err(|e| DriverError::Connect {
            to: bootstrap.to_string(),
            reason: format!("consumer: {e}"),
        })
}

/// A member subscribed to the topic: the broker's group coordinator and
/// the clients' assignor share the partitions.
pub struct KafkaMember {
    consumer: BaseConsumer<Membership>,
    topic: String,
}

impl KafkaMember {
    pub fn new(bootstrap: &str, setup: MemberSetup) -> Result<KafkaMember, DriverError> {
        let auto = setup.spec.commit == CommitPolicy::Auto;
        let consumer = group_client(
            bootstrap,
            &setup.spec.group,
            auto,
            Some(setup.history),
            &setup.name,
        )?;
        consumer
            .subscribe(&[&setup.topic])
            .map_err(|e| DriverError::refused("subscribe", e))?;
        Ok(KafkaMember {
            consumer,
            topic: setup.topic,
        })
    }
}

impl Member for KafkaMember {
    fn poll(&mut self, max: usize) -> Result<Vec<Delivery>, DriverError> {
        // A batch is what arrives within 50 ms of its first message. Poll
        // errors are transient (librdkafka reconnects by itself).
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < max {
            let wait = match deadline {
                None => Duration::from_millis(100),
                Some(d) => d.saturating_duration_since(Instant::now()),
            };
            match self.consumer.poll(wait) {
                Some(Ok(m)) => batch.push(Delivery {
                    partition: m.partition(),
                    position: m.offset(),
                    value: value_of(m.payload()),
                    redelivered: false,
                }),
                Some(Err(_)) | None => break,
            }
            deadline.get_or_insert_with(|| Instant::now() + Duration::from_millis(50));
        }
        Ok(batch)
    }

    fn commit(&mut self, batch: &[Delivery]) -> Result<Vec<(i32, i64)>, DriverError> {
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        for d in batch {
            let end = ends.entry(d.partition).or_insert(0);
            *end = (*end).max(d.position + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &ends {
            let _ = tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o));
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| DriverError::refused("commit", e))?;
        Ok(ends.into_iter().collect())
    }
}

/// The group's committed offsets as the broker has them now.
pub fn committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i32, i64)>, DriverError> {
    let c = group_client(bootstrap, group, false, None, "group")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| DriverError::refused("committed offsets", e))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statistics_line_names_each_connection_and_leader() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"brokers": {
                 "10.77.1.2:9092/1": {"nodeid": 1, "state": "UP", "outbuf_cnt": 0, "waitresp_cnt": 3, "req_timeouts": 7, "disconnects": 2},
                 "GroupCoordinator": {"nodeid": -1, "state": "UP"}},
               "topics": {"unlost": {"partitions": {
                 "0": {"leader": 1}, "1": {"leader": 3}, "-1": {"leader": -1}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            stats_line(&v),
            "node 1 UP outbuf 0 waitresp 3 timeouts 7 disconnects 2; partition leaders 0->1 1->3"
        );
    }
}
