//! `unlost explore`: property-based search over fault schedules.
//!
//! A template is a plan with an `explore:` section that declares a space
//! instead of one schedule:
//!
//! ```yaml
//! explore:
//!   faults: 1..4                 # how many faults a schedule has
//!   for: 1s..6s                  # how long each is held
//!   choose:                      # what each fault is (as in `random:`)
//!     - { kill: leader }
//!     - { partition: isolate-leader }
//!     - { consumer-crash: 1 }
//! ```
//!
//! Each draw is a concrete plan: the template with `faults:` replaced by
//! that many faults, each one of `choose` at a time in the first 10-70%
//! of the run, held for a time in `for`. Draws come from proptest
//! strategies over a seeded generator, so a seed gives the same sequence
//! of plans. Every draw is run for real. A run whose expectations are not
//! met (a verdict of `unknown` is not a failure) is run again up to
//! `confirm` times: a failure that does not come back is reported as a
//! flake and the search goes on; a confirmed one ends the search, and
//! proptest's shrinking proposes smaller plans
//! (fewer faults, a shorter run, earlier and shorter faults, earlier
//! choices in `choose`), each run up to `confirm` times and kept when one
//! of the runs still fails. The smallest failing plan is `minimal.yaml`:
//! a plain plan anyone can `unlost run`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_yaml::{Mapping, Value};

use crate::checker::Verdict;
use crate::error::Error;
use crate::plan::{value, Plan};
use crate::run::{self, RunOptions};

/// What `unlost explore` was asked for.
pub struct ExploreOptions {
    pub budget: Duration,
    pub runs: u32,
    pub seed: u64,
    pub confirm: u32,
    pub out: PathBuf,
}

/// The search space of a template.
#[derive(Debug, Clone)]
pub struct Space {
    /// The template without `explore` and `faults`.
    base: Mapping,
    name: String,
    choose: Vec<Value>,
    /// Plan settings to vary: a dotted key path and its alternatives (the
    /// first is where shrinking goes).
    vary: Vary,
    count: (usize, usize),
    hold_ms: (u64, u64),
    duration_ms: u64,
    /// The template's workload and cluster, the top of each range
    /// (producers, consumers, partitions, nodes) and the bottoms.
    top: Workload,
    bottom: Workload,
}

/// The sizes a draw may make smaller than the template's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    pub producers: u32,
    pub consumers: u32,
    pub partitions: i32,
    pub nodes: u32,
}

/// `explore.vary`: each dotted plan key with its alternatives.
type Vary = Vec<(Vec<String>, Vec<Value>)>;

/// One drawn schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub duration_ms: u64,
    pub faults: Vec<DraftFault>,
    pub workload: Workload,
    /// The alternative taken for each `vary` key.
    pub vary: Vec<usize>,
}

/// One drawn fault: which entry of `choose`, when (per mille of the run)
/// and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftFault {
    pub choice: usize,
    pub at_permille: u64,
    pub hold_ms: u64,
}

fn usage(file: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{}: {msg}", file.display()))
}

