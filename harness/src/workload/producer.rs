//! Producers: paced sends of unique values through the cluster's driver;
//! each attempt is recorded as invoke then ok (partition, position), fail
//! (definitely not written) or info (unknown). A failed attempt is resent,
//! up to `retries` times, as a new attempt of the same value, so
//! duplicates can be traced to retries. A client that retries internally
//! (an idempotent Kafka producer) gets one attempt per value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Status;
use crate::draw::Draw;
use crate::driver::{Completion, Driver, Producer, ProducerSetup, Route};
use crate::history::{EventKind, History};
use crate::plan::{Keys, ProducerSpec};

/// What one producer needs.
pub struct ProducerJob {
    pub index: u32,
    pub spec: ProducerSpec,
    pub topic: String,
    pub partitions: i32,
    pub driver: Arc<dyn Driver>,
    pub seed: u64,
    pub history: History,
    pub status: Arc<Status>,
}

/// Sends until `stop`, then waits for every outstanding attempt.
pub async fn run(job: ProducerJob, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let setup = ProducerSetup {
        index: job.index,
        spec: job.spec.clone(),
    };
    let producer: Arc<dyn Producer> = Arc::from(
        job.driver
            .producer(&setup)
            .await
            .map_err(|e| format!("producer {}: {e}", job.index))?,
    );
    let name = format!("p{}", job.index);
    let mut draw = Draw::new(job.seed, &name);
    let per_second = job.spec.rate / f64::from(job.spec.count.max(1));
    let gap = Duration::from_secs_f64(1.0 / per_second);
    let start = Instant::now();
    let stall = Arc::new(Stall {
        start,
        last_ok_ms: AtomicU64::new(0),
        last_note_ms: AtomicU64::new(0),
    });
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
        let send = Send {
            producer: producer.clone(),
            history: job.history.clone(),
            status: job.status.clone(),
            retries: job.spec.retries,
            topic: job.topic.clone(),
            name: name.clone(),
            stall: stall.clone(),
        };
        tasks.spawn(async move { send.value(value, payload, route).await });
        while tasks.len() > 20_000 {
            tasks.join_next().await;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// How long a producer may go without an acknowledgement before the
/// history notes what its client sees (at most once per such period).
const STALL: Duration = Duration::from_secs(60);

/// When this producer's sends last succeeded, and when a stall was noted
/// (ms since the producer started).
struct Stall {
    start: Instant,
    last_ok_ms: AtomicU64,
    last_note_ms: AtomicU64,
}

impl Stall {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn ok(&self) {
        self.last_ok_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Some(seconds without an ack) when a stall is due to be noted.
    fn due(&self) -> Option<u64> {
        let now = self.now_ms();
        let stall = STALL.as_millis() as u64;
        let since_ok = now.saturating_sub(self.last_ok_ms.load(Ordering::Relaxed));
        let since_note = now.saturating_sub(self.last_note_ms.load(Ordering::Relaxed));
        if since_ok < stall || since_note < stall {
            return None;
        }
        self.last_note_ms.store(now, Ordering::Relaxed);
        Some(since_ok / 1000)
    }
}

/// What the sends of one producer share.
struct Send {
    stall: Arc<Stall>,
    producer: Arc<dyn Producer>,
    history: History,
    status: Arc<Status>,
    retries: u32,
    topic: String,
    name: String,
}

impl Send {
    /// Every attempt of one value, recorded.
    async fn value(&self, value: String, payload: Vec<u8>, route: Route) {
        let (h, name) = (&self.history, self.name.as_str());
        let attempts = if self.producer.retries_internally() {
            1
        } else {
            self.retries + 1
        };
        // One unknown attempt makes the value unknown: it may be stored.
        let mut all_definite = true;
        for attempt in 1..=attempts {
            h.record(
                name,
                EventKind::Invoke {
                    value: value.clone(),
                    attempt,
                },
            );
            let completion = self
                .producer
                .send(&self.topic, &value, payload.clone(), &route)
                .await;
            match completion {
                Completion::Ok {
                    partition,
                    position,
                } => {
                    h.record(
                        name,
                        EventKind::Ok {
                            value,
                            attempt,
                            partition,
                            offset: position,
                        },
                    );
                    self.status.acked.fetch_add(1, Ordering::Relaxed);
                    self.stall.ok();
                    return;
                }
                Completion::Fail(error) => h.record(
                    name,
                    EventKind::Fail {
                        value: value.clone(),
                        attempt,
                        error,
                    },
                ),
                Completion::Info(error) => {
                    all_definite = false;
                    if let Some(secs) = self.stall.due() {
                        h.record(
                            name,
                            EventKind::Note {
                                message: format!(
                                    "{name}: no send acknowledged for {secs} s; the client sees: {}",
                                    self.producer
                                        .diagnose()
                                        .unwrap_or_else(|| "nothing it can tell".into())
                                ),
                            },
                        );
                    }
                    h.record(
                        name,
                        EventKind::Info {
                            value: value.clone(),
                            attempt,
                            error,
                        },
                    )
                }
            }
            if attempt < attempts {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if all_definite {
            self.status.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.status.indeterminate.fetch_add(1, Ordering::Relaxed);
        }
    }
}
