//! Consumers: members of one group that poll, process (record each
//! delivered message) and commit per policy:
//! - after-process: process the batch, then commit its end (at-least-once);
//! - before-process: commit the batch end, then process (at-most-once);
//! - auto: the client's periodic auto-commit of polled positions.
//!
//! Members subscribe to the topic: the broker's group coordinator and the
//! clients' assignor share the partitions, and every assignment change is
//! recorded (an `assign` event: positions may restart from the committed
//! offsets there). A consumer-crash fault stops a consumer mid-batch,
//! without committing the rest, and a new incarnation (`c<i>#<n+1>`) joins
//! the group. (With auto-commit, closing the client commits polled
//! positions; that crash is a close.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use super::{value_of, Status};
use crate::draw::Draw;
use crate::history::{EventKind, History};
use crate::plan::{CommitPolicy, ConsumerSpec};

/// Messages processed between commits.
const BATCH: usize = 50;

/// Handles to the consumer threads, shared with the nemesis.
#[derive(Clone, Default)]
pub struct Consumers {
    crash: Vec<Arc<AtomicBool>>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// What every consumer needs.
#[derive(Clone)]
pub struct ConsumerJob {
    pub spec: ConsumerSpec,
    pub topic: String,
    pub partitions: i32,
    pub bootstrap: String,
    pub protocol: crate::cluster::Protocol,
    pub history: History,
    pub status: Arc<Status>,
}

impl Consumers {
    /// Starts the group.
    pub fn start(job: ConsumerJob) -> Consumers {
        let mut c = Consumers::default();
        for i in 0..job.spec.count {
            let crash = Arc::new(AtomicBool::new(false));
            c.crash.push(crash.clone());
            let (job, stop) = (job.clone(), c.stop.clone());
            let handle = std::thread::Builder::new()
                .name(format!("consumer-{i}"))
                .spawn(move || member(i, job, stop, crash))
                .expect("consumer thread");
            c.threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle);
        }
        c
    }

    /// Crashes `n` consumers drawn from `draw`; returns which.
    pub fn crash(&self, n: usize, draw: &mut Draw) -> Vec<usize> {
        let mut pool: Vec<usize> = (0..self.crash.len()).collect();
        let mut out = Vec::new();
        for _ in 0..n.min(pool.len()) {
            let i = pool.remove(draw.value(0..pool.len()));
            self.crash[i].store(true, Ordering::SeqCst);
            out.push(i);
        }
        out.sort_unstable();
        out
    }

    /// Stops every consumer (after its current batch) and waits.
    /// A consumer still blocked inside its client after `patience` (say,
    /// a commit to a coordinator that never came back) is left behind and
    /// noted in the history, rather than hang the run.
    pub fn stop(&self, patience: Duration, history: &History) {
        self.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = std::time::Instant::now() + patience;
        for t in threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                let name = t.thread().name().unwrap_or("consumer").to_string();
                history.record(
                    "harness",
                    EventKind::Note {
                        message: format!("{name} did not stop within {patience:?}; left behind"),
                    },
                );
            }
        }
    }
}

/// Records the partitions a member holds after each rebalance.
struct Membership {
    history: History,
    name: String,
}

impl ClientContext for Membership {}

impl ConsumerContext for Membership {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = match rebalance {
            Rebalance::Assign(tpl) => tpl.elements().iter().map(|e| e.partition()).collect(),
            Rebalance::Revoke(_) => Vec::new(),
            Rebalance::Error(e) => {
                self.history.record(
                    &self.name,
                    EventKind::Note {
                        message: format!("rebalance error: {e}"),
                    },
                );
                return;
            }
        };
        self.history
            .record(&self.name, EventKind::Assign { partitions });
    }
}

type Member = BaseConsumer<Membership>;

