//! `unlost matrix`: a durability matrix of real brokers.
//!
//! For each broker asked for, a fixed grid of cells: a stage's scenario
//! (rows) under one of the broker's durability settings (columns). Every
//! cell is a plan built here, written to `plans/`, validated like any
//! plan and run for real; the plans accept every anomaly, so a cell
//! reports what happened rather than passing or failing. Stages and their
//! grids:
//!
//! - store: {the leader killed repeatedly, a coordinated power loss of
//!   every node, the leader isolated from the other nodes} x {the broker's
//!   defaults, its safest fsync setting, its replication acknowledgement};
//! - produce: retries over leader kills x {plain retries, idempotence};
//! - consume: member crashes x {commit after processing, commit before
//!   processing, auto-commit}.
//!
//! A cell the broker has no setting for is "n/a" with the reason; a cell
//! that cannot run on this machine, or that the budget leaves out, says
//! why. Output: `matrix.json`, `matrix.md`, `matrix.html` (each cell links
//! to its run's report.html).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Error;
use crate::plan::Plan;
use crate::run::{self, RunOptions};
use crate::vocabulary::Anomaly;

/// A broker to put in the matrix: a plan's broker name and maybe a version
/// (`nats@2.12.1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub broker: String,
    pub version: Option<String>,
}

impl Target {
    /// `builtin`, `kafka`, `nats`, `redis`, `rabbitmq`, optionally `@<version>`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let (broker, version) = match s.split_once('@') {
            Some((b, v)) => (b, Some(v.to_string())),
            None => (s, None),
        };
        if !matches!(broker, "builtin" | "kafka" | "nats" | "redis" | "rabbitmq") {
            return Err(format!(
                "unknown broker {broker:?}: use builtin, kafka, nats, redis or rabbitmq (with @<version> for kafka and nats)"
            ));
        }
        if version.is_some() && !matches!(broker, "kafka" | "nats") {
            return Err(format!(
                "{s}: only kafka and nats take a version (the others run the installed release)"
            ));
        }
        Ok(Target {
            broker: broker.to_string(),
            version,
        })
    }

    /// The target as written (`nats@2.12.1`).
    pub fn label(&self) -> String {
        match &self.version {
            Some(v) => format!("{}@{v}", self.broker),
            None => self.broker.clone(),
        }
    }
}

/// The three places messages are lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Produce,
    Store,
    Consume,
}

impl Stage {
    pub fn parse(s: &str) -> Result<Stage, String> {
        match s {
            "produce" => Ok(Stage::Produce),
            "store" => Ok(Stage::Store),
            "consume" => Ok(Stage::Consume),
            other => Err(format!(
                "unknown stage {other:?}: use produce, store or consume"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Produce => "produce",
            Stage::Store => "store",
            Stage::Consume => "consume",
        }
    }
}

/// What `unlost matrix` was asked for.
pub struct MatrixOptions {
    pub targets: Vec<Target>,
    pub stages: Vec<Stage>,
    pub budget: Duration,
    /// How long each cell's workload runs.
    pub cell_duration: Duration,
    pub seed: Option<u64>,
    pub out: PathBuf,
}

/// One cell before it runs: its plan, or why the broker has no such cell.
#[derive(Debug, Clone)]
pub struct CellSpec {
    pub stage: Stage,
    pub scenario: &'static str,
    pub setting: &'static str,
    /// The plan's YAML, or why the cell does not apply to this broker.
    pub plan: Result<String, String>,
}

/// How a cell ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum CellStatus {
    /// It ran: the verdict and the anomaly counts.
    Ran {
        verdict: String,
        counts: BTreeMap<String, u64>,
        acked: u64,
        run_dir: String,
    },
    /// The broker has no such setting.
    NotApplicable { why: String },
    /// It could not run here (a missing program, an error) or the budget
    /// left it out.
    NotRun { why: String },
}

/// One cell of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub broker: String,
    pub stage: Stage,
    pub scenario: &'static str,
    pub setting: &'static str,
    #[serde(flatten)]
    pub status: CellStatus,
    pub seconds: f64,
}

