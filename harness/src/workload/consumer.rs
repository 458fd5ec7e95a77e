//! Consumers: members of one group that poll, process (record each
//! delivered message) and commit per policy, through the cluster's driver
//! (`driver::Member`):
//! - after-process: process the batch, then commit it (at-least-once);
//! - before-process: commit the batch, then process (at-most-once); a
//!   batch whose commit failed is not processed;
//! - auto: the member commits by itself (the client's periodic
//!   auto-commit, or acknowledging on receipt).
//!
//! Every assignment change is recorded (an `assign` event: positions may
//! restart from the committed ones there; a redelivery is one too). A
//! consumer-crash fault stops a consumer mid-batch, without committing the
//! rest, and a new incarnation (`c<i>#<n+1>`) joins the group. (With
//! auto-commit, closing a Kafka client commits polled positions; that
//! crash is a close.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Status;
use crate::draw::Draw;
use crate::driver::{Delivery, Driver, Member, MemberSetup};
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
    pub driver: Arc<dyn Driver>,
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

fn member(i: u32, job: ConsumerJob, stop: Arc<AtomicBool>, crash: Arc<AtomicBool>) {
    let mut incarnation = 0;
    while !stop.load(Ordering::SeqCst) {
        incarnation += 1;
        let name = format!("c{i}#{incarnation}");
        job.history.record(&name, EventKind::ConsumerStart);
        let setup = MemberSetup {
            spec: job.spec.clone(),
            topic: job.topic.clone(),
            name: name.clone(),
            history: job.history.clone(),
        };
        let mut member = match job.driver.member(setup) {
            Ok(m) => m,
            Err(e) => {
                job.history.record(
                    &name,
                    EventKind::Note {
                        message: format!("consumer: {e}"),
                    },
                );
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        crash.store(false, Ordering::SeqCst);
        match consume(&name, member.as_mut(), &job, &stop, &crash) {
            Ok(true) => job.history.record(&name, EventKind::ConsumerCrash),
            Ok(false) => {}
            Err(message) => {
                job.history.record(&name, EventKind::Note { message });
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // Dropping the member leaves the group without committing (manual policies).
        drop(member);
    }
}

/// Ok(true) when the incarnation crashed, Ok(false) when it was stopped,
/// Err when its client became unusable.
fn consume(
    name: &str,
    m: &mut dyn Member,
    job: &ConsumerJob,
    stop: &AtomicBool,
    crash: &AtomicBool,
) -> Result<bool, String> {
    let policy = job.spec.commit;
    // A broker without committed positions acknowledges per message; with
    // auto it takes a message as done once delivered.
    let per_message = job.driver.committed_positions().is_none();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let batch = m.poll(BATCH).map_err(|e| format!("poll: {e}"))?;
        if batch.is_empty() {
            continue;
        }
        if per_message && policy == CommitPolicy::Auto {
            record_acks(name, job, &batch);
        }
        if policy == CommitPolicy::BeforeProcess && !commit(name, m, job, &batch) {
            continue;
        }
        // A crash lands mid-batch: half of what is left (at least one
        // message) is processed first.
        let mut crash_at = None;
        let len = batch.len();
        for (i, d) in batch.iter().enumerate() {
            if crash_at.is_none() && crash.load(Ordering::SeqCst) {
                crash_at = Some(i + (len - i).div_ceil(2));
            }
            if crash_at == Some(i) {
                return Ok(true);
            }
            process(name, job, d);
        }
        if crash_at.is_some() {
            // Crashed after processing the whole rest, before committing it.
            return Ok(true);
        }
        if policy == CommitPolicy::AfterProcess {
            commit(name, m, job, &batch);
        }
    }
}

/// Processing is recording the delivery.
fn process(name: &str, job: &ConsumerJob, d: &Delivery) {
    if d.redelivered {
        // This member's position legitimately moves back, as after a
        // reassignment.
        job.history.record(
            name,
            EventKind::Assign {
                partitions: vec![d.partition],
            },
        );
    }
    job.history.record(
        name,
        EventKind::Deliver {
            partition: d.partition,
            offset: d.position,
            value: d.value.clone(),
        },
    );
    job.status.delivered.fetch_add(1, Ordering::Relaxed);
}

/// Commits a batch and records what the broker now stores; false when
/// the commit failed.
fn commit(name: &str, m: &mut dyn Member, job: &ConsumerJob, batch: &[Delivery]) -> bool {
    match m.commit(batch) {
        Ok(positions) if positions.is_empty() && job.driver.committed_positions().is_none() => {
            // Acknowledged one by one: the checker holds the group to
            // having processed each.
            record_acks(name, job, batch);
            true
        }
        Ok(positions) => {
            for (partition, offset) in positions {
                job.history
                    .record(name, EventKind::Commit { partition, offset });
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

/// Records a per-message acknowledgement of each message of `batch`.
fn record_acks(name: &str, job: &ConsumerJob, batch: &[Delivery]) {
    for d in batch {
        job.history.record(
            name,
            EventKind::Ack {
                partition: d.partition,
                offset: d.position,
                // A queue's message has no position: its value names it.
                value: (d.position < 0).then(|| d.value.clone()),
            },
        );
    }
}

/// Records the group's committed positions as the broker has them now
/// (for auto-commit, whose commits the harness does not see one by one),
/// when the driver can read them. Blocking.
pub fn record_committed(job: &ConsumerJob) {
    let Some(c) = job.driver.committed_positions() else {
        return;
    };
    match c.committed(&job.spec.group, &job.topic, job.partitions) {
        Ok(positions) => {
            for (partition, offset) in positions {
                job.history
                    .record("group", EventKind::GroupCommitted { partition, offset });
            }
        }
        Err(e) => job.history.record(
            "harness",
            EventKind::Note {
                message: format!("committed positions of the group: {e}"),
            },
        ),
    }
}
