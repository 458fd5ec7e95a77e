//! The orchestrator: Plan -> run dir with history, results and summary.
//!
//! Stages: start the cluster and create the topic; run producers,
//! consumers and the nemesis for the plan's duration (printing a status
//! line); stop producers and let their last attempts finish; heal every
//! fault; drain; check; report. The cluster is killed on every exit path.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::checker::{self, Facts, Outcome};
use crate::cluster::Cluster;
use crate::driver::Driver;
use crate::error::Error;
use crate::history::{EventKind, History};
use crate::nemesis::{schedule, Nemesis};
use crate::plan::Plan;
use crate::report::{self, Timings};
use crate::workload::consumer::{self, ConsumerJob, Consumers};
use crate::workload::producer::{self, ProducerJob};
use crate::workload::Status;

/// Options of one run beyond the plan.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub seed: Option<u64>,
    pub out: Option<PathBuf>,
    pub duration: Option<Duration>,
}

/// What a run produced.
pub struct RunResult {
    pub dir: PathBuf,
    pub seed: u64,
    pub outcome: Outcome,
    pub summary: String,
}

/// A seed from the clock and the process id.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

fn run_dir(out: &Path, plan: &str) -> Result<PathBuf, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (d, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = d + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let stamp = format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let mut dir = out.join(format!("{stamp}-{plan}"));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = out.join(format!("{stamp}-{plan}-{n}"));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Harness(format!("create run dir {}: {e}", dir.display())))?;
    Ok(dir)
}

/// The plan as run: its text with the seed used. A `--duration` override
/// is recorded as a comment (the plan's own duration stays, so the file
/// stays valid: faults scheduled after a shortened end were simply not due).
fn resolved_plan(plan: &Plan, seed: u64, duration: Duration) -> String {
    let text = std::fs::read_to_string(&plan.file).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("seed:"))
        .map(str::to_string)
        .collect();
    lines.push(format!("seed: {seed}"));
    if duration != plan.duration {
        let ms = duration.as_millis();
        lines.push(format!("# this run lasted {ms}ms (--duration); `unlost run plan.yaml --duration {ms}ms` reproduces it"));
    }
    lines.join("\n") + "\n"
}

/// Fails with exit 3, naming it, when the plan needs what this machine lacks.
pub fn check_capabilities(plan: &Plan) -> Result<(), Error> {
    if plan.lazyfs && !Path::new("/dev/fuse").exists() {
        return Err(Error::Capability {
            what: "/dev/fuse".into(),
            hint: "storage.lazyfs mounts a FUSE filesystem: load the fuse module".into(),
        });
    }
    let nft = plan
        .faults
        .iter()
        .flat_map(|f| &f.actions)
        .any(|(a, _)| a.kind.needs_nft());
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    if nft && !on_path("nft") {
        return Err(Error::Capability {
            what: "nft".into(),
            hint: "partition and packet-loss use nftables: apt-get install nftables".into(),
        });
    }
    let drops = plan
        .faults
        .iter()
        .flat_map(|f| &f.actions)
        .any(|(a, _)| a.kind == crate::plan::FaultKind::DropKernelCaches);
    if drops && !crate::sandbox::real_root() {
        return Err(Error::Capability {
            what: "real root".into(),
            hint: "drop-kernel-caches writes /proc/sys/vm/drop_caches: run as root".into(),
        });
    }
    Ok(())
}