impl Cell {
    /// The counts this cell's stage is about: acknowledged messages lost
    /// or stored twice (produce, store), or processed messages skipped or
    /// processed twice (consume; a redelivery elsewhere is only the
    /// members' at-least-once).
    fn shown(&self) -> &'static [&'static str] {
        match self.stage {
            Stage::Consume => &[
                "lost",
                "skipped",
                "lost-commit",
                "unreadable",
                "duplicated",
                "redelivered",
            ],
            _ => &["lost", "lost-commit", "unreadable", "duplicated"],
        }
    }

    /// The cell's colour class: messages lost, duplicated, none, or
    /// nothing to say.
    fn class(&self) -> &'static str {
        match &self.status {
            CellStatus::Ran {
                verdict, counts, ..
            } => {
                let n = |a: &str| counts.get(a).copied().unwrap_or(0);
                let shown = self.shown();
                let any = |names: &[&str]| names.iter().any(|a| shown.contains(a) && n(a) > 0);
                if any(&["lost", "skipped", "lost-commit", "unreadable"]) {
                    "lost"
                } else if verdict == "unknown" {
                    "unknown"
                } else if any(&["duplicated", "redelivered"]) {
                    "duplicated"
                } else {
                    "none"
                }
            }
            CellStatus::NotApplicable { .. } => "na",
            CellStatus::NotRun { .. } => "notrun",
        }
    }

    /// The cell's text: the counts that matter, or why it has none.
    fn text(&self) -> String {
        match &self.status {
            CellStatus::Ran {
                verdict,
                counts,
                acked,
                ..
            } => {
                let mut parts: Vec<String> = self
                    .shown()
                    .iter()
                    .filter_map(|a| {
                        let n = counts.get(*a).copied().unwrap_or(0);
                        (n > 0).then(|| format!("{a} {n}"))
                    })
                    .collect();
                if parts.is_empty() {
                    parts.push("nothing lost or duplicated".into());
                }
                if verdict == "unknown" {
                    parts.push("verdict unknown".into());
                }
                format!("{} (of {acked} acked)", parts.join(", "))
            }
            CellStatus::NotApplicable { why } => format!("n/a: {why}"),
            CellStatus::NotRun { why } => format!("not run: {why}"),
        }
    }

    fn run_dir(&self) -> Option<&str> {
        match &self.status {
            CellStatus::Ran { run_dir, .. } => Some(run_dir),
            _ => None,
        }
    }
}

/// A broker's settings for one column: cluster settings (YAML flow
/// mapping entries), producer acks, topic min ISR.
struct Setting {
    cluster: &'static str,
    acks: &'static str,
    min_isr: u32,
}

/// The store stage's column `column` for a broker (Err: why it does not apply).
fn store_setting(broker: &str, column: &str) -> Result<Setting, String> {
    let s = |cluster, acks, min_isr| {
        Ok(Setting {
            cluster,
            acks,
            min_isr,
        })
    };
    match (broker, column) {
        // Kafka clients acknowledge with acks=all by default; topics have
        // min.insync.replicas 1.
        ("builtin" | "kafka", "default") => s("", "all", 1),
        ("builtin", "fsync") => s("flush: always", "all", 1),
        ("kafka", "fsync") => s("flush_messages: 1", "all", 1),
        ("builtin" | "kafka", "replicated") => s("", "all", 2),
        ("nats", "default") => s("", "all", 1),
        ("nats", "fsync") => s("sync_interval: always", "all", 1),
        ("nats", "replicated") => Err(
            "JetStream acknowledges after a quorum of the stream's replicas in every configuration (the default column)".into(),
        ),
        // Redis clients do not WAIT unless told to.
        ("redis", "default") => s("", "1", 1),
        ("redis", "fsync") => s("appendonly: \"yes\", appendfsync: always", "1", 1),
        ("redis", "replicated") => s("", "all", 1),
        // Publisher confirms: clients do not ask for them by default, but
        // without them nothing is acknowledged. A classic queue is
        // RabbitMQ's default.
        ("rabbitmq", "default") => s("queue_type: classic", "1", 1),
        ("rabbitmq", "fsync") => Err(
            "RabbitMQ confirms a persistent message on a durable queue only once it is on disk, in every configuration (the default column)".into(),
        ),
        ("rabbitmq", "replicated") => s("queue_type: quorum", "all", 1),
        _ => Err(format!("no {column} setting for {broker}")),
    }
}

