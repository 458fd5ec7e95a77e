//! The phases of one run, each a function from what the earlier phases
//! produced to what the later ones need (see `run::run_with`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::driver::{Drained, Driver};
use crate::error::Error;
use crate::events::{Counts, Events, RunEventKind};
use crate::history::{EventKind, History};
use crate::nemesis::{schedule, Nemesis};
use crate::plan::Plan;
use crate::workload::consumer::{self, ConsumerJob, Consumers};
use crate::workload::producer::{self, ProducerJob};
use crate::workload::Status;

/// How long the topic may be without a leader for some partition.
const LEADERS: Duration = Duration::from_secs(30);

/// What every phase knows: the plan as run, and where it is recorded.
pub struct Run<'a> {
    pub plan: &'a Plan,
    pub seed: u64,
    pub duration: Duration,
    pub dir: PathBuf,
    pub history: History,
}

impl<'a> Run<'a> {
    /// Opens the history and records the run's parameters.
    pub fn begin(
        plan: &'a Plan,
        seed: u64,
        duration: Duration,
        dir: &Path,
    ) -> Result<Run<'a>, Error> {
        let history = History::create(&dir.join(crate::history::FILE))?;
        history.record(
            "harness",
            EventKind::Run {
                plan: plan.name.clone(),
                seed,
                partitions: plan.topic.partitions,
                max_in_flight: plan.producers.max_in_flight,
                retries: plan.producers.retries,
                consumers: plan.consumers.count,
                queue: !plan.cluster.broker.has_positions(),
            },
        );
        Ok(Run {
            plan,
            seed,
            duration,
            dir: dir.to_path_buf(),
            history,
        })
    }

    fn note(&self, message: String) {
        self.history.record("harness", EventKind::Note { message });
    }
}

/// A running cluster and its driver.
pub struct Up {
    cluster: Arc<Mutex<Cluster>>,
    driver: Arc<dyn Driver>,
    /// Records leader changes from the topic phase to the shutdown.
    watcher: Mutex<Option<JoinHandle<()>>>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Harness(e.to_string()))
}

/// Starts every node and waits until each is ready.
pub async fn cluster_up(run: &Run<'_>) -> Result<Up, Error> {
    let spec = run.plan.cluster.clone();
    let (d, lazyfs) = (run.dir.clone(), run.plan.lazyfs);
    let mut cluster = blocking(move || Cluster::start(&spec, lazyfs, &d)).await??;
    cluster.set_writeback(run.plan.writeback);
    let driver = cluster.driver();
    Ok(Up {
        cluster: Arc::new(Mutex::new(cluster)),
        driver,
        watcher: Mutex::new(None),
    })
}

/// Creates the topic, waits for a leader of every partition, and starts
/// recording leader changes.
pub async fn topic(run: &Run<'_>, up: &Up) -> Result<(), Error> {
    let topic = &run.plan.topic;
    up.driver.create_topic(topic).await?;
    wait_for_leaders(&up.driver, &topic.name, topic.partitions, LEADERS).await?;
    let watcher = tokio::spawn(watch_leaders(
        up.driver.clone(),
        topic.name.clone(),
        run.history.clone(),
    ));
    *up.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
    Ok(())
}

/// What the workload phase leaves for the heal.
pub struct Worked {
    nemesis: Nemesis,
    consumers: Consumers,
    consumer_job: ConsumerJob,
    /// The nemesis's own failure, reported after the heal.
    faults: Result<(), crate::nemesis::NemesisError>,
}

/// Producers, consumers and the nemesis for the run's duration; then the
/// producers stop and their last attempts finish.
pub async fn workload(run: &Run<'_>, up: &Up, events: &Events) -> Worked {
    let plan = run.plan;
    let status = Arc::new(Status::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let producers: Vec<_> = (0..plan.producers.count)
        .map(|index| {
            let job = ProducerJob {
                index,
                spec: plan.producers.clone(),
                topic: plan.topic.name.clone(),
                partitions: plan.topic.partitions,
                driver: up.driver.clone(),
                seed: run.seed,
                history: run.history.clone(),
                status: status.clone(),
            };
            tokio::spawn(producer::run(job, stop_rx.clone()))
        })
        .collect();
    let consumer_job = ConsumerJob {
        spec: plan.consumers.clone(),
        topic: plan.topic.name.clone(),
        partitions: plan.topic.partitions,
        driver: up.driver.clone(),
        history: run.history.clone(),
        status: status.clone(),
    };
    let consumers = Consumers::start(consumer_job.clone());
    let mut nemesis = Nemesis::new(
        up.cluster.clone(),
        run.history.clone(),
        consumers.clone(),
        plan.topic.name.clone(),
        plan.topic.partitions,
        run.seed,
    );
    let phase = tokio::time::Instant::now();
    let end = phase + run.duration;
    let timeline = schedule::timeline(&plan.faults, run.duration, run.seed);
    let shown = nemesis.shown.clone();
    let progress = progress(events, &status, &shown, run.duration, end);
    let (faults, ()) = tokio::join!(nemesis.run(timeline, phase, end), progress);
    tokio::time::sleep_until(end).await;
    let _ = stop_tx.send(true);
    for p in producers {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => run.note(format!("producer: {e}")),
            Err(e) => run.note(format!("producer task: {e}")),
        }
    }
    Worked {
        nemesis,
        consumers,
        consumer_job,
        faults,
    }
}

