//! Reports: Outcome + run facts -> `results.json`, `lost.jsonl` and the
//! summary table (`summary.txt`, also printed). Reports only read results.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

pub mod html;
pub mod junit;
pub mod status;

use crate::checker::{facts::FaultWindow, Anomaly, Outcome, Verdict};

/// Durations of the run's phases, in seconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Timings {
    pub setup_s: f64,
    pub fault_phase_s: f64,
    pub heal_s: f64,
    pub drain_s: f64,
    pub check_s: f64,
    pub total_s: f64,
}

#[derive(Serialize)]
struct FaultRecord<'a> {
    id: u32,
    kind: &'a str,
    targets: &'a [u32],
    detail: &'a str,
    start_s: f64,
    end_s: Option<f64>,
}

#[derive(Serialize)]
struct Results<'a> {
    plan: &'a str,
    seed: u64,
    valid: Option<bool>,
    verdict: Verdict,
    /// Why the run cannot be judged although the drain finished.
    unknown_because: &'a [String],
    expectations_met: bool,
    expectations: &'a [crate::checker::Expectation],
    counts: BTreeMap<String, u64>,
    /// Anomalies this broker's messages cannot show (a queue has no
    /// positions): not checked, so not counted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_applicable: Vec<&'static str>,
    anomalies: &'a BTreeMap<Anomaly, Vec<String>>,
    lost: &'a [crate::checker::lost::LostMessage],
    duplicates_by_cause: &'a BTreeMap<String, u64>,
    drain: Drain<'a>,
    faults: Vec<FaultRecord<'a>>,
    timings: &'a Timings,
}

#[derive(Serialize)]
struct Drain<'a> {
    complete: bool,
    error: Option<&'a str>,
    /// Ranges reported but not served (see the `unreadable` anomaly).
    unreadable: &'a [crate::history::Unreadable],
}