/// The store stage's rows for a run of `secs` seconds: name, faults,
/// whether the run needs the lazy filesystem.
fn store_scenarios(secs: u64) -> [(&'static str, String, bool); 3] {
    [
        (
            "leader-kill",
            "  - { every: 8s, start: 6s, for: 3s, kill: leader }\n".into(),
            false,
        ),
        (
            "power-loss-all",
            format!(
                "  - {{ at: {}s, for: 4s, power-loss: all }}\n",
                secs * 2 / 5
            ),
            true,
        ),
        (
            "isolated-leader",
            format!(
                "  - {{ at: {}s, for: {}s, partition: isolate-leader }}\n",
                secs / 4,
                secs * 2 / 5
            ),
            false,
        ),
    ]
}

/// What one cell's plan is made of.
struct CellPlan<'a> {
    stage: Stage,
    scenario: &'static str,
    setting: &'static str,
    /// Cluster settings as YAML flow-mapping entries.
    cluster: &'a str,
    acks: &'a str,
    min_isr: u32,
    /// More producer entries (`, idempotent: true`).
    producer: &'a str,
    commit: &'a str,
    lazyfs: bool,
    /// The `faults:` list's lines.
    faults: &'a str,
}

impl CellPlan<'_> {
    /// The plan's YAML for `target`, running `secs` seconds; it accepts
    /// every anomaly (a cell reports, it does not pass or fail).
    fn yaml(&self, target: &Target, secs: u64) -> String {
        let b = target.broker.as_str();
        let version = target
            .version
            .as_ref()
            .map(|v| format!(", version: \"{v}\""))
            .unwrap_or_default();
        let min_isr = self.min_isr;
        let topic = match b {
            // One sequence; Redis replicates to every node.
            "nats" => format!(
                "topic: {{ partitions: 1, replication_factor: 3, min_insync_replicas: {min_isr} }}\n"
            ),
            "redis" | "rabbitmq" => "topic: { partitions: 1 }\n".to_string(),
            _ => format!(
                "topic: {{ partitions: 3, replication_factor: 3, min_insync_replicas: {min_isr} }}\n"
            ),
        };
        let expect = Anomaly::ALL
            .iter()
            .map(|a| format!("{}: any", a.name()))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "# unlost matrix cell: {b} {stage} / {scenario} / {setting}\n\
             name: matrix-{label}-{stage}-{scenario}-{setting}\n\
             duration: {secs}s\n\
             cluster: {{ broker: {b}, nodes: 3{version}, settings: {{ {cluster} }} }}\n\
             {topic}\
             producers: {{ count: 2, rate: 300/s, acks: {acks}, retries: 2, timeout: 2s{producer} }}\n\
             consumers: {{ count: 2, group: g, commit: {commit} }}\n\
             storage: {{ lazyfs: {lazyfs} }}\n\
             faults:\n{faults}\
             expect: {{ {expect} }}\n",
            stage = self.stage.name(),
            scenario = self.scenario,
            setting = self.setting,
            label = target.label().replace('@', "-"),
            cluster = self.cluster,
            acks = self.acks,
            producer = self.producer,
            commit = self.commit,
            lazyfs = self.lazyfs,
            faults = self.faults,
        )
    }
}