/// A progress event once a second until `end`.
async fn progress(
    events: &Events,
    status: &Status,
    faults: &crate::nemesis::ActiveFaults,
    total: Duration,
    end: tokio::time::Instant,
) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    while tokio::time::Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(end) => break,
        }
        let (sent, acked, failed, indeterminate, delivered) = status.snapshot();
        events.emit(RunEventKind::Progress {
            elapsed: start.elapsed(),
            total,
            counts: Counts {
                sent,
                acked,
                failed,
                indeterminate,
                delivered,
            },
            faults: faults.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        });
    }
}

/// Heals every fault before the consumers stop (a consumer committing or
/// leaving the group against a dead or cut-off coordinator blocks until
/// it is back), waits for leaders, and records the group's committed
/// positions as the broker has them (checked against the acknowledged
/// commits: `lost-commit`; with auto-commit, the only record of them).
pub async fn heal(run: &Run<'_>, up: &Up, worked: Worked) -> Result<(), Error> {
    let Worked {
        mut nemesis,
        consumers,
        consumer_job,
        faults,
    } = worked;
    let healed = nemesis.heal().await;
    let h = run.history.clone();
    blocking(move || consumers.stop(Duration::from_secs(30), &h)).await?;
    faults?;
    healed?;
    let topic = &run.plan.topic;
    if let Err(e) = wait_for_leaders(&up.driver, &topic.name, topic.partitions, LEADERS).await {
        run.note(format!("after the heal: {e}"));
    }
    if run.plan.consumers.count > 0 {
        blocking(move || consumer::record_committed(&consumer_job)).await?;
    }
    Ok(())
}

/// The final read.
pub async fn drain(run: &Run<'_>, up: &Up) -> Result<Option<Drained>, Error> {
    let (h, d, t, n, timeout) = (
        run.history.clone(),
        up.driver.clone(),
        run.plan.topic.name.clone(),
        run.plan.topic.partitions,
        run.plan.drain_timeout,
    );
    blocking(move || d.drain(&t, n, timeout, &h)).await
}

/// Where the driver can read every replica on its own: prove they agree.
pub async fn replica_reads(run: &Run<'_>, up: &Up, drained: Drained) -> Result<(), Error> {
    if up.driver.replica_reads().is_none() {
        return Ok(());
    }
    let nodes: BTreeMap<u32, String> = up
        .cluster
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .nodes
        .iter()
        .map(|n| (n.id, n.addr()))
        .collect();
    let (h, t, timeout, d) = (
        run.history.clone(),
        run.plan.topic.name.clone(),
        run.plan.drain_timeout,
        up.driver.clone(),
    );
    blocking(move || {
        if let Some(r) = d.replica_reads() {
            r.read_replicas(&nodes, &t, &drained, timeout, &h);
        }
    })
    .await
}

/// Stops recording leaders, kills every node and flushes the history.
pub async fn shut_down(run: &Run<'_>, up: Up) -> Result<(), Error> {
    if let Some(w) = up.watcher.lock().unwrap_or_else(|e| e.into_inner()).take() {
        w.abort();
    }
    let c = up.cluster.clone();
    blocking(move || c.lock().unwrap_or_else(|e| e.into_inner()).shutdown()).await?;
    run.history.close().map_err(Error::Harness)
}

/// Records every change of a partition's leader (polled every 500 ms).
async fn watch_leaders(driver: Arc<dyn Driver>, topic: String, history: History) {
    let mut known: std::collections::BTreeMap<i32, i32> = std::collections::BTreeMap::new();
    loop {
        let (d, t) = (driver.clone(), topic.clone());
        if let Ok(Ok(layout)) =
            tokio::task::spawn_blocking(move || d.layout(&t, Duration::from_secs(2))).await
        {
            for (p, l) in layout.leaders {
                if known.insert(p, l) != Some(l) {
                    history.record(
                        "harness",
                        EventKind::Leader {
                            partition: p,
                            leader: l,
                        },
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_for_leaders(
    driver: &Arc<dyn Driver>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let (d, t) = (driver.clone(), topic.to_string());
        let layout = tokio::task::spawn_blocking(move || d.layout(&t, Duration::from_secs(3)))
            .await
            .map_err(|e| Error::Harness(e.to_string()))?;
        let last_error = match layout {
            Ok(l) if (0..partitions).all(|p| l.leaders.get(&p).is_some_and(|l| *l >= 0)) => {
                return Ok(())
            }
            Ok(l) => format!("leaders {:?}", l.leaders),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(crate::driver::DriverError::Timeout {
                what: format!("a leader for every partition of topic {topic} ({last_error})"),
                after: timeout,
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
