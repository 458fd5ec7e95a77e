//! Property: every message below the group's committed offset, and every
//! message a member acknowledged on its own (per-message acknowledgement:
//! JetStream, Redis), was processed by the group. Violation: `skipped`
//! (lost while consuming, e.g. commit or acknowledge before processing and
//! a crash in between).

use super::facts::Facts;

/// "partition/offset value" of each skipped message.
pub fn check(f: &Facts) -> Vec<String> {
    let mut out: Vec<(i32, i64, String)> = f
        .offsets()
        .filter(|((p, o), info)| {
            info.drained
                && !info.processed
                && (info.acked || f.committed.get(p).is_some_and(|&c| *o < c))
        })
        .map(|((p, o), info)| (p, o, f.show(info.value)))
        .collect();
    out.sort();
    out.into_iter()
        .map(|(p, o, v)| format!("{p}/{o} {v}"))
        .collect()
}