impl Space {
    /// Reads a template: a valid plan with an `explore:` section.
    pub fn load(file: &Path) -> Result<Space, Error> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| usage(file, format!("cannot read the template: {e}")))?;
        // The template must be a valid plan as it stands.
        Plan::parse(file, &text)?;
        let doc: Value = serde_yaml::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|e| usage(file, e))?;
        let mut base = doc
            .as_mapping()
            .cloned()
            .ok_or_else(|| usage(file, "a template is a mapping"))?;
        let explore = base.remove("explore").ok_or_else(|| {
            usage(
                file,
                "not a template: it has no explore: section (see docs/explore.md)",
            )
        })?;
        base.remove("faults");
        let e = explore
            .as_mapping()
            .ok_or_else(|| usage(file, "explore: a mapping with faults, for and choose"))?;
        for k in e.keys() {
            let k = k.as_str().unwrap_or("?");
            if !["faults", "for", "choose", "vary"].contains(&k) {
                return Err(usage(
                    file,
                    format!("explore.{k}: unknown key (known: faults, for, choose, vary)"),
                ));
            }
        }
        let text_of = |k: &str, default: &str| -> String {
            match e.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(_) => "\u{0}".into(),
                None => default.into(),
            }
        };
        let count = value::range(&text_of("faults", "1..3"), |s| {
            s.parse::<usize>()
                .map_err(|_| format!("invalid number of faults {s:?}"))
        })
        .map_err(|m| usage(file, format!("explore.faults: {m}")))?;
        if count.0 < 1 || count.1 > 20 {
            return Err(usage(file, "explore.faults: between 1 and 20 faults"));
        }
        let hold = value::range(&text_of("for", "1s..5s"), value::duration)
            .map_err(|m| usage(file, format!("explore.for: {m}")))?;
        let choose: Vec<Value> = match e.get("choose") {
            Some(Value::Sequence(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(usage(
                    file,
                    "explore.choose: a non-empty list of faults, e.g. [ { kill: leader } ]",
                ))
            }
        };
        let vary = vary(file, e.get("vary"))?;
        let plan = Plan::parse(file, &text)?;
        let top = Workload {
            producers: plan.producers.count,
            consumers: plan.consumers.count,
            partitions: plan.topic.partitions,
            nodes: plan.cluster.nodes,
        };
        // Smaller, down to one of each (consumers only if the template
        // has some; nodes not below the replication factor).
        let bottom = Workload {
            producers: 1,
            consumers: top.consumers.min(1),
            partitions: 1,
            nodes: (plan.topic.replication_factor.max(1) as u32).min(top.nodes),
        };
        let space = Space {
            base,
            name: plan.name.clone(),
            choose,
            vary,
            count,
            hold_ms: (hold.0.as_millis() as u64, hold.1.as_millis() as u64),
            duration_ms: plan.duration.as_millis() as u64,
            top,
            bottom,
        };
        space.check_alternatives(file)?;
        Ok(space)
    }

    /// Checks that every entry of `choose`, and every alternative of each
    /// `vary` key, makes a valid plan on its own.
    fn check_alternatives(&self, file: &Path) -> Result<(), Error> {
        // Every choice must make a valid plan on its own.
        for i in 0..self.choose.len() {
            let one = Draft {
                duration_ms: self.duration_ms,
                faults: vec![DraftFault {
                    choice: i,
                    at_permille: 100,
                    hold_ms: self.hold_ms.0,
                }],
                workload: self.top,
                vary: vec![0; self.vary.len()],
            };
            self.check_draft(file, &one, &format!("explore.choose[{i}]"))?;
        }
        for (k, (path, alts)) in self.vary.iter().enumerate() {
            for i in 0..alts.len() {
                let mut pick = vec![0; self.vary.len()];
                pick[k] = i;
                let one = Draft {
                    duration_ms: self.duration_ms,
                    faults: Vec::new(),
                    workload: self.top,
                    vary: pick,
                };
                let what = format!("explore.vary.{}[{i}]", path.join("."));
                self.check_draft(file, &one, &what)?;
            }
        }
        Ok(())
    }

    /// Whether a draft makes a valid plan; the error names `what`.
    fn check_draft(&self, file: &Path, d: &Draft, what: &str) -> Result<(), Error> {
        let text = self.render(d, "check", 0)?;
        Plan::parse(file, &text).map(|_| ()).map_err(|e| {
            usage(
                file,
                format!("{what} does not make a valid plan: {}", e.message),
            )
        })
    }

    /// The strategy: a shorter run down to a third of the template's, the
    /// number of faults, each fault's choice, time and hold, and a
    /// workload and cluster from one of each up to the template's.
    fn strategy(&self) -> impl Strategy<Value = Draft> {
        let (b, t) = (self.bottom, self.top);
        let workload = (
            b.producers..=t.producers,
            b.consumers..=t.consumers,
            b.partitions..=t.partitions,
            b.nodes..=t.nodes,
        )
            .prop_map(|(producers, consumers, partitions, nodes)| Workload {
                producers,
                consumers,
                partitions,
                nodes,
            });
        let fault = (
            0..self.choose.len(),
            100u64..=700,
            self.hold_ms.0..=self.hold_ms.1,
        )
            .prop_map(|(choice, at_permille, hold_ms)| DraftFault {
                choice,
                at_permille,
                hold_ms,
            });
        (
            (self.duration_ms / 3).max(1000).min(self.duration_ms)..=self.duration_ms,
            proptest::collection::vec(fault, self.count.0..=self.count.1),
            workload,
            self.vary
                .iter()
                .map(|(_, alts)| 0..alts.len())
                .collect::<Vec<_>>(),
        )
            .prop_map(|(duration_ms, faults, workload, vary)| Draft {
                duration_ms,
                faults,
                workload,
                vary,
            })
    }

    /// The concrete plan of a draft, as YAML.
    pub fn render(&self, d: &Draft, label: &str, seed: u64) -> Result<String, Error> {
        let mut plan = self.base.clone();
        plan.insert("name".into(), format!("{}-{label}", self.name).into());
        plan.insert("seed".into(), Value::Number(seed.into()));
        plan.insert("duration".into(), format!("{}ms", d.duration_ms).into());
        let faults: Vec<Value> = d
            .faults
            .iter()
            .map(|f| {
                let mut m = self.choose[f.choice]
                    .as_mapping()
                    .cloned()
                    .unwrap_or_default();
                let at = d.duration_ms * f.at_permille / 1000;
                m.insert("at".into(), format!("{at}ms").into());
                let instant = m.contains_key("consumer-crash") || m.contains_key("restart");
                if !instant {
                    m.insert("for".into(), format!("{}ms", f.hold_ms).into());
                }
                Value::Mapping(m)
            })
            .collect();
        plan.insert("faults".into(), Value::Sequence(faults));
        let w = d.workload;
        set(&mut plan, "producers", "count", w.producers.into());
        if w.consumers > 0 {
            set(&mut plan, "consumers", "count", w.consumers.into());
        }
        set(&mut plan, "topic", "partitions", w.partitions.into());
        set(&mut plan, "cluster", "nodes", w.nodes.into());
        for ((path, alts), &i) in self.vary.iter().zip(&d.vary) {
            set_path(&mut plan, path, alts[i].clone());
        }
        serde_yaml::to_string(&Value::Mapping(plan))
            .map_err(|e| Error::Harness(format!("render a plan: {e}")))
    }
}