/// Every cell of `target`'s grid for `stages`, in order.
pub fn grid(target: &Target, stages: &[Stage], duration: Duration) -> Vec<CellSpec> {
    let b = target.broker.as_str();
    let secs = duration.as_secs().max(10);
    // Redis clients do not WAIT unless told to; Kafka's default is acks=all.
    let acks = if b == "redis" || b == "rabbitmq" {
        "1"
    } else {
        "all"
    };
    let mut cells = Vec::new();
    let mut push = |p: Result<CellPlan, String>, stage, scenario, setting| {
        cells.push(CellSpec {
            stage,
            scenario,
            setting,
            plan: p.map(|p| p.yaml(target, secs)),
        })
    };
    for &stage in stages {
        match stage {
            Stage::Store => {
                for (scenario, faults, lazyfs) in store_scenarios(secs) {
                    for setting in ["default", "fsync", "replicated"] {
                        let p = store_setting(b, setting).map(|s| CellPlan {
                            stage,
                            scenario,
                            setting,
                            cluster: s.cluster,
                            acks: s.acks,
                            min_isr: s.min_isr,
                            producer: "",
                            commit: "after-process",
                            lazyfs,
                            faults: &faults,
                        });
                        push(p, stage, scenario, setting);
                    }
                }
            }
            Stage::Produce => {
                let scenario = "retries-over-leader-kills";
                for (setting, producer) in [("retries", ""), ("idempotent", ", idempotent: true")] {
                    let p = if setting == "idempotent" && b == "redis" {
                        Err("Redis streams do not deduplicate".into())
                    } else if setting == "idempotent" && b == "rabbitmq" {
                        Err("RabbitMQ queues do not deduplicate".into())
                    } else {
                        Ok(CellPlan {
                            stage,
                            scenario,
                            setting,
                            cluster: "",
                            acks: "all",
                            min_isr: 1,
                            producer,
                            commit: "after-process",
                            lazyfs: false,
                            // A random node, not the leader: a second after a
                            // leader kill, a NATS stream may have no leader
                            // yet, and a fault that never acts makes the
                            // run's verdict unknown.
                            faults: "  - { every: 8s, start: 5s, for: 3s, kill: leader }\n  - { every: 8s, start: 9s, for: 2s, pause: random }\n",
                        })
                    };
                    push(p, stage, scenario, setting);
                }
            }
            Stage::Consume => {
                let scenario = "member-crashes";
                for (setting, commit) in [
                    ("commit-after-process", "after-process"),
                    ("commit-before-process", "before-process"),
                    ("auto-commit", "auto"),
                ] {
                    let p = Ok(CellPlan {
                        stage,
                        scenario,
                        setting,
                        cluster: "",
                        acks,
                        min_isr: 1,
                        producer: "",
                        commit,
                        lazyfs: false,
                        faults: "  - { every: 4s, start: 3s, consumer-crash: 1 }\n",
                    });
                    push(p, stage, scenario, setting);
                }
            }
        }
    }
    cells
}

/// What a matrix run produced.
pub struct Matrix {
    pub cells: Vec<Cell>,
    /// Some cell could not run on this machine (exit 3).
    pub incomplete: bool,
}

