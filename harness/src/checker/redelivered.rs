//! Property: the group processes each value once. Violation: `redelivered`
//! (expected under at-least-once after crashes or rebalances).

use super::facts::{Facts, Value};

/// Values processed more than once, with the count.
pub fn check(f: &Facts) -> Vec<String> {
    let ids = f
        .sends()
        .filter(|(_, s)| s.delivered > 1)
        .map(|(v, s)| (Value::Id(v), s.delivered));
    let foreign = f
        .foreign_deliveries
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, n)| (*v, *n));
    let mut out: Vec<(Value, u32)> = ids.chain(foreign).collect();
    out.sort();
    out.into_iter()
        .map(|(v, n)| format!("{} x{n}", f.show(v)))
        .collect()
}
