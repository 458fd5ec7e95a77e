//! Property: everything in the log (or taken from the queue) was sent and
//! not definitely refused.
//! Violation: `unexpected` (a value never sent, foreign bytes, or a value
//! whose every attempt definitely failed).

use super::facts::{Facts, Value};

/// Unexpected values found in the drain (for a queue also those the group
/// was given, which the drain cannot find any more).
pub fn check(f: &Facts) -> Vec<String> {
    let unexpected = |v: &Value| match v {
        Value::Other(_) => true,
        Value::Id(id) => f.send(*id).is_none_or(|s| {
            s.attempts == 0 || (s.ok.is_none() && s.infos == 0 && s.fails >= s.attempts)
        }),
    };
    let mut seen: Vec<Value> = f.drained_values().map(|(v, _)| v).collect();
    if f.queue {
        seen.extend(f.foreign_deliveries.keys().copied());
        seen.extend(
            f.sends()
                .filter(|(_, s)| s.delivered > 0 && s.drained_at.is_none())
                .map(|(v, _)| Value::Id(v)),
        );
    }
    let mut out: Vec<String> = seen
        .into_iter()
        .filter(unexpected)
        .map(|v| f.show(v))
        .collect();
    out.sort();
    out.dedup();
    out
}
