//! Observation: an indeterminate send (timeout) whose value is in the log
//! anyway. Reported as `recovered`; a timed-out write is unknown, never absent.

use super::facts::Facts;

/// Indeterminate sends present in the drain (or, in a queue, given to
/// the group).
pub fn check(f: &Facts) -> Vec<String> {
    let mut out: Vec<_> = f
        .sends()
        .filter(|(_, s)| {
            s.ok.is_none()
                && s.infos > 0
                && (s.drained_at.is_some() || (f.queue && s.delivered > 0))
        })
        .map(|(v, _)| v)
        .collect();
    out.sort();
    out.into_iter().map(|v| v.to_string()).collect()
}