/// Runs a plan end to end.
pub async fn run(plan: &Plan, opts: &RunOptions) -> Result<RunResult, Error> {
    let started = Instant::now();
    check_capabilities(plan)?;
    let seed = opts.seed.or(plan.seed).unwrap_or_else(fresh_seed);
    let duration = opts.duration.unwrap_or(plan.duration);
    let out = opts.out.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let dir = run_dir(&out, &plan.name)?;
    std::fs::write(dir.join("plan.yaml"), resolved_plan(plan, seed, duration))
        .map_err(|e| Error::Harness(format!("write plan.yaml: {e}")))?;
    eprintln!(
        "unlost: plan {} seed {seed}, run dir {}",
        plan.name,
        dir.display()
    );
    let history = History::create(&dir.join("history.jsonl"))?;
    history.record(
        "harness",
        EventKind::Run {
            plan: plan.name.clone(),
            seed,
            partitions: plan.topic.partitions,
            max_in_flight: plan.producers.max_in_flight,
            retries: plan.producers.retries,
            consumers: plan.consumers.count,
        },
    );

    let spec = plan.cluster.clone();
    let (d, lazyfs) = (dir.clone(), plan.lazyfs);
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&spec, lazyfs, &d))
        .await
        .map_err(|e| Error::Harness(e.to_string()))??;
    let driver = cluster.driver();
    let cluster = Arc::new(Mutex::new(cluster));
    driver.create_topic(&plan.topic).await?;
    wait_for_leaders(
        &driver,
        &plan.topic.name,
        plan.topic.partitions,
        Duration::from_secs(30),
    )
    .await?;
    let setup_s = started.elapsed().as_secs_f64();

    // Leader changes, as clients see them, for the record and the report.
    let watcher = tokio::spawn(watch_leaders(
        driver.clone(),
        plan.topic.name.clone(),
        history.clone(),
    ));

    // Fault phase.
    let status = Arc::new(Status::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut producers = Vec::new();
    for index in 0..plan.producers.count {
        let job = ProducerJob {
            index,
            spec: plan.producers.clone(),
            topic: plan.topic.name.clone(),
            partitions: plan.topic.partitions,
            driver: driver.clone(),
            seed,
            history: history.clone(),
            status: status.clone(),
        };
        producers.push(tokio::spawn(producer::run(job, stop_rx.clone())));
    }
    let consumer_job = ConsumerJob {
        spec: plan.consumers.clone(),
        topic: plan.topic.name.clone(),
        partitions: plan.topic.partitions,
        driver: driver.clone(),
        history: history.clone(),
        status: status.clone(),
    };
    let consumers = Consumers::start(consumer_job.clone());
    let mut nemesis = Nemesis::new(
        cluster.clone(),
        history.clone(),
        consumers.clone(),
        plan.topic.name.clone(),
        plan.topic.partitions,
        seed,
    );
    let shown = nemesis.shown.clone();
    let ticker = tokio::spawn(status_line(status.clone(), shown, duration));
    let phase = tokio::time::Instant::now();
    let timeline = schedule::timeline(&plan.faults, duration, seed);
    let fault_result = nemesis.run(timeline, phase, phase + duration).await;
    tokio::time::sleep_until(phase + duration).await;
    let _ = stop_tx.send(true);
    for p in producers {
        match p.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => history.record(
                "harness",
                EventKind::Note {
                    message: format!("producer: {e}"),
                },
            ),
            Err(e) => history.record(
                "harness",
                EventKind::Note {
                    message: format!("producer task: {e}"),
                },
            ),
        }
    }
    let fault_phase_s = phase.elapsed().as_secs_f64();

    // Heal before the consumers stop: a consumer committing or leaving the
    // group against a dead or cut-off coordinator blocks until it is back.
    let heal_start = Instant::now();
    let heal_result = nemesis.heal().await;
    let c2 = consumers.clone();
    let h2 = history.clone();
    tokio::task::spawn_blocking(move || c2.stop(Duration::from_secs(30), &h2))
        .await
        .map_err(|e| Error::Harness(e.to_string()))?;
    ticker.abort();
    eprintln!();
    fault_result?;
    heal_result?;
    wait_for_leaders(
        &driver,
        &plan.topic.name,
        plan.topic.partitions,
        Duration::from_secs(30),
    )
    .await
    .ok();
    if plan.consumers.count > 0 && plan.consumers.commit == crate::plan::CommitPolicy::Auto {
        let job = consumer_job.clone();
        tokio::task::spawn_blocking(move || consumer::record_committed(&job))
            .await
            .ok();
    }
    let heal_s = heal_start.elapsed().as_secs_f64();
    let drain_start = Instant::now();
    let (h, d, t, n, timeout) = (
        history.clone(),
        driver.clone(),
        plan.topic.name.clone(),
        plan.topic.partitions,
        plan.drain_timeout,
    );
    let drained = tokio::task::spawn_blocking(move || d.drain(&t, n, timeout, &h))
        .await
        .map_err(|e| Error::Harness(e.to_string()))?;
    // Where the broker lets every replica be read, prove they agree.
    if let (Some(drained), true) = (drained, driver.replica_reads().is_some()) {
        let nodes: std::collections::BTreeMap<u32, String> = cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .nodes
            .iter()
            .map(|n| (n.id, n.addr()))
            .collect();
        let (h, t, timeout) = (history.clone(), plan.topic.name.clone(), plan.drain_timeout);
        let d = driver.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(r) = d.replica_reads() {
                r.read_replicas(&nodes, &t, &drained, timeout, &h);
            }
        })
        .await
        .map_err(|e| Error::Harness(e.to_string()))?;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    watcher.abort();
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.lock().unwrap_or_else(|e| e.into_inner()).shutdown())
            .await
            .ok();
    }
    history.flush().map_err(Error::Harness)?;

    // Check and report.
    let check_start = Instant::now();
    let (outcome, facts) = check_dir(&dir, plan)?;
    let timings = Timings {
        setup_s,
        fault_phase_s,
        heal_s,
        drain_s,
        check_s: check_start.elapsed().as_secs_f64(),
        total_s: started.elapsed().as_secs_f64(),
    };
    let summary = report::write_all(&dir, plan, seed, &outcome, &facts, &timings)?;
    Ok(RunResult {
        dir,
        seed,
        outcome,
        summary,
    })
}

/// Checks the history stored in a run dir against the plan's expectations.
pub fn check_dir(dir: &Path, plan: &Plan) -> Result<(Outcome, Facts), Error> {
    let facts = checker::fold(&dir.join("history.jsonl"))?;
    let outcome = checker::evaluate(&facts, &plan.expect);
    Ok((outcome, facts))
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
            return Err(Error::Cluster(format!(
                "topic {topic} has no leader for every partition after {timeout:?}: {last_error}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Shows elapsed/total, counts and active faults: a progress bar on a
/// terminal, a plain line every 5 s otherwise (CI logs).
async fn status_line(status: Arc<Status>, faults: crate::nemesis::ActiveFaults, total: Duration) {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(total.as_secs().max(1));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed:>4} [{bar:24.cyan/blue}] {pos}/{len}s {msg}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        b
    });
    let start = Instant::now();
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let (sent, acked, failed, info, delivered) = status.snapshot();
        let active = faults.lock().unwrap_or_else(|e| e.into_inner()).join(" ");
        let msg = format!(
            "sent {sent} acked {acked} failed {failed} indeterminate {info} delivered {delivered} faults: {}",
            if active.is_empty() { "none" } else { &active }
        );
        match &bar {
            Some(b) => {
                b.set_position(start.elapsed().as_secs().min(total.as_secs()));
                b.set_message(msg);
            }
            None if tick.is_multiple_of(5) => eprintln!(
                "[{:>4.0}s/{:.0}s] {msg}",
                start.elapsed().as_secs_f64(),
                total.as_secs_f64()
            ),
            None => {}
        }
    }
}