fn member_client(job: &ConsumerJob, name: &str) -> Result<Member, String> {
    let auto = job.spec.commit == CommitPolicy::Auto;
    ClientConfig::new()
        .set("bootstrap.servers", &job.bootstrap)
        .set("group.id", &job.spec.group)
        .set("enable.auto.commit", if auto { "true" } else { "false" })
        .set("auto.commit.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("log_level", "0")
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(Membership {
            history: job.history.clone(),
            name: name.to_string(),
        })
        .map_err(|e| format!("consumer: {e}"))
}

fn member(i: u32, job: ConsumerJob, stop: Arc<AtomicBool>, crash: Arc<AtomicBool>) {
    if job.protocol == crate::cluster::Protocol::Nats {
        return nats_member(i, job, stop, crash);
    }
    let mut incarnation = 0;
    while !stop.load(Ordering::SeqCst) {
        incarnation += 1;
        let name = format!("c{i}#{incarnation}");
        job.history.record(&name, EventKind::ConsumerStart);
        let consumer = match member_client(&job, &name) {
            Ok(c) => c,
            Err(e) => {
                job.history.record(&name, EventKind::Note { message: e });
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = consumer.subscribe(&[&job.topic]) {
            job.history.record(
                &name,
                EventKind::Note {
                    message: format!("subscribe: {e}"),
                },
            );
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        crash.store(false, Ordering::SeqCst);
        if consume(&name, &consumer, &job, &stop, &crash) {
            job.history.record(&name, EventKind::ConsumerCrash);
        }
        // Dropping the client leaves the group without committing (manual policies).
        drop(consumer);
    }
}

/// Returns true when the incarnation crashed, false when it was stopped.
fn consume(
    name: &str,
    c: &Member,
    job: &ConsumerJob,
    stop: &AtomicBool,
    crash: &AtomicBool,
) -> bool {
    let policy = job.spec.commit;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        // A batch is what arrives within 50 ms of its first message (at most BATCH).
        let mut batch = Vec::new();
        let mut deadline: Option<std::time::Instant> = None;
        while batch.len() < BATCH {
            let wait = match deadline {
                None => Duration::from_millis(100),
                Some(d) => d.saturating_duration_since(std::time::Instant::now()),
            };
            match c.poll(wait) {
                Some(Ok(m)) => batch.push((m.partition(), m.offset(), value_of(m.payload()))),
                Some(Err(_)) | None => break,
            }
            deadline.get_or_insert_with(|| std::time::Instant::now() + Duration::from_millis(50));
        }
        if batch.is_empty() {
            continue;
        }
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, o, _) in &batch {
            ends.insert(*p, o + 1);
        }
        if policy == CommitPolicy::BeforeProcess && !commit(name, c, job, &ends) {
            continue;
        }
        // A crash lands mid-batch: half of what is left (at least one
        // message) is processed first.
        let mut crash_at = None;
        let len = batch.len();
        for (i, (p, o, v)) in batch.into_iter().enumerate() {
            if crash_at.is_none() && crash.load(Ordering::SeqCst) {
                crash_at = Some(i + (len - i).div_ceil(2));
            }
            if crash_at == Some(i) {
                return true;
            }
            job.history.record(
                name,
                EventKind::Deliver {
                    partition: p,
                    offset: o,
                    value: v,
                },
            );
            job.status.delivered.fetch_add(1, Ordering::Relaxed);
        }
        if crash_at.is_some() {
            // Crashed after processing the whole rest, before committing it.
            return true;
        }
        if policy == CommitPolicy::AfterProcess {
            commit(name, c, job, &ends);
        }
    }
}

fn commit(name: &str, c: &Member, job: &ConsumerJob, ends: &BTreeMap<i32, i64>) -> bool {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in ends {
        let _ = tpl.add_partition_offset(&job.topic, *p, Offset::Offset(*o));
    }
    match c.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            for (p, o) in ends {
                job.history.record(
                    name,
                    EventKind::Commit {
                        partition: *p,
                        offset: *o,
                    },
                );
            }
            true
        }
        Err(e) => {
            job.history.record(
                name,
                EventKind::Note {
                    message: format!("commit failed: {e}"),
                },
            );
            false
        }
    }
}

