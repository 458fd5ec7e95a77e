//! `unlost suite`: plans -> one run each, in order -> a line per plan, a
//! final table, an exit code and optionally a JUnit file. Sharding splits
//! the sorted plan list deterministically across CI jobs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{exit, Error};
use crate::plan::Plan;
use crate::report::junit::{PlanOutcome, PlanResult};
use crate::run::{self, RunOptions};

/// Suite options.
#[derive(Debug, Clone, Default)]
pub struct SuiteOptions {
    pub junit: Option<PathBuf>,
    pub out: Option<PathBuf>,
    /// (K, N): run the plans whose index mod N is K-1.
    pub shard: Option<(usize, usize)>,
    pub fail_fast: bool,
    pub duration: Option<Duration>,
    pub seed: Option<u64>,
    /// Runs of each plan (at least 1). Repeated runs draw fresh seeds
    /// unless `seed` is set, so a repeat explores schedules and timings.
    pub repeat: u32,
}

/// Parses "K/N" with 1 <= K <= N.
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("invalid shard {s:?}: use K/N with 1 <= K <= N, e.g. 2/4");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// Plan files named by the arguments: files as given, directories searched
/// for `*.yaml` (sorted; `broken/` directories are skipped).
pub fn collect(args: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut plans = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut found = Vec::new();
            let mut stack = vec![a.clone()];
            while let Some(d) = stack.pop() {
                let entries = std::fs::read_dir(&d)
                    .map_err(|e| Error::Usage(format!("read {}: {e}", d.display())))?;
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() && p.file_name().is_some_and(|n| n != "broken") {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                        found.push(p);
                    }
                }
            }
            found.sort();
            plans.extend(found);
        } else if a.is_file() {
            plans.push(a.clone());
        } else {
            return Err(Error::Usage(format!(
                "{}: no such plan or directory",
                a.display()
            )));
        }
    }
    if plans.is_empty() {
        return Err(Error::Usage("no plans found".into()));
    }
    Ok(plans)
}

/// This shard's plans.
pub fn shard(plans: Vec<PathBuf>, shard: Option<(usize, usize)>) -> Vec<PathBuf> {
    match shard {
        None => plans,
        Some((k, n)) => plans
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % n == k - 1)
            .map(|(_, p)| p)
            .collect(),
    }
}

fn one(path: &Path, opts: &SuiteOptions, rt: &tokio::runtime::Runtime) -> PlanResult {
    let repeated = opts.repeat > 1;
    let start = Instant::now();
    let file = path.display().to_string();
    let plan = match Plan::load(path) {
        Ok(p) => p,
        Err(e) => {
            return PlanResult {
                name: file.clone(),
                file,
                duration: start.elapsed(),
                outcome: PlanOutcome::Error {
                    code: exit::USAGE,
                    message: e.to_string(),
                },
            };
        }
    };
    let ropts = RunOptions {
        seed: opts.seed.or_else(|| repeated.then(run::fresh_seed)),
        out: opts.out.clone(),
        duration: opts.duration,
    };
    let outcome = match rt.block_on(run::run(&plan, &ropts)) {
        Ok(r) => {
            let o = &r.outcome;
            PlanOutcome::Ran {
                met: o.expectations_met,
                seed: r.seed,
                run_dir: r.dir.display().to_string(),
                summary: r.summary.clone(),
                counts: crate::report::counts_line(o, r.faults, r.timings.total_s),
                unmet: o
                    .floor
                    .iter()
                    .map(|why| format!("unknown: {why}"))
                    .chain(
                        o.expectations
                            .iter()
                            .filter(|e| e.met != Some(true))
                            .map(|e| {
                                format!("{} {} (wanted {})", e.anomaly.name(), e.got, e.wanted)
                            }),
                    )
                    .collect(),
                first_lost: o
                    .lost
                    .iter()
                    .take(10)
                    .map(|l| {
                        format!(
                            "{} at {}/{} acked {:.3}s; faults: {}",
                            l.value,
                            l.partition,
                            l.offset,
                            l.acked_at,
                            l.faults.join(", ")
                        )
                    })
                    .collect(),
            }
        }
        Err(e) => PlanOutcome::Error {
            code: e.exit_code(),
            message: e.to_string(),
        },
    };
    PlanResult {
        name: plan.name,
        file,
        duration: start.elapsed(),
        outcome,
    }
}

