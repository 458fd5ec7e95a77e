//! Producers: paced sends of unique values; each attempt is recorded as
//! invoke then ok (partition, offset), fail (definitely not written) or
//! info (unknown). A failed attempt is resent, up to `retries` times, as a
//! new attempt of the same value, so duplicates can be traced to retries.
//! With idempotence on, librdkafka retries internally (one attempt each);
//! NATS resends keep the value as Nats-Msg-Id, so JetStream drops copies.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Status;
use crate::cluster::Protocol;
use crate::draw::Draw;
use crate::history::{EventKind, History};
use crate::plan::{Keys, ProducerSpec};

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

/// What one producer needs.
pub struct ProducerJob {
    pub index: u32,
    pub spec: ProducerSpec,
    pub topic: String,
    pub partitions: i32,
    pub bootstrap: String,
    pub protocol: Protocol,
    pub seed: u64,
    pub history: History,
    pub status: Arc<Status>,
}

fn client(job: &ProducerJob) -> Result<FutureProducer, String> {
    let s = &job.spec;
    let timeout = s.timeout.as_millis().to_string();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &job.bootstrap)
        .set("acks", s.acks.as_config())
        .set("linger.ms", "2")
        .set(
            "max.in.flight.requests.per.connection",
            s.max_in_flight.to_string(),
        )
        .set("request.timeout.ms", &timeout)
        .set("log_level", "0")
        // Reconnect quickly after a node restarts (default backoff grows to 10 s).
        .set("reconnect.backoff.max.ms", "1000");
    if s.idempotent {
        let total = (s.timeout * (s.retries + 1)).as_millis().to_string();
        c.set("enable.idempotence", "true")
            .set("message.timeout.ms", &total);
    } else {
        c.set("enable.idempotence", "false")
            .set("message.send.max.retries", "0")
            .set("message.timeout.ms", &timeout);
    }
    c.create()
        .map_err(|e| format!("producer {}: {e}", job.index))
}

/// A producer client in the cluster's protocol.
#[derive(Clone)]
enum Sender {
    Kafka(Arc<FutureProducer>),
    /// JetStream: idempotence is the Nats-Msg-Id header (the value).
    Nats(Box<async_nats::jetstream::Context>),
}

/// Sends until `stop`, then waits for every outstanding attempt.
pub async fn run(job: ProducerJob, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let producer = match job.protocol {
        Protocol::Kafka => Sender::Kafka(Arc::new(client(&job)?)),
        Protocol::Nats => Sender::Nats(Box::new(async_nats::jetstream::new(
            crate::cluster::nats::connect(&job.bootstrap).await?,
        ))),
    };
    let name = format!("p{}", job.index);
    let mut draw = Draw::new(job.seed, &name);
    let per_second = job.spec.rate / f64::from(job.spec.count.max(1));
    let gap = Duration::from_secs_f64(1.0 / per_second);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut seq: u64 = 0;
    loop {
        let next = start + gap.mul_f64(seq as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let value = format!("{name}-{seq}");
        let size = draw.value(job.spec.size.0..=job.spec.size.1) as usize;
        let mut payload = value.clone().into_bytes();
        payload.push(b' ');
        payload.resize(size.max(payload.len()), b'x');
        let route = match job.spec.keys {
            Keys::None => Route::Partition(draw.value(0..job.partitions)),
            Keys::Random(n) => Route::Key(format!("k{}", draw.value(0..n))),
        };
        seq += 1;
        job.status.sent.fetch_add(1, Ordering::Relaxed);
        let (p, h, st, spec, topic, name) = (
            producer.clone(),
            job.history.clone(),
            job.status.clone(),
            job.spec.clone(),
            job.topic.clone(),
            name.clone(),
        );
        tasks.spawn(
            async move { send(&p, &h, &st, &spec, &topic, &name, value, payload, route).await },
        );
        while tasks.len() > 20_000 {
            tasks.join_next().await;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

enum Route {
    Partition(i32),
    Key(String),
}

#[allow(clippy::too_many_arguments)]
async fn send(
    p: &Sender,
    h: &History,
    st: &Status,
    spec: &ProducerSpec,
    topic: &str,
    name: &str,
    value: String,
    payload: Vec<u8>,
    route: Route,
) {
    // An idempotent librdkafka producer retries internally; the NATS
    // client does not, and resends keep their Nats-Msg-Id.
    let kafka = matches!(p, Sender::Kafka(_));
    let attempts = if spec.idempotent && kafka {
        1
    } else {
        spec.retries + 1
    };
    // The delivery report comes by message.timeout.ms; allow slack beyond it.
    let wait = if spec.idempotent {
        spec.timeout * (spec.retries + 1)
    } else {
        spec.timeout
    } + Duration::from_secs(5);
    let mut last_definite = true;
    for attempt in 1..=attempts {
        h.record(
            name,
            EventKind::Invoke {
                value: value.clone(),
                attempt,
            },
        );
        let outcome = match p {
            Sender::Kafka(p) => kafka_attempt(p, topic, &payload, &route, wait).await,
            Sender::Nats(js) => {
                // No client-side retries here: the attempt times out itself.
                let id = spec.idempotent.then_some(value.as_str());
                crate::cluster::nats::publish(js, topic, payload.clone(), id, spec.timeout)
                    .await
                    .map(|seq| (0, seq))
            }
        };
        match outcome {
            Ok((partition, offset)) => {
                h.record(
                    name,
                    EventKind::Ok {
                        value,
                        attempt,
                        partition,
                        offset,
                    },
                );
                st.acked.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err((e, true)) => h.record(
                name,
                EventKind::Fail {
                    value: value.clone(),
                    attempt,
                    error: e,
                },
            ),
            Err((e, false)) => {
                last_definite = false;
                h.record(
                    name,
                    EventKind::Info {
                        value: value.clone(),
                        attempt,
                        error: e,
                    },
                )
            }
        }
        if attempt < attempts {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if last_definite {
        st.failed.fetch_add(1, Ordering::Relaxed);
    } else {
        st.indeterminate.fetch_add(1, Ordering::Relaxed);
    }
}

/// One Kafka send: (partition, offset), or the error and whether it is
/// definite.
async fn kafka_attempt(
    p: &FutureProducer,
    topic: &str,
    payload: &[u8],
    route: &Route,
    wait: Duration,
) -> Result<(i32, i64), (String, bool)> {
    let mut record = FutureRecord::to(topic).payload(payload);
    record = match route {
        Route::Partition(n) => record.partition(*n),
        Route::Key(k) => record.key(k),
    };
    match p.send_result::<String, [u8]>(record) {
        Err((e, _)) => Err((e.to_string(), true)),
        Ok(fut) => match tokio::time::timeout(wait, fut).await {
            Ok(Ok(Ok(d))) => Ok((d.partition, d.offset)),
            Ok(Ok(Err((e, _)))) => {
                let sure = definite(&e);
                Err((e.to_string(), sure))
            }
            Ok(Err(_)) => Err((KafkaError::Canceled.to_string(), false)),
            Err(_) => Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut).to_string(),
                false,
            )),
        },
    }
}