/// Runs every cell of every target (fetching releases and entering the
/// sandbox is the caller's), within the budget.
pub fn run_matrix(opts: &MatrixOptions, rt: &tokio::runtime::Runtime) -> Result<Matrix, Error> {
    let plans_dir = opts.out.join("plans");
    std::fs::create_dir_all(&plans_dir)
        .map_err(|e| Error::Harness(format!("create {}: {e}", plans_dir.display())))?;
    let specs: Vec<(Target, CellSpec)> = opts
        .targets
        .iter()
        .flat_map(|t| {
            grid(t, &opts.stages, opts.cell_duration)
                .into_iter()
                .map(move |c| (t.clone(), c))
        })
        .collect();
    let total = specs.len();
    let start = Instant::now();
    let mut cells = Vec::new();
    let mut incomplete = false;
    for (i, (target, spec)) in specs.into_iter().enumerate() {
        let began = Instant::now();
        let status = match &spec.plan {
            Err(why) => CellStatus::NotApplicable { why: why.clone() },
            // A cell takes its run plus about half a minute of setup,
            // heal, drain and check.
            Ok(_)
                if start.elapsed() + opts.cell_duration + Duration::from_secs(30) > opts.budget =>
            {
                CellStatus::NotRun {
                    why: format!("the budget ({:?}) was spent", opts.budget),
                }
            }
            Ok(text) => run_cell(&plans_dir, &opts.out, text, opts.seed, rt, &mut incomplete)?,
        };
        let cell = Cell {
            broker: target.label(),
            stage: spec.stage,
            scenario: spec.scenario,
            setting: spec.setting,
            status,
            seconds: began.elapsed().as_secs_f64(),
        };
        eprintln!(
            "matrix: [{}/{total}] {} {} / {} / {}: {} ({:.0} s){}",
            i + 1,
            cell.broker,
            cell.stage.name(),
            cell.scenario,
            cell.setting,
            cell.text(),
            cell.seconds,
            cell.run_dir().map(|d| format!("  {d}")).unwrap_or_default()
        );
        cells.push(cell);
        // Written after every cell: an interrupted matrix keeps its cells.
        write_outputs(&opts.out, &cells, start.elapsed())?;
    }
    Ok(Matrix { cells, incomplete })
}

/// Writes the cell's plan, validates it and runs it.
fn run_cell(
    plans_dir: &Path,
    out: &Path,
    text: &str,
    seed: Option<u64>,
    rt: &tokio::runtime::Runtime,
    incomplete: &mut bool,
) -> Result<CellStatus, Error> {
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .unwrap_or("cell")
        .to_string();
    let path = plans_dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text)
        .map_err(|e| Error::Harness(format!("write {}: {e}", path.display())))?;
    // A plan this module builds must be valid: an error here is a bug.
    let plan = Plan::parse(&path, text)
        .map_err(|e| Error::Harness(format!("matrix built an invalid plan: {e}")))?;
    let opts = RunOptions {
        seed,
        out: Some(out.join("runs")),
        duration: None,
    };
    Ok(match rt.block_on(run::run(&plan, &opts)) {
        Ok(r) => CellStatus::Ran {
            verdict: format!("{:?}", r.outcome.verdict).to_lowercase(),
            counts: r
                .outcome
                .counts
                .iter()
                .map(|(a, n)| (a.name().to_string(), *n))
                .collect(),
            acked: r.outcome.stats.acked,
            run_dir: r.dir.display().to_string(),
        },
        Err(e) => {
            if e.exit_code() == crate::exit::CAPABILITY {
                *incomplete = true;
            }
            CellStatus::NotRun { why: e.to_string() }
        }
    })
}

/// matrix.json, matrix.md and matrix.html in `out`.
fn write_outputs(out: &Path, cells: &[Cell], took: Duration) -> Result<(), Error> {
    let write = |name: &str, text: String| {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| Error::Harness(format!("write {}: {e}", p.display())))
    };
    let json = serde_json::json!({
        "took_s": took.as_secs_f64(),
        "cells": cells,
    });
    write(
        "matrix.json",
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    write("matrix.md", markdown(out, cells, took))?;
    write("matrix.html", html(out, cells, took))
}

/// The cells of one (broker, stage): rows (scenarios) x columns
/// (settings), in grid order.
struct Table<'a> {
    broker: String,
    stage: Stage,
    rows: Vec<&'static str>,
    cols: Vec<&'static str>,
    cells: Vec<&'a Cell>,
}

