//! History -> `Outcome`: anomalies by kind, the verdict, and whether the
//! plan's expectations are met.
//!
//! One streaming pass folds the history into `Facts` (memory proportional
//! to the distinct messages); then each property, one file each, derives
//! its anomalies from the facts.
//!
//! The model every driver maps onto: a message is a unique value, acked
//! (or delivered, or drained) at a place (partition, position), where
//! positions grow within a partition. `lost`, `unexpected`, `duplicated`,
//! `recovered` and `redelivered` need only values; `skipped`, `reordered`,
//! `inconsistent-offset` and `nonmonotonic-poll` need positions. A broker
//! without positions (a queue) would report deliveries and
//! acknowledgements by value only; for it the position properties are "not
//! applicable", reported as such rather than as 0 (`Outcome::not_applicable`).
//! In a queue, consumers remove what they acknowledge: a message the group
//! acknowledged is accounted for without the drain (lost.rs, skipped.rs).

pub mod dense;
pub mod duplicated;
pub mod facts;
pub mod inconsistent_offset;
pub mod lost;
pub mod lost_commit;
pub mod nonmonotonic_poll;
pub mod recovered;
pub mod redelivered;
pub mod reordered;
pub mod skipped;
pub mod unexpected;
pub mod unreadable;

use std::collections::BTreeMap;

use serde::Serialize;

pub use crate::vocabulary::Anomaly;
pub use facts::Facts;

use crate::history::{Event, HistoryError};
use crate::vocabulary::Expect;

/// How many examples of each anomaly are kept in results.
pub const EXAMPLES: usize = 100;

/// Valid, invalid or unknown; invalid outranks unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Valid,
    Invalid,
    Unknown,
}

/// One expectation's evaluation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Expectation {
    pub anomaly: Anomaly,
    pub wanted: String,
    pub got: u64,
    /// None when it cannot be told (the drain did not finish, or the run
    /// is below the floor).
    pub met: Option<bool>,
}

/// Counts of operations.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Distinct values sent.
    pub sent: u64,
    pub attempts: u64,
    pub acked: u64,
    /// Values whose every attempt definitely failed.
    pub failed: u64,
    /// Values never acknowledged with at least one indeterminate attempt.
    pub indeterminate: u64,
    /// Messages processed by consumers (with redeliveries).
    pub delivered: u64,
    /// Messages read by the final drain.
    pub drained: u64,
    pub events: u64,
}

/// The checker's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub drain_complete: bool,
    pub drain_error: Option<String>,
    /// Why the run cannot be judged although the drain finished (see
    /// [`floor`]); the verdict is then unknown unless it is invalid.
    pub floor: Vec<String>,
    /// Ranges the broker reported but did not serve to the drain.
    pub unreadable: Vec<crate::history::Unreadable>,
    pub stats: Stats,
    pub counts: BTreeMap<Anomaly, u64>,
    /// Up to `EXAMPLES` of each anomaly, as text.
    pub examples: BTreeMap<Anomaly, Vec<String>>,
    /// Every lost message (results.json keeps the first 100; lost.jsonl all).
    #[serde(skip)]
    pub lost: Vec<lost::LostMessage>,
    pub duplicates_by_cause: BTreeMap<String, u64>,
    pub expectations: Vec<Expectation>,
    /// Anomalies that cannot be checked for this broker (a queue has no
    /// positions): reports say "n/a", not 0.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_applicable: Vec<Anomaly>,
    /// Whether every expectation is met (false when any cannot be told).
    pub expectations_met: bool,
}

/// Why a run whose drain finished still cannot be judged: the workload did
/// no real work, or a plan fault never acted (empty: it can be judged).
pub fn floor(f: &Facts, stats: &Stats) -> Vec<String> {
    let mut why = Vec::new();
    if stats.acked == 0 {
        why.push(format!(
            "the workload did no real work: {} messages sent, none acknowledged",
            stats.sent
        ));
    }
    if f.consumers > 0 && stats.delivered == 0 {
        why.push(format!(
            "the {} consumers processed no message",
            f.consumers
        ));
    }
    for (line, l) in &f.fault_lines {
        if l.acted == 0 {
            why.push(format!(
                "faults[{line}] ({}) never acted: due {} times, each time with nothing to act on (last: {})",
                l.fault, l.skipped, l.reason
            ));
        }
    }
    why
}

/// Checks a history against expectations.
pub fn check<I>(events: I, expect: &BTreeMap<Anomaly, Expect>) -> Result<Outcome, HistoryError>
where
    I: IntoIterator<Item = Result<Event, HistoryError>>,
{
    let mut facts = Facts::default();
    for e in events {
        facts.add(e?);
    }
    Ok(evaluate(&facts, expect))
}