/// Records the group's committed offsets as the broker has them now (for
/// auto-commit, whose commits the harness does not see one by one).
pub fn record_committed(job: &ConsumerJob) {
    let Ok(c) = member_client(job, "group") else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..job.partitions {
        tpl.add_partition(&job.topic, p);
    }
    if let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(10)) {
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                job.history.record(
                    "group",
                    EventKind::Commit {
                        partition: e.partition(),
                        offset: o,
                    },
                );
            }
        }
    }
}

/// A NATS consumer incarnation loop: members share one durable pull
/// consumer (the group), so JetStream spreads messages over them and
/// redelivers what is not acknowledged in time. Acknowledgement is per
/// message: after-process acks after recording the batch, before-process
/// (and auto) before; there is no committed offset, so `skipped` is not
/// observed with NATS.
fn nats_member(i: u32, job: ConsumerJob, stop: Arc<AtomicBool>, crash: Arc<AtomicBool>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            job.history.record(
                "harness",
                EventKind::Note {
                    message: format!("consumer {i}: runtime: {e}"),
                },
            );
            return;
        }
    };
    let mut incarnation = 0;
    while !stop.load(Ordering::SeqCst) {
        incarnation += 1;
        let name = format!("c{i}#{incarnation}");
        job.history.record(&name, EventKind::ConsumerStart);
        crash.store(false, Ordering::SeqCst);
        match rt.block_on(nats_consume(&name, &job, &stop, &crash)) {
            Ok(true) => job.history.record(&name, EventKind::ConsumerCrash),
            Ok(false) => {}
            Err(e) => {
                job.history.record(&name, EventKind::Note { message: e });
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Returns true when the incarnation crashed, false when it was stopped.
async fn nats_consume(
    name: &str,
    job: &ConsumerJob,
    stop: &AtomicBool,
    crash: &AtomicBool,
) -> Result<bool, String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use futures::StreamExt;
    let js = async_nats::jetstream::new(crate::cluster::nats::connect(&job.bootstrap).await?);
    let stream = js
        .get_stream(&job.topic)
        .await
        .map_err(|e| format!("stream {}: {e}", job.topic))?;
    let consumer = stream
        .get_or_create_consumer(
            &job.spec.group,
            pull::Config {
                durable_name: Some(job.spec.group.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", job.spec.group))?;
    let ack_first = job.spec.commit != CommitPolicy::AfterProcess;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let mut messages = consumer
            .batch()
            .max_messages(BATCH)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        let mut batch = Vec::new();
        while let Some(m) = messages.next().await {
            let Ok(m) = m else { break };
            let Ok((seq, delivered)) = m.info().map(|i| (i.stream_sequence, i.delivered)) else {
                continue;
            };
            batch.push((seq as i64, delivered, value_of(Some(&m.payload)), m));
        }
        if batch.is_empty() {
            continue;
        }
        if ack_first {
            for (_, _, _, m) in &batch {
                let _ = m.ack().await;
            }
        }
        // A crash lands mid-batch, as with Kafka consumers.
        let mut crash_at = None;
        let len = batch.len();
        let mut done = Vec::new();
        for (i, (seq, delivered, value, m)) in batch.into_iter().enumerate() {
            if crash_at.is_none() && crash.load(Ordering::SeqCst) {
                crash_at = Some(i + (len - i).div_ceil(2));
            }
            if crash_at == Some(i) {
                return Ok(true);
            }
            if delivered > 1 {
                // A redelivery (not acknowledged in time, or by a crashed
                // member): this member's position legitimately moves back,
                // as after a Kafka reassignment.
                job.history.record(
                    name,
                    EventKind::Assign {
                        partitions: vec![0],
                    },
                );
            }
            job.history.record(
                name,
                EventKind::Deliver {
                    partition: 0,
                    offset: seq,
                    value,
                },
            );
            job.status.delivered.fetch_add(1, Ordering::Relaxed);
            done.push(m);
        }
        if crash_at.is_some() {
            return Ok(true);
        }
        if !ack_first {
            for m in &done {
                let _ = m.ack().await;
            }
        }
    }
}