impl Table<'_> {
    fn at(&self, row: &str, col: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|x| x.scenario == row && x.setting == col)
            .copied()
    }
}

/// Cells grouped as tables, one per (broker, stage).
fn tables(cells: &[Cell]) -> Vec<Table<'_>> {
    let mut out: Vec<Table> = Vec::new();
    for c in cells {
        let i = match out
            .iter()
            .position(|t| t.broker == c.broker && t.stage == c.stage)
        {
            Some(i) => i,
            None => {
                out.push(Table {
                    broker: c.broker.clone(),
                    stage: c.stage,
                    rows: Vec::new(),
                    cols: Vec::new(),
                    cells: Vec::new(),
                });
                out.len() - 1
            }
        };
        let t = &mut out[i];
        if !t.rows.contains(&c.scenario) {
            t.rows.push(c.scenario);
        }
        if !t.cols.contains(&c.setting) {
            t.cols.push(c.setting);
        }
        t.cells.push(c);
    }
    out
}

/// A run dir as a path relative to the matrix's output dir, for links.
fn link(out: &Path, run_dir: &str) -> String {
    Path::new(run_dir)
        .strip_prefix(out)
        .map(|p| p.join("report.html").display().to_string())
        .unwrap_or_else(|_| format!("{run_dir}/report.html"))
}