/// Folds a stored history into facts, line by line (the fast path).
pub fn fold(path: &std::path::Path) -> Result<Facts, HistoryError> {
    let mut reader = crate::history::open(path)?;
    let mut facts = Facts::default();
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| HistoryError::Io {
                verb: "read",
                path: path.into(),
                source,
            })?;
        if read == 0 {
            return Ok(facts);
        }
        n += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        facts
            .add_line(&line)
            .map_err(|source| HistoryError::Parse {
                path: path.into(),
                line: n,
                source,
            })?;
    }
}

/// The anomalies this history cannot show: those resting on positions,
/// for a queue.
fn not_applicable(f: &Facts) -> Vec<Anomaly> {
    if !f.queue {
        return Vec::new();
    }
    Anomaly::ALL
        .into_iter()
        .filter(|a| a.needs_positions())
        .collect()
}

/// Derives every anomaly from the facts and evaluates expectations.
pub fn evaluate(f: &Facts, expect: &BTreeMap<Anomaly, Expect>) -> Outcome {
    let lost = lost::check(f);
    let dups = duplicated::check(f);
    let mut found: BTreeMap<Anomaly, Vec<String>> = BTreeMap::new();
    found.insert(
        Anomaly::Lost,
        lost.iter()
            .map(|l| {
                format!(
                    "{} at {}/{} acked {:.3}s",
                    l.value, l.partition, l.offset, l.acked_at
                )
            })
            .collect(),
    );
    found.insert(Anomaly::Unreadable, unreadable::check(f));
    found.insert(Anomaly::Unexpected, unexpected::check(f));
    found.insert(Anomaly::InconsistentOffset, inconsistent_offset::check(f));
    found.insert(
        Anomaly::Duplicated,
        dups.iter()
            .map(|d| format!("{} at {:?} ({})", d.value, d.offsets, d.cause))
            .collect(),
    );
    found.insert(Anomaly::Redelivered, redelivered::check(f));
    found.insert(Anomaly::Recovered, recovered::check(f));
    found.insert(Anomaly::Reordered, reordered::check(f));
    found.insert(Anomaly::Skipped, skipped::check(f));
    found.insert(Anomaly::NonmonotonicPoll, nonmonotonic_poll::check(f));
    found.insert(Anomaly::LostCommit, lost_commit::check(f));
    let counts: BTreeMap<Anomaly, u64> = found.iter().map(|(a, v)| (*a, v.len() as u64)).collect();
    let mut duplicates_by_cause = BTreeMap::new();
    for d in &dups {
        *duplicates_by_cause.entry(d.cause.to_string()).or_insert(0) += 1;
    }
    let stats = Stats {
        sent: f.sends().filter(|(_, s)| s.attempts > 0).count() as u64,
        attempts: f.sends().map(|(_, s)| u64::from(s.attempts)).sum(),
        acked: f.sends().filter(|(_, s)| s.ok.is_some()).count() as u64,
        failed: f
            .sends()
            .filter(|(_, s)| s.ok.is_none() && s.infos == 0 && s.fails > 0)
            .count() as u64,
        indeterminate: f
            .sends()
            .filter(|(_, s)| s.ok.is_none() && s.infos > 0)
            .count() as u64,
        delivered: f.delivered_total,
        drained: f.drained_total,
        events: f.events,
    };
    let drain_complete = f.drain_complete == Some(true);
    let floor = if drain_complete {
        floor(f, &stats)
    } else {
        Vec::new()
    };
    let invalid = counts.iter().any(|(a, n)| a.fails_by_default() && *n > 0);
    let verdict = if !drain_complete {
        // Without a full drain, absent messages prove nothing; only
        // anomalies seen in what was read stand.
        let seen_invalid = [
            Anomaly::InconsistentOffset,
            Anomaly::NonmonotonicPoll,
            Anomaly::Reordered,
            Anomaly::LostCommit,
        ]
        .iter()
        .any(|a| counts[a] > 0);
        if seen_invalid {
            Verdict::Invalid
        } else {
            Verdict::Unknown
        }
    } else if invalid {
        Verdict::Invalid
    } else if !floor.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let decidable = drain_complete && floor.is_empty();
    let not_applicable = not_applicable(f);
    let expectations: Vec<Expectation> = expect
        .iter()
        .filter(|(a, _)| !not_applicable.contains(a))
        .map(|(a, e)| {
            let got = counts[a];
            Expectation {
                anomaly: *a,
                wanted: e.to_string(),
                got,
                met: decidable.then(|| e.met_by(got)),
            }
        })
        .collect();
    let expectations_met = expectations.iter().all(|e| e.met == Some(true));
    let examples = found
        .into_iter()
        .map(|(a, mut v)| {
            v.truncate(EXAMPLES);
            (a, v)
        })
        .collect();
    Outcome {
        verdict,
        drain_complete,
        drain_error: f.drain_error.clone(),
        floor,
        unreadable: f.unreadable.clone(),
        stats,
        counts,
        examples,
        lost,
        duplicates_by_cause,
        expectations,
        not_applicable,
        expectations_met,
    }
}

#[cfg(test)]
mod tests;
