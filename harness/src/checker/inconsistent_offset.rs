//! Property: each offset holds one value, whoever reads it (acks,
//! consumers, the drain). Violation: `inconsistent-offset`.

use super::facts::Facts;

/// "partition/offset: first vs second (seen in ...)" for each bad offset.
pub fn check(f: &Facts) -> Vec<String> {
    f.conflicts
        .iter()
        .map(|c| {
            format!(
                "{}/{}: {} then {} (in {})",
                c.partition, c.offset, c.first, c.second, c.seen_in
            )
        })
        .collect()
}