fn markdown(out: &Path, cells: &[Cell], took: Duration) -> String {
    let mut md = format!(
        "# Durability matrix\n\n{} cells in {:.0} min. Each cell is one run: its counts are of acknowledged messages (lost, duplicated) and of processed messages (skipped, redelivered).\n",
        cells.len(),
        took.as_secs_f64() / 60.0
    );
    for t in tables(cells) {
        let _ = write!(md, "\n## {}: {}\n\n| scenario |", t.broker, t.stage.name());
        for c in &t.cols {
            let _ = write!(md, " {c} |");
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(t.cols.len()));
        md.push('\n');
        for r in &t.rows {
            let _ = write!(md, "| {r} |");
            for c in &t.cols {
                let cell = t.at(r, c);
                let text = cell.map_or("-".into(), |x| match x.run_dir() {
                    Some(d) => format!("[{}]({})", x.text(), link(out, d)),
                    None => x.text(),
                });
                let _ = write!(md, " {text} |");
            }
            md.push('\n');
        }
    }
    md
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(out: &Path, cells: &[Cell], took: Duration) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>unlost durability matrix</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}\
         td,th{border:1px solid #999;padding:.4em .6em;vertical-align:top;max-width:22em}\
         .lost{background:#f4b6b6}.duplicated{background:#f6dd9c}.none{background:#bfe5bf}\
         .unknown{background:#fff}.na,.notrun{background:#e4e4e4;color:#555}\
         </style></head><body><h1>Durability matrix</h1>",
    );
    let _ = write!(
        h,
        "<p>{} cells in {:.0} min. Red: acknowledged (or committed) messages lost; amber: stored or processed twice; green: neither; grey: not applicable or not run.</p>",
        cells.len(),
        took.as_secs_f64() / 60.0
    );
    for t in tables(cells) {
        let _ = write!(
            h,
            "<h2>{}: {}</h2><table><tr><th>scenario</th>",
            escape(&t.broker),
            t.stage.name()
        );
        for c in &t.cols {
            let _ = write!(h, "<th>{}</th>", escape(c));
        }
        h.push_str("</tr>");
        for r in &t.rows {
            let _ = write!(h, "<tr><th>{}</th>", escape(r));
            for c in &t.cols {
                match t.at(r, c) {
                    Some(x) => {
                        let text = escape(&x.text());
                        let body = match x.run_dir() {
                            Some(d) => format!("<a href=\"{}\">{text}</a>", escape(&link(out, d))),
                            None => text,
                        };
                        let _ = write!(h, "<td class=\"{}\">{body}</td>", x.class());
                    }
                    None => h.push_str("<td>-</td>"),
                }
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grid_plan_is_valid_and_names_its_cell() {
        for t in ["builtin", "kafka@4.1.1", "nats@2.12.1", "redis", "rabbitmq"] {
            let target = Target::parse(t).unwrap();
            let cells = grid(
                &target,
                &[Stage::Produce, Stage::Store, Stage::Consume],
                Duration::from_secs(30),
            );
            assert_eq!(cells.len(), 14, "{t}");
            for c in &cells {
                if let Ok(text) = &c.plan {
                    let plan = Plan::parse(Path::new("cell.yaml"), text).unwrap_or_else(|e| {
                        panic!("{t} {}/{}: {e}\n{text}", c.scenario, c.setting)
                    });
                    assert!(plan.name.contains(c.scenario) && plan.name.contains(c.setting));
                    assert!(!plan.faults.is_empty());
                    assert_eq!(plan.lazyfs, c.scenario == "power-loss-all", "{}", plan.name);
                }
            }
        }
        let nats = grid(
            &Target::parse("nats").unwrap(),
            &[Stage::Store],
            Duration::from_secs(30),
        );
        assert!(nats
            .iter()
            .any(|c| c.setting == "replicated" && c.plan.is_err()));
        let redis = grid(
            &Target::parse("redis").unwrap(),
            &[Stage::Produce],
            Duration::from_secs(30),
        );
        assert!(redis
            .iter()
            .any(|c| c.setting == "idempotent" && c.plan.is_err()));
    }

    #[test]
    fn targets_and_stages_refuse_what_they_do_not_know() {
        assert!(Target::parse("activemq")
            .unwrap_err()
            .contains("unknown broker"));
        assert!(Target::parse("redis@7.0")
            .unwrap_err()
            .contains("only kafka and nats"));
        assert_eq!(Target::parse("nats@2.12.1").unwrap().label(), "nats@2.12.1");
        assert!(Stage::parse("storage")
            .unwrap_err()
            .contains("unknown stage"));
    }

    #[test]
    fn cells_are_coloured_by_what_was_lost_or_duplicated() {
        let ran = |counts: &[(&str, u64)], verdict: &str| Cell {
            broker: "x".into(),
            stage: if counts.iter().any(|(a, _)| *a == "skipped") {
                Stage::Consume
            } else {
                Stage::Store
            },
            scenario: "s",
            setting: "d",
            status: CellStatus::Ran {
                verdict: verdict.into(),
                counts: counts.iter().map(|(a, n)| (a.to_string(), *n)).collect(),
                acked: 10,
                run_dir: "/tmp/out/runs/r1".into(),
            },
            seconds: 1.0,
        };
        assert_eq!(
            ran(&[("lost", 3), ("duplicated", 2)], "invalid").class(),
            "lost"
        );
        assert_eq!(ran(&[("skipped", 1)], "invalid").class(), "lost");
        assert_eq!(ran(&[("duplicated", 2)], "valid").class(), "duplicated");
        assert_eq!(ran(&[("lost", 0)], "valid").class(), "none");
        // A store cell is about what was stored: redeliveries are the
        // members' at-least-once, not shown.
        let store = ran(&[("redelivered", 5)], "valid");
        assert_eq!(store.class(), "none");
        assert!(store.text().starts_with("nothing lost"), "{}", store.text());
        assert_eq!(ran(&[], "unknown").class(), "unknown");
        let cells = vec![ran(&[("lost", 3)], "invalid")];
        let md = markdown(Path::new("/tmp/out"), &cells, Duration::from_secs(60));
        assert!(
            md.contains("[lost 3 (of 10 acked)](runs/r1/report.html)"),
            "{md}"
        );
        let page = html(Path::new("/tmp/out"), &cells, Duration::from_secs(60));
        assert!(page.contains("class=\"lost\""), "{page}");
    }
}