/// The run's own timings from a run dir's results.json (all zero when
/// there is none), so a re-check keeps them.
pub fn stored_timings(dir: &Path) -> Timings {
    #[derive(serde::Deserialize)]
    struct Stored {
        timings: Timings,
    }
    std::fs::read(dir.join("results.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
        .map(|s| s.timings)
        .unwrap_or_default()
}

/// Counts by name: operations then anomalies.
pub fn counts(o: &Outcome) -> BTreeMap<String, u64> {
    let s = &o.stats;
    let mut c: BTreeMap<String, u64> = [
        ("sent", s.sent),
        ("attempts", s.attempts),
        ("acked", s.acked),
        ("failed", s.failed),
        ("indeterminate", s.indeterminate),
        ("delivered", s.delivered),
        ("drained", s.drained),
        ("events", s.events),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (a, n) in &o.counts {
        if !o.not_applicable.contains(a) {
            c.insert(a.name().to_string(), *n);
        }
    }
    c
}

/// Writes results.json and lost.jsonl into the run dir.
pub fn write_results(
    dir: &Path,
    plan: &str,
    seed: u64,
    o: &Outcome,
    faults: &[FaultWindow],
    timings: &Timings,
) -> std::io::Result<()> {
    let results = Results {
        plan,
        seed,
        valid: match o.verdict {
            Verdict::Valid => Some(true),
            Verdict::Invalid => Some(false),
            Verdict::Unknown => None,
        },
        verdict: o.verdict,
        unknown_because: &o.floor,
        expectations_met: o.expectations_met,
        expectations: &o.expectations,
        counts: counts(o),
        not_applicable: o.not_applicable.iter().map(|a| a.name()).collect(),
        anomalies: &o.examples,
        lost: &o.lost[..o.lost.len().min(crate::checker::EXAMPLES)],
        duplicates_by_cause: &o.duplicates_by_cause,
        drain: Drain {
            complete: o.drain_complete,
            error: o.drain_error.as_deref(),
            unreadable: &o.unreadable,
        },
        faults: faults
            .iter()
            .map(|f| FaultRecord {
                id: f.id,
                kind: &f.fault,
                targets: &f.targets,
                detail: &f.detail,
                start_s: f.start as f64 / 1e6,
                end_s: f.end.map(|e| e as f64 / 1e6),
            })
            .collect(),
        timings,
    };
    let json = serde_json::to_vec_pretty(&results).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("results.json"), json)?;
    let mut lost = std::io::BufWriter::new(std::fs::File::create(dir.join("lost.jsonl"))?);
    for l in &o.lost {
        serde_json::to_writer(&mut lost, l).map_err(std::io::Error::other)?;
        lost.write_all(b"\n")?;
    }
    lost.flush()
}

/// The operation counts of a run on one line (the summary's second line,
/// and the suite's per-plan line).
pub fn counts_line(o: &Outcome, faults: usize, total_s: f64) -> String {
    let s = &o.stats;
    format!(
        "sent {}  acked {}  failed {}  indeterminate {}  delivered {}  drained {}  faults {}  ({:.1}s)",
        s.sent, s.acked, s.failed, s.indeterminate, s.delivered, s.drained, faults, total_s
    )
}

/// The summary table shown at the end of a run and kept as summary.txt.
pub fn summary(
    plan: &str,
    seed: u64,
    run_dir: &Path,
    o: &Outcome,
    faults: usize,
    timings: &Timings,
) -> String {
    let mut out = String::new();
    let verdict = match o.verdict {
        Verdict::Valid => "valid",
        Verdict::Invalid => "INVALID",
        Verdict::Unknown => "unknown",
    };
    out += &format!("plan {plan}  seed {seed}  run dir {}\n", run_dir.display());
    out += &counts_line(o, faults, timings.total_s);
    out.push('\n');
    if !o.drain_complete {
        out += &format!(
            "drain did not finish: {}\n",
            o.drain_error.as_deref().unwrap_or("no drain recorded")
        );
    }
    for u in &o.unreadable {
        out += &format!("unreadable: {u}\n");
    }
    for why in &o.floor {
        out += &format!("unknown: {why}\n");
    }
    out += &format!("{:<22}{:>10}  {:<8}{}\n", "anomaly", "count", "wanted", "");
    for e in &o.expectations {
        let mark = match e.met {
            Some(true) => "ok",
            Some(false) => "NOT MET",
            None => "unknown",
        };
        out += &format!(
            "{:<22}{:>10}  {:<8}{}\n",
            e.anomaly.name(),
            e.got,
            e.wanted,
            mark
        );
    }
    for a in &o.not_applicable {
        out += &format!(
            "{:<22}{:>10}  {:<8}{}\n",
            a.name(),
            "n/a",
            "",
            "no positions in a queue"
        );
    }
    if let Some(first) = o.lost.first() {
        out += &format!(
            "first lost: {} at {}/{} acked {:.3}s; faults around it: {}\n",
            first.value,
            first.partition,
            first.offset,
            first.acked_at,
            if first.faults.is_empty() {
                "none".to_string()
            } else {
                first.faults.join(", ")
            }
        );
    }
    out += &format!(
        "verdict {verdict}; expectations {}\n",
        if o.expectations_met { "met" } else { "NOT met" }
    );
    out
}

/// Writes every report of a checked run (results.json, lost.jsonl,
/// summary.txt, report.html) into its dir; returns the summary text.
pub fn write_all(
    dir: &Path,
    plan: &crate::plan::Plan,
    seed: u64,
    o: &Outcome,
    facts: &crate::checker::Facts,
    timings: &Timings,
) -> Result<String, crate::Error> {
    let fail = |what: &str, e: std::io::Error| {
        crate::Error::Harness(format!("write {what} in {}: {e}", dir.display()))
    };
    write_results(dir, &plan.name, seed, o, &facts.faults, timings)
        .map_err(|e| fail("results", e))?;
    let text = summary(&plan.name, seed, dir, o, facts.faults.len(), timings);
    std::fs::write(dir.join("summary.txt"), &text).map_err(|e| fail("summary.txt", e))?;
    let nodes: Vec<u32> = (1..=plan.cluster.nodes).collect();
    html::write(dir, &plan.name, seed, o, facts, &nodes).map_err(|e| fail("report.html", e))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, EventKind};

    #[test]
    fn a_queue_run_shows_position_anomalies_as_not_applicable() {
        let kinds = [
            EventKind::Run {
                plan: "q".into(),
                seed: 1,
                partitions: 1,
                max_in_flight: 5,
                retries: 0,
                consumers: 0,
                queue: true,
            },
            EventKind::Invoke {
                value: "p0-0".into(),
                attempt: 1,
            },
            EventKind::Ok {
                value: "p0-0".into(),
                attempt: 1,
                partition: 0,
                offset: -1,
            },
            EventKind::Drain {
                partition: 0,
                offset: -1,
                value: "p0-0".into(),
            },
            EventKind::DrainEnd {
                complete: true,
                high_watermarks: Default::default(),
                error: None,
                unreadable: Vec::new(),
            },
        ];
        let events = kinds.into_iter().enumerate().map(|(i, kind)| {
            Ok(Event {
                t: i as u64,
                process: "p0".into(),
                kind,
            })
        });
        let o = crate::checker::check(events, &crate::vocabulary::Expect::defaults()).unwrap();
        let c = counts(&o);
        assert_eq!(c["lost"], 0);
        assert!(!c.contains_key("reordered"), "{c:?}");
        let text = summary("q", 1, Path::new("r"), &o, 0, &Timings::default());
        assert!(text.contains("reordered") && text.contains("n/a"), "{text}");
        assert!(text.contains("verdict valid"), "{text}");
    }
}
