//! Property: with one request in flight, a producer's acks on a partition
//! come at increasing offsets. Violation: `reordered`. Checked only when
//! the run had max_in_flight 1 (otherwise retries may legally reorder).

use super::facts::Facts;

/// "p<producer> partition P: offset A acked after B".
pub fn check(f: &Facts) -> Vec<String> {
    if f.max_in_flight != 1 {
        return Vec::new();
    }
    f.reorders
        .iter()
        .map(|(producer, p, o, max)| {
            format!("p{producer} partition {p}: offset {o} acked after {max}")
        })
        .collect()
}
