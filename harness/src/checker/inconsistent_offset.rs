//! Property: each offset holds one value, whoever reads it (acks,
//! consumers, the drain). Violation: `inconsistent-offset`.

use super::facts::Facts;

/// "partition/offset: first then second (in ...)" for each bad offset.
pub fn check(f: &Facts) -> Vec<String> {
    f.conflicts
        .iter()
        .map(|c| {
            format!(
                "{}/{}: {} then {} (in {})",
                c.partition,
                c.offset,
                f.show(c.first),
                f.show(c.second),
                c.seen_in
            )
        })
        .collect()
}
