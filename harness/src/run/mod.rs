//! The orchestrator: Plan -> run dir with history, results and summary.
//!
//! A run is a sequence of typed phases (`events::Phase`): cluster up,
//! topic, workload + nemesis, heal, drain, replica reads, check, report.
//! Each is a function from what the earlier ones produced to what the
//! later ones need, and each emits its start and finish as `RunEvent`s;
//! reporters (the status line, and the timings in the results) consume
//! them. The cluster is killed on every exit path.

mod phases;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::checker::{self, Facts, Outcome};
use crate::error::Error;
use crate::events::{self, Events, Phase, Reporter, RunEvent};
use crate::plan::Plan;
use crate::report::Timings;

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
    /// Faults that acted (the summary's `faults` count).
    pub faults: usize,
    pub timings: Timings,
    /// The run's events (progress left out).
    pub events: Vec<RunEvent>,
    pub summary: String,
}

/// A seed from the clock and the process id.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

/// The UTC time now as `YYYYMMDDTHHMMSS` (run dir names).
pub fn stamp() -> String {
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
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn run_dir(out: &Path, plan: &str) -> Result<PathBuf, Error> {
    let stamp = stamp();
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

/// Runs a plan end to end, with the status line on stderr.
pub async fn run(plan: &Plan, opts: &RunOptions) -> Result<RunResult, Error> {
    let status: Arc<dyn Reporter> = Arc::new(crate::report::status::StatusLine::default());
    run_with(plan, opts, vec![status]).await
}

/// Runs a plan end to end, telling `reporters` as it goes.
pub async fn run_with(
    plan: &Plan,
    opts: &RunOptions,
    reporters: Vec<Arc<dyn Reporter>>,
) -> Result<RunResult, Error> {
    check_capabilities(plan)?;
    let events = Events::new(reporters);
    let seed = opts.seed.or(plan.seed).unwrap_or_else(fresh_seed);
    let duration = opts.duration.unwrap_or(plan.duration);
    let out = opts.out.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let dir = run_dir(&out, &plan.name)?;
    std::fs::write(dir.join("plan.yaml"), resolved_plan(plan, seed, duration))
        .map_err(|e| Error::Harness(format!("write plan.yaml: {e}")))?;
    events.emit(events::RunEventKind::Started {
        plan: plan.name.clone(),
        seed,
        dir: dir.clone(),
        duration,
    });
    let run = phases::Run::begin(plan, seed, duration, &dir)?;
    let up = events
        .phase(Phase::ClusterUp, phases::cluster_up(&run))
        .await?;
    events.phase(Phase::Topic, phases::topic(&run, &up)).await?;
    let worked = events
        .phase(Phase::Workload, phases::workload(&run, &up, &events))
        .await;
    events
        .phase(Phase::Heal, phases::heal(&run, &up, worked))
        .await?;
    let drained = events.phase(Phase::Drain, phases::drain(&run, &up)).await?;
    if let Some(drained) = drained {
        events
            .phase(
                Phase::ReplicaReads,
                phases::replica_reads(&run, &up, drained),
            )
            .await?;
    }
    phases::shut_down(&run, up).await?;
    let (outcome, facts) = events
        .phase(Phase::Check, async { check_dir(&dir, plan) })
        .await?;
    let faults = facts.faults.len();
    // The report's own time is in the events, not in the results it writes.
    let timings = timings(&events.kept(), events.elapsed());
    let summary = events
        .phase(Phase::Report, async {
            crate::report::write_all(&dir, plan, seed, &outcome, &facts, &timings)
        })
        .await?;
    Ok(RunResult {
        dir,
        seed,
        outcome,
        faults,
        timings,
        events: events.kept(),
        summary,
    })
}

/// Phase durations as the results report them.
fn timings(kept: &[RunEvent], total: Duration) -> Timings {
    let s = |phases: &[Phase]| events::took(kept, phases).as_secs_f64();
    Timings {
        setup_s: s(&[Phase::ClusterUp, Phase::Topic]),
        fault_phase_s: s(&[Phase::Workload]),
        heal_s: s(&[Phase::Heal]),
        drain_s: s(&[Phase::Drain, Phase::ReplicaReads]),
        check_s: s(&[Phase::Check]),
        total_s: total.as_secs_f64(),
    }
}

/// Checks the history stored in a run dir against the plan's expectations.
pub fn check_dir(dir: &Path, plan: &Plan) -> Result<(Outcome, Facts), Error> {
    let facts = checker::fold(&crate::history::in_dir(dir))?;
    let outcome = checker::evaluate(&facts, &plan.expect);
    Ok((outcome, facts))
}
