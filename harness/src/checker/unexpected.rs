//! Property: everything in the log was sent and not definitely refused.
//! Violation: `unexpected` (a value never sent, foreign bytes, or a value
//! whose every attempt definitely failed).

use super::facts::{Facts, Value};

/// Unexpected values found in the drain.
pub fn check(f: &Facts) -> Vec<String> {
    let mut out: Vec<String> = f
        .drained_values()
        .filter(|(v, _)| match v {
            Value::Other(_) => true,
            Value::Id(id) => f.send(*id).is_none_or(|s| {
                s.attempts == 0 || (s.ok.is_none() && s.infos == 0 && s.fails >= s.attempts)
            }),
        })
        .map(|(v, _)| f.show(v))
        .collect();
    out.sort();
    out
}
