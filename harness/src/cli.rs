//! The command line: `unlost run | check | report | suite | explore | validate | doctor`.
//! Parses arguments, calls the library, returns the exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{exit, Error};
use crate::plan::Plan;
use crate::run::{self, RunOptions};

/// unlost: proves whether a message broker loses acknowledged messages.
#[derive(Debug, Parser)]
#[command(name = "unlost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one plan: start the cluster, inject faults while producers and
    /// consumers run, drain, check, and write the run dir.
    Run {
        plan: PathBuf,
        /// Seed for every random choice (default: the plan's, else random).
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for run dirs (default: runs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the plan's duration, e.g. 20s.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Re-check a stored run's history and rewrite its results.
    Check { run_dir: PathBuf },
    /// Regenerate a run dir's report.html.
    Report { run_dir: PathBuf },
    /// Run plans (files or directories of *.yaml) one after another as a
    /// regression suite.
    Suite {
        #[arg(required = true)]
        plans: Vec<PathBuf>,
        /// Write a JUnit XML file (one test case per plan).
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Directory for run dirs (default: runs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run only shard K of N (deterministic over the sorted plans), e.g. 2/4.
        #[arg(long, value_parser = crate::suite::parse_shard)]
        shard: Option<(usize, usize)>,
        /// Stop after the first plan that does not pass.
        #[arg(long)]
        fail_fast: bool,
        /// Override every plan's duration, e.g. 15s.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Seed for every plan (default: each plan's, else random).
        #[arg(long)]
        seed: Option<u64>,
        /// Run each plan N times (fresh seeds unless --seed); prints how
        /// many runs of each plan met their expectations.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
        repeat: u32,
    },
    /// Search fault schedules from a template (a plan with an explore:
    /// section): run drawn plans until one fails, confirm it, shrink it to
    /// a minimal plan (minimal.yaml in the output dir).
    Explore {
        template: PathBuf,
        /// Stop searching and shrinking after this long, e.g. 30m.
        #[arg(long, value_parser = parse_duration, default_value = "30m")]
        budget: Duration,
        /// Most plans drawn while searching.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100000))]
        runs: u32,
        /// Seed of the draws (default: random; printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Runs of a failing plan to confirm it, and of each shrink
        /// candidate (kept when one of them fails).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
        confirm: u32,
        /// Output dir (default: explore/<time>-<template name>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A durability matrix: for each broker, a fixed grid of runs (stage
    /// scenario x durability setting); writes matrix.md, matrix.html and
    /// matrix.json in the output dir.
    Matrix {
        /// Brokers: builtin, kafka, nats, redis, rabbitmq; kafka and nats take
        /// @<version> (nats@2.12.1).
        #[arg(required = true, value_parser = crate::matrix::Target::parse)]
        brokers: Vec<crate::matrix::Target>,
        /// Stages to cover, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = crate::matrix::Stage::parse, default_value = "produce,store,consume")]
        stages: Vec<crate::matrix::Stage>,
        /// Start no cell that would end after this long, e.g. 1h; the
        /// cells left out say so.
        #[arg(long, value_parser = parse_duration, default_value = "2h")]
        budget: Duration,
        /// How long each cell's workload runs (at least 10s).
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        cell_duration: Duration,
        /// Seed of every cell (default: a fresh one each; recorded).
        #[arg(long)]
        seed: Option<u64>,
        /// Output dir (default: matrix/<time>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check plans without running anything.
    Validate {
        #[arg(required = true)]
        plans: Vec<PathBuf>,
    },
    /// Show which capabilities this machine has and what they enable.
    Doctor,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::plan::value::duration(s)
}

/// Runs a parsed command; returns the exit code.
pub fn main(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run {
            plan,
            seed,
            out,
            duration,
        } => cmd_run(
            plan,
            RunOptions {
                seed,
                out,
                duration,
            },
        ),
        Command::Check { run_dir } => cmd_check(run_dir),
        Command::Report { run_dir } => cmd_report(run_dir),
        Command::Suite {
            plans,
            junit,
            out,
            shard,
            fail_fast,
            duration,
            seed,
            repeat,
        } => cmd_suite(
            plans,
            crate::suite::SuiteOptions {
                junit,
                out,
                shard,
                fail_fast,
                duration,
                seed,
                repeat,
            },
        ),
        Command::Explore {
            template,
            budget,
            runs,
            seed,
            confirm,
            out,
        } => cmd_explore(template, budget, runs, seed, confirm, out),
        Command::Matrix {
            brokers,
            stages,
            budget,
            cell_duration,
            seed,
            out,
        } => cmd_matrix(crate::matrix::MatrixOptions {
            targets: brokers,
            stages,
            budget,
            cell_duration: cell_duration.max(Duration::from_secs(10)),
            seed,
            out: out.unwrap_or_else(|| PathBuf::from("matrix").join(run::stamp())),
        }),
        Command::Validate { plans } => cmd_validate(plans),
        Command::Doctor => Ok(crate::doctor::report()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("unlost: {e}");
            e.exit_code()
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Harness(format!("tokio runtime: {e}")))
}

fn cmd_run(path: PathBuf, opts: RunOptions) -> Result<i32, Error> {
    let plan = Plan::load(&path)?;
    // The sandbox has no uplink: fetch the broker's release first.
    crate::driver::fetch_release(&plan.cluster)?;
    // Before any thread exists: the namespaces are per thread until then.
    crate::sandbox::enter()?;
    let result = runtime()?.block_on(run::run(&plan, &opts))?;
    print!("{}", result.summary);
    Ok(if result.outcome.expectations_met {
        exit::MET
    } else {
        exit::NOT_MET
    })
}

/// The plan stored in a run dir (a run dir is what has a plan.yaml).
fn run_dir_plan(dir: &std::path::Path) -> Result<Plan, Error> {
    let plan_file = dir.join("plan.yaml");
    if !plan_file.is_file() {
        return Err(Error::Usage(format!(
            "{} is not a run dir (no plan.yaml)",
            dir.display()
        )));
    }
    Ok(Plan::load(&plan_file)?)
}

fn cmd_check(dir: PathBuf) -> Result<i32, Error> {
    let plan = run_dir_plan(&dir)?;
    let start = std::time::Instant::now();
    let (outcome, facts) = run::check_dir(&dir, &plan)?;
    // The run's phase timings stay; only the check is timed again.
    let timings = crate::report::Timings {
        check_s: start.elapsed().as_secs_f64(),
        ..crate::report::stored_timings(&dir)
    };
    let summary = crate::report::write_all(&dir, &plan, facts.seed, &outcome, &facts, &timings)?;
    print!("{summary}");
    Ok(if outcome.expectations_met {
        exit::MET
    } else {
        exit::NOT_MET
    })
}

fn cmd_suite(args: Vec<PathBuf>, opts: crate::suite::SuiteOptions) -> Result<i32, Error> {
    let plans = crate::suite::shard(crate::suite::collect(&args)?, opts.shard);
    if plans.is_empty() {
        println!("0 passed, 0 failed (this shard has no plans)");
        return Ok(exit::MET);
    }
    // The sandbox has no uplink: fetch the brokers' releases first (a plan
    // that does not load is reported when its turn comes).
    for p in &plans {
        if let Ok(plan) = Plan::load(p) {
            crate::driver::fetch_release(&plan.cluster)?;
        }
    }
    crate::sandbox::enter()?;
    crate::suite::run_suite(&plans, &opts, &runtime()?)
}

fn cmd_explore(
    template: PathBuf,
    budget: Duration,
    runs: u32,
    seed: Option<u64>,
    confirm: u32,
    out: Option<PathBuf>,
) -> Result<i32, Error> {
    let space = crate::explore::Space::load(&template)?;
    let seed = seed.unwrap_or_else(run::fresh_seed);
    let out = out.unwrap_or_else(|| {
        let stem = template
            .file_stem()
            .map_or("template".into(), |s| s.to_string_lossy().to_string());
        PathBuf::from("explore").join(format!("{}-{stem}", run::stamp()))
    });
    eprintln!(
        "unlost: explore {} seed {seed}, output in {}",
        template.display(),
        out.display()
    );
    crate::driver::fetch_release(&Plan::load(&template)?.cluster)?;
    crate::sandbox::enter()?;
    let opts = crate::explore::ExploreOptions {
        budget,
        runs,
        seed,
        confirm,
        out,
    };
    let found = crate::explore::explore(&space, &opts, &runtime()?)?;
    print!("{}", found.summary);
    Ok(if found.failed {
        exit::NOT_MET
    } else {
        exit::MET
    })
}

fn cmd_matrix(opts: crate::matrix::MatrixOptions) -> Result<i32, Error> {
    eprintln!(
        "unlost: matrix of {} ({}), output in {}",
        opts.targets
            .iter()
            .map(|t| t.label())
            .collect::<Vec<_>>()
            .join(", "),
        opts.stages
            .iter()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(","),
        opts.out.display()
    );
    // The sandbox has no uplink: every release first.
    for t in &opts.targets {
        let cells = crate::matrix::grid(t, &opts.stages, opts.cell_duration);
        if let Some(Ok(text)) = cells.iter().map(|c| c.plan.clone()).find(Result::is_ok) {
            let plan = Plan::parse(std::path::Path::new("matrix-cell.yaml"), &text)?;
            crate::driver::fetch_release(&plan.cluster)?;
        }
    }
    crate::sandbox::enter()?;
    let m = crate::matrix::run_matrix(&opts, &runtime()?)?;
    println!("{}", opts.out.join("matrix.md").display());
    println!("{}", opts.out.join("matrix.html").display());
    Ok(if m.incomplete {
        exit::CAPABILITY
    } else {
        exit::MET
    })
}

fn cmd_report(dir: PathBuf) -> Result<i32, Error> {
    let plan = run_dir_plan(&dir)?;
    let (outcome, facts) = run::check_dir(&dir, &plan)?;
    let nodes: Vec<u32> = (1..=plan.cluster.nodes).collect();
    crate::report::html::write(&dir, &plan.name, facts.seed, &outcome, &facts, &nodes)
        .map_err(|e| Error::Harness(format!("write report.html: {e}")))?;
    println!("{}", dir.join("report.html").display());
    Ok(exit::MET)
}

fn cmd_validate(plans: Vec<PathBuf>) -> Result<i32, Error> {
    let mut bad = 0;
    for p in &plans {
        match Plan::load(p) {
            Ok(plan) => println!(
                "ok {} ({}, {} nodes, {} faults)",
                p.display(),
                plan.name,
                plan.cluster.nodes,
                plan.faults.len()
            ),
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        return Err(Error::Usage(format!(
            "{bad} of {} plans are invalid",
            plans.len()
        )));
    }
    Ok(exit::MET)
}
