//! Property: a consumer incarnation reads each partition at increasing
//! offsets unless it was reassigned. Violation: `nonmonotonic-poll`.

use super::facts::Facts;

/// "consumer partition P: offset A after B".
pub fn check(f: &Facts) -> Vec<String> {
    f.backwards
        .iter()
        .map(|b| {
            format!(
                "{} partition {}: offset {} after {}",
                b.process, b.partition, b.to, b.from
            )
        })
        .collect()
}
