//! Property: the group processes each value once. Violation: `redelivered`
//! (expected under at-least-once after crashes or rebalances).

use super::facts::Facts;

/// Values processed more than once, with the count.
pub fn check(f: &Facts) -> Vec<String> {
    let mut out: Vec<String> = f
        .deliveries
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, n)| format!("{v} x{n}"))
        .collect();
    out.sort();
    out
}
