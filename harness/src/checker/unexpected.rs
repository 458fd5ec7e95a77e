//! Property: everything in the log was sent and not definitely refused.
//! Violation: `unexpected` (a value never sent, foreign bytes, or a value
//! whose every attempt definitely failed).

use super::facts::{Facts, Value};

/// Unexpected values found in the drain.
pub fn check(f: &Facts) -> Vec<String> {
    let mut out: Vec<String> = f
        .drained
        .keys()
        .filter(|v| match v {
            Value::Other(_) => true,
            Value::Id(id) => match f.sends.get(id) {
                None => true,
                Some(s) => s.ok.is_none() && s.infos == 0 && s.fails >= s.attempts.max(1),
            },
        })
        .map(|v| f.show(*v))
        .collect();
    out.sort();
    out
}