/// Runs the plans; prints a line each and a final table; returns the exit code.
pub fn run_suite(
    plans: &[PathBuf],
    opts: &SuiteOptions,
    rt: &tokio::runtime::Runtime,
) -> Result<i32, Error> {
    let mut results = Vec::new();
    let repeat = opts.repeat.max(1) as usize;
    let total = plans.len() * repeat;
    let runs = plans
        .iter()
        .flat_map(|p| (1..=repeat).map(move |k| (p, k)))
        .enumerate();
    for (i, (p, k)) in runs {
        eprintln!("[{}/{total}] {} ...", i + 1, p.display());
        let mut r = one(p, opts, rt);
        if repeat > 1 {
            r.name = format!("{} #{k}", r.name);
        }
        println!("{}", line(&r));
        let failed = !matches!(r.outcome, PlanOutcome::Ran { met: true, .. });
        results.push(r);
        if failed && opts.fail_fast {
            eprintln!("--fail-fast: stopping after the first plan that did not pass");
            break;
        }
    }
    if repeat > 1 {
        println!("\n{}", repeat_table(&results));
    }
    println!("\n{:<44}{:<8}{:>9}  run dir", "plan", "result", "time");
    for r in &results {
        let (result, dir) = match &r.outcome {
            PlanOutcome::Ran {
                met: true, run_dir, ..
            } => ("pass", run_dir.as_str()),
            PlanOutcome::Ran {
                met: false,
                run_dir,
                ..
            } => ("FAIL", run_dir.as_str()),
            PlanOutcome::Error { .. } => ("ERROR", "-"),
        };
        println!(
            "{:<44}{:<8}{:>8.1}s  {dir}",
            r.name,
            result,
            r.duration.as_secs_f64()
        );
    }
    let passed = results
        .iter()
        .filter(|r| matches!(r.outcome, PlanOutcome::Ran { met: true, .. }))
        .count();
    println!("{passed} passed, {} failed", results.len() - passed);
    if let Some(path) = &opts.junit {
        let report = crate::report::junit::report("suite", &results);
        let xml = report
            .to_string()
            .map_err(|e| Error::Harness(format!("junit: {e}")))?;
        std::fs::write(path, xml)
            .map_err(|e| Error::Harness(format!("write {}: {e}", path.display())))?;
        eprintln!("JUnit: {}", path.display());
    }
    let code = results
        .iter()
        .map(|r| match &r.outcome {
            PlanOutcome::Ran { met: true, .. } => exit::MET,
            PlanOutcome::Ran { met: false, .. } => exit::NOT_MET,
            PlanOutcome::Error { code, .. } => *code,
        })
        .max()
        .unwrap_or(exit::MET);
    Ok(code)
}

/// Per plan: how many of its runs met their expectations, and the seeds
/// of those that did not.
fn repeat_table(results: &[PlanResult]) -> String {
    let mut by_plan: Vec<(&str, usize, usize, Vec<String>)> = Vec::new();
    for r in results {
        let plan = r.name.rsplit_once(" #").map_or(r.name.as_str(), |(p, _)| p);
        if by_plan.last().is_none_or(|(p, ..)| *p != plan) {
            by_plan.push((plan, 0, 0, Vec::new()));
        }
        let row = by_plan.last_mut().expect("pushed above");
        row.1 += 1;
        match &r.outcome {
            PlanOutcome::Ran { met: true, .. } => row.2 += 1,
            PlanOutcome::Ran { seed, .. } => row.3.push(format!("seed {seed}")),
            PlanOutcome::Error { code, .. } => row.3.push(format!("exit {code}")),
        }
    }
    let mut out = format!("{:<40}{:>6}{:>8}  failed runs\n", "plan", "runs", "met");
    for (plan, runs, met, failed) in by_plan {
        out += &format!("{plan:<40}{runs:>6}{met:>8}  {}\n", failed.join(", "));
    }
    out
}

fn line(r: &PlanResult) -> String {
    match &r.outcome {
        PlanOutcome::Ran {
            met,
            counts,
            run_dir,
            unmet,
            ..
        } => {
            if *met {
                format!("pass  {:<36} {counts}  {run_dir}", r.name)
            } else {
                format!(
                    "FAIL  {:<36} {counts}  not met: {}  {run_dir}",
                    r.name,
                    unmet.join("; ")
                )
            }
        }
        PlanOutcome::Error { code, message } => {
            format!("ERROR {:<36} exit {code}: {message}", r.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_sorted_list_without_overlap() {
        let plans: Vec<PathBuf> = (0..7)
            .map(|i| PathBuf::from(format!("p{i}.yaml")))
            .collect();
        let parts: Vec<Vec<PathBuf>> = (1..=3)
            .map(|k| shard(plans.clone(), Some((k, 3))))
            .collect();
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 2, 2]
        );
        let mut all: Vec<PathBuf> = parts.concat();
        all.sort();
        assert_eq!(all, plans);
        assert_eq!(parse_shard("2/4"), Ok((2, 4)));
        assert!(
            parse_shard("5/4").is_err() && parse_shard("0/1").is_err() && parse_shard("x").is_err()
        );
    }
}
