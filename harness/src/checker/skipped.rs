//! Property: every message below the group's committed offset, and every
//! message a member acknowledged on its own (per-message acknowledgement:
//! JetStream, Redis), was processed by the group. Violation: `skipped`
//! (lost while consuming, e.g. commit or acknowledge before processing and
//! a crash in between). For a queue: a message the group acknowledged (so
//! it left the queue) that nobody processed and the drain did not find.

use super::facts::Facts;

/// "partition/offset value" of each skipped message (a queue's: "value").
pub fn check(f: &Facts) -> Vec<String> {
    if f.queue {
        // Acknowledged (so gone from the queue), never processed, and not
        // left in the queue either (an acknowledgement that never arrived).
        let mut out: Vec<_> = f
            .sends()
            .filter(|(_, s)| s.taken > 0 && s.delivered == 0 && s.drained_at.is_none())
            .map(|(v, _)| v)
            .collect();
        out.sort();
        return out.into_iter().map(|v| v.to_string()).collect();
    }
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