/// Sets `section.key` in a plan mapping (making the section if needed).
fn set(plan: &mut Mapping, section: &str, key: &str, v: Value) {
    let entry = plan
        .entry(section.into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(m) = entry {
        m.insert(key.into(), v);
    }
}

/// Sets a dotted key path in a plan mapping (making mappings on the way).
fn set_path(plan: &mut Mapping, path: &[String], v: Value) {
    let Some((last, sections)) = path.split_last() else {
        return;
    };
    let mut m = plan;
    for k in sections {
        let entry = m
            .entry(k.as_str().into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !entry.is_mapping() {
            *entry = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(next) = entry else { return };
        m = next;
    }
    m.insert(last.as_str().into(), v);
}

/// `explore.vary`: `{ "producers.acks": [all, 1], ... }`.
fn vary(file: &Path, v: Option<&Value>) -> Result<Vary, Error> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let m = v.as_mapping().ok_or_else(|| {
        usage(
            file,
            "explore.vary: a mapping of plan keys to alternatives, e.g. { producers.acks: [all, 1] }",
        )
    })?;
    let mut out = Vec::new();
    for (k, alts) in m {
        let key = k.as_str().unwrap_or("?");
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        let known = [
            "cluster",
            "topic",
            "producers",
            "consumers",
            "storage",
            "drain",
        ];
        if path.len() < 2 || path.iter().any(String::is_empty) || !known.contains(&path[0].as_str())
        {
            return Err(usage(
                file,
                format!(
                    "explore.vary.{key}: a dotted plan key under {} (e.g. producers.acks)",
                    known.join(", ")
                ),
            ));
        }
        match alts {
            Value::Sequence(a) if !a.is_empty() => out.push((path, a.clone())),
            _ => {
                return Err(usage(
                    file,
                    format!("explore.vary.{key}: a non-empty list of alternatives"),
                ))
            }
        }
    }
    Ok(out)
}

/// How one run of a plan ended.
#[derive(Debug, Clone)]
struct Tried {
    failed: bool,
    verdict: String,
    run_dir: String,
    seconds: f64,
}

/// Explore's state: where plans and runs go, and the log.
struct Session<'a> {
    space: &'a Space,
    opts: &'a ExploreOptions,
    rt: &'a tokio::runtime::Runtime,
    started: Instant,
    plans: usize,
    runs: u32,
    log: std::fs::File,
}

impl Session<'_> {
    fn over_budget(&self) -> bool {
        self.started.elapsed() >= self.opts.budget
    }

    /// Writes the plan of a draft and returns its path.
    fn write(&mut self, d: &Draft, label: &str, seed: u64) -> Result<PathBuf, Error> {
        self.plans += 1;
        let path = self
            .opts
            .out
            .join("plans")
            .join(format!("{:03}-{label}.yaml", self.plans));
        let text = self.space.render(d, label, seed)?;
        std::fs::write(&path, text)
            .map_err(|e| Error::Harness(format!("write {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Runs a plan file once, for real.
    fn run(&mut self, path: &Path, step: &str) -> Result<Tried, Error> {
        let plan = match Plan::load(path) {
            Ok(p) => p,
            Err(e) => {
                // A smaller workload can make a fault's node ids or the
                // replication invalid: that candidate cannot fail.
                eprintln!(
                    "explore: {} is not a valid plan, skipped: {e}",
                    path.display()
                );
                return Ok(Tried {
                    failed: false,
                    verdict: "not a valid plan".into(),
                    run_dir: String::new(),
                    seconds: 0.0,
                });
            }
        };
        self.runs += 1;
        let opts = RunOptions {
            seed: plan.seed,
            out: Some(self.opts.out.join("runs")),
            duration: None,
        };
        let start = Instant::now();
        let r = self.rt.block_on(run::run(&plan, &opts))?;
        let tried = Tried {
            failed: !r.outcome.expectations_met && r.outcome.verdict != Verdict::Unknown,
            verdict: format!("{:?}", r.outcome.verdict).to_lowercase(),
            run_dir: r.dir.display().to_string(),
            seconds: start.elapsed().as_secs_f64(),
        };
        let faults = plan.faults.len();
        eprintln!(
            "explore: run {} ({step}, {faults} faults, {:.0} s run): {} ({}, {:.1} s) {}",
            self.runs,
            plan.duration.as_secs_f64(),
            if tried.failed {
                "expectations NOT met"
            } else {
                "met"
            },
            tried.verdict,
            tried.seconds,
            tried.run_dir
        );
        let line = serde_json::json!({
            "run": self.runs,
            "step": step,
            "plan": path.display().to_string(),
            "faults": faults,
            "duration_ms": plan.duration.as_millis() as u64,
            "failed": tried.failed,
            "verdict": tried.verdict,
            "run_dir": tried.run_dir,
            "seconds": tried.seconds,
        });
        let _ = writeln!(self.log, "{line}");
        Ok(tried)
    }

    /// Runs a plan up to `confirm` times; Some(run) of the first failure.
    fn fails(&mut self, path: &Path, step: &str) -> Result<Option<Tried>, Error> {
        for _ in 0..self.opts.confirm.max(1) {
            if self.over_budget() {
                return Ok(None);
            }
            let t = self.run(path, step)?;
            if t.failed {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }
}

/// What explore found.
pub struct Found {
    pub summary: String,
    pub failed: bool,
}

/// Searches, confirms and shrinks; writes minimal.yaml, shrink.log and
/// summary.txt into `opts.out`.
pub fn explore(
    space: &Space,
    opts: &ExploreOptions,
    rt: &tokio::runtime::Runtime,
) -> Result<Found, Error> {
    std::fs::create_dir_all(opts.out.join("plans"))
        .map_err(|e| Error::Harness(format!("create {}: {e}", opts.out.display())))?;
    let log_path = opts.out.join("shrink.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| Error::Harness(format!("create {}: {e}", log_path.display())))?;
    let mut s = Session {
        space,
        opts,
        rt,
        started: Instant::now(),
        plans: 0,
        runs: 0,
        log,
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&opts.seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = space.strategy();
    let (first, flakes) = search(&mut s, &strategy, &mut runner)?;
    let flake_lines: String = flakes
        .iter()
        .map(|(p, d)| {
            format!(
                "flake: {} failed in {d}, then passed when run again\n",
                p.display()
            )
        })
        .collect();
    let Some(Failure {
        mut tree,
        path,
        tried: t,
        draw,
        after: to_first,
    }) = first
    else {
        let summary = format!(
            "explore {}: seed {}\nno confirmed failure in {} runs ({:.0} s)\n{flake_lines}",
            space.name,
            opts.seed,
            s.runs,
            s.started.elapsed().as_secs_f64(),
        );
        write_summary(&opts.out, &summary)?;
        return Ok(Found {
            summary,
            failed: !flakes.is_empty(),
        });
    };
    let shrink_start = Instant::now();
    let (best, steps) = shrink(&mut s, &mut tree, (path.clone(), t.clone()))?;
    let (best_draft, best_path, best_run) = best;
    let minimal = opts.out.join("minimal.yaml");
    let text = std::fs::read_to_string(&best_path)
        .map_err(|e| Error::Harness(format!("read {}: {e}", best_path.display())))?;
    let header = format!(
        "# The smallest failing plan unlost explore found for {} (seed {}).\n# It failed in {}\n",
        space.name, opts.seed, best_run.run_dir
    );
    std::fs::write(&minimal, header + &text)
        .map_err(|e| Error::Harness(format!("write {}: {e}", minimal.display())))?;
    let summary = format!(
        "explore {name}: seed {seed}\n\
         runs: {runs} in {total:.0} s; first confirmed failure at draw {draw} after {first:.0} s ({dir})\n\
         {flake_lines}\
         shrink: {steps} steps in {shrink:.0} s\n\
         faults: {before} before, {after} after; duration {d0} ms before, {d1} ms after\n\
         minimal plan: {minimal} (failed in {mdir})\n",
        name = space.name,
        seed = opts.seed,
        runs = s.runs,
        total = s.started.elapsed().as_secs_f64(),
        first = to_first.as_secs_f64(),
        dir = t.run_dir,
        shrink = shrink_start.elapsed().as_secs_f64(),
        before = path_faults(&path)?,
        after = best_draft.faults.len(),
        d0 = t_duration(&path)?,
        d1 = best_draft.duration_ms,
        minimal = minimal.display(),
        mdir = best_run.run_dir,
    );
    write_summary(&opts.out, &summary)?;
    Ok(Found {
        summary,
        failed: true,
    })
}

/// A confirmed failure of the search, with its value tree for shrinking.
struct Failure<T> {
    tree: T,
    path: PathBuf,
    tried: Tried,
    draw: u32,
    after: Duration,
}

type Flakes = Vec<(PathBuf, String)>;

/// What the search ends with: a confirmed failure (if any) and the flakes.
type Searched<T> = (Option<Failure<T>>, Flakes);

/// Draws and runs plans until one fails and fails again (a failure that
/// does not come back is a flake, and the search goes on).
fn search<S: Strategy<Value = Draft>>(
    s: &mut Session,
    strategy: &S,
    runner: &mut TestRunner,
) -> Result<Searched<S::Tree>, Error> {
    let mut flakes = Vec::new();
    for i in 0..s.opts.runs {
        if s.over_budget() {
            break;
        }
        let tree = strategy
            .new_tree(runner)
            .map_err(|e| Error::Harness(format!("draw a plan: {e}")))?;
        let draft = tree.current();
        let seed = s.opts.seed.wrapping_add(u64::from(i));
        let path = s.write(&draft, &format!("draw{}", i + 1), seed)?;
        let t = s.run(&path, "search")?;
        if !t.failed {
            continue;
        }
        if s.fails(&path, "confirm")?.is_some() {
            let after = s.started.elapsed();
            return Ok((
                Some(Failure {
                    tree,
                    path,
                    tried: t,
                    draw: i + 1,
                    after,
                }),
                flakes,
            ));
        }
        eprintln!(
            "explore: {} failed once and not again: a flake",
            path.display()
        );
        flakes.push((path, t.run_dir));
    }
    Ok((None, flakes))
}

/// Shrinks with proptest's value tree: keeps each smaller draft that
/// still fails. Returns the smallest failing draft, its plan and run, and
/// the number of steps.
fn shrink<T: ValueTree<Value = Draft>>(
    s: &mut Session,
    tree: &mut T,
    (path, tried): (PathBuf, Tried),
) -> Result<((Draft, PathBuf, Tried), u64), Error> {
    let mut best = (tree.current(), path, tried);
    let mut steps = 0;
    while !s.over_budget() && tree.simplify() {
        steps += 1;
        let cand = tree.current();
        let seed = s.opts.seed.wrapping_add(1000 + steps);
        let cpath = s.write(&cand, &format!("shrink{steps}"), seed)?;
        match s.fails(&cpath, "shrink")? {
            Some(t) => best = (cand, cpath, t),
            None => {
                if !tree.complicate() {
                    break;
                }
            }
        }
    }
    Ok((best, steps))
}

fn path_faults(p: &Path) -> Result<usize, Error> {
    Ok(Plan::load(p)?.faults.len())
}

fn t_duration(p: &Path) -> Result<u64, Error> {
    Ok(Plan::load(p)?.duration.as_millis() as u64)
}

fn write_summary(out: &Path, summary: &str) -> Result<(), Error> {
    let p = out.join("summary.txt");
    std::fs::write(&p, summary).map_err(|e| Error::Harness(format!("write {}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "name: t\nduration: 30s\ncluster: { broker: builtin, nodes: 5 }\n\
        topic: { partitions: 3, replication_factor: 3 }\n\
        producers: { count: 4, rate: 100/s }\nconsumers: { count: 2, group: g }\nfaults: []\n\
        explore:\n  faults: 1..3\n  for: 1s..4s\n  choose:\n    - { kill: leader }\n    - { pause: random }\n";

    fn space(text: &str) -> Result<Space, Error> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, text).unwrap();
        Space::load(&p)
    }

    fn draws(space: &Space, seed: u8, n: usize) -> Vec<Draft> {
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
        );
        let s = space.strategy();
        (0..n)
            .map(|_| s.new_tree(&mut runner).unwrap().current())
            .collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_plans_and_every_draw_is_a_valid_plan() {
        let sp = space(TEMPLATE).unwrap();
        let a = draws(&sp, 7, 20);
        assert_eq!(a, draws(&sp, 7, 20));
        assert_ne!(a, draws(&sp, 8, 20));
        let dir = tempfile::tempdir().unwrap();
        for (i, d) in a.iter().enumerate() {
            assert!((1..=3).contains(&d.faults.len()));
            assert!((10_000..=30_000).contains(&d.duration_ms));
            let text = sp.render(d, "x", i as u64).unwrap();
            let plan = Plan::parse(&dir.path().join("p.yaml"), &text).unwrap();
            assert_eq!(plan.faults.len(), d.faults.len());
            assert_eq!(plan.producers.count, d.workload.producers);
            assert_eq!(plan.consumers.count, d.workload.consumers);
            assert_eq!(plan.topic.partitions, d.workload.partitions);
            assert_eq!(plan.cluster.nodes, d.workload.nodes);
            assert!((3..=5).contains(&plan.cluster.nodes));
        }
    }

    #[test]
    fn shrinking_proposes_fewer_faults_and_shorter_runs() {
        let sp = space(TEMPLATE).unwrap();
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]),
        );
        // Take a draw with the most faults, then shrink as if every
        // candidate still failed: it ends at the smallest plan.
        let mut tree = loop {
            let t = sp.strategy().new_tree(&mut runner).unwrap();
            if t.current().faults.len() == 3 {
                break t;
            }
        };
        while tree.simplify() {}
        let d = tree.current();
        assert_eq!(d.faults.len(), 1);
        assert_eq!(d.duration_ms, 10_000);
        assert_eq!(
            d.workload,
            Workload {
                producers: 1,
                consumers: 1,
                partitions: 1,
                nodes: 3
            },
            "down to one of each, nodes not below the replication factor"
        );
        assert_eq!(
            d.faults[0],
            DraftFault {
                choice: 0,
                at_permille: 100,
                hold_ms: 1000
            }
        );
    }

    #[test]
    fn settings_vary_among_their_alternatives_and_shrink_to_the_first() {
        let t = format!(
            "{TEMPLATE}  vary:\n    producers.acks: [all, 1]\n    cluster.settings.flush: [always, \"ms:1000\"]\n"
        );
        let sp = space(&t).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for d in draws(&sp, 5, 30) {
            let plan =
                Plan::parse(&dir.path().join("p.yaml"), &sp.render(&d, "x", 1).unwrap()).unwrap();
            let acks = plan.producers.acks.as_config();
            assert_eq!(acks, ["all", "1"][d.vary[0]]);
            assert_eq!(
                plan.cluster.settings["flush"],
                ["always", "ms:1000"][d.vary[1]]
            );
            seen.insert(d.vary.clone());
        }
        assert_eq!(seen.len(), 4, "every combination is drawn: {seen:?}");
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]),
        );
        let mut tree = loop {
            let t = sp.strategy().new_tree(&mut runner).unwrap();
            if t.current().vary == vec![1, 1] {
                break t;
            }
        };
        while tree.simplify() {}
        assert_eq!(tree.current().vary, vec![0, 0]);
        let bad = format!("{TEMPLATE}  vary:\n    producers.acks: [all, 2]\n");
        assert!(space(&bad)
            .unwrap_err()
            .to_string()
            .contains("explore.vary.producers.acks[1] does not make a valid plan"));
        let bad = format!("{TEMPLATE}  vary:\n    acks: [all]\n");
        assert!(space(&bad)
            .unwrap_err()
            .to_string()
            .contains("explore.vary.acks"));
    }

    #[test]
    fn templates_are_checked_with_their_keys_named() {
        let no = TEMPLATE.replace("explore:", "unused:");
        assert!(space(&no).is_err(), "unknown top-level key in a plan");
        let plain = TEMPLATE.split("explore:").next().unwrap().to_string();
        assert!(space(&plain)
            .unwrap_err()
            .to_string()
            .contains("no explore: section"));
        let bad = TEMPLATE.replace("faults: 1..3", "faults: 0..3");
        assert!(space(&bad)
            .unwrap_err()
            .to_string()
            .contains("explore.faults"));
        let bad = TEMPLATE.replace("{ pause: random }", "{ pause: nobody }");
        assert!(space(&bad)
            .unwrap_err()
            .to_string()
            .contains("explore.choose[1]"));
        let bad = TEMPLATE.replace("for: 1s..4s", "for: 4s..1s");
        assert!(space(&bad).unwrap_err().to_string().contains("explore.for"));
        let bad = TEMPLATE.replace("  choose:", "  chose:");
        assert!(space(&bad)
            .unwrap_err()
            .to_string()
            .contains("explore.chose"));
    }
}
