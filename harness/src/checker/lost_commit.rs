//! Property: every commit the broker acknowledged is still in effect at
//! the end of the run: the group's committed offset of each partition, as
//! the broker has it after the heal, is at least the highest offset a
//! consumer's commit was acknowledged at. Violation: `lost-commit` (the
//! group would read again what it had finished with; with commit before
//! processing it would read again what it skipped). Not checked when the
//! committed offsets could not be read at the end (a driver without them,
//! or the broker did not answer: a note says so).

use super::facts::Facts;

/// One line per partition whose acknowledged commit was lost.
pub fn check(f: &Facts) -> Vec<String> {
    let Some(end) = &f.final_committed else {
        return Vec::new();
    };
    f.acked_commits
        .iter()
        .filter_map(|(&p, &acked)| {
            let now = end.get(&p).copied();
            (now.unwrap_or(-1) < acked).then(|| match now {
                Some(o) => format!(
                    "partition {p}: a commit at offset {acked} was acknowledged; the group's \
                     committed offset at the end is {o}"
                ),
                None => format!(
                    "partition {p}: a commit at offset {acked} was acknowledged; the group has \
                     no committed offset at the end"
                ),
            })
        })
        .collect()
}
