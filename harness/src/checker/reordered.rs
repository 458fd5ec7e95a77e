//! Property: with one request in flight, a producer's acks on a partition
//! come at increasing offsets. Violation: `reordered`. Checked only when
//! the run had max_in_flight 1 (otherwise retries may legally reorder).

use super::facts::Facts;

/// "p<producer> partition P: offset A acked after B".
pub fn check(f: &Facts) -> Vec<String> {
    if f.max_in_flight != 1 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut keys: Vec<_> = f.ack_order.keys().collect();
    keys.sort();
    for key in keys {
        let mut max = i64::MIN;
        for &o in &f.ack_order[key] {
            if o < max {
                out.push(format!(
                    "p{} partition {}: offset {o} acked after {max}",
                    key.0, key.1
                ));
            }
            max = max.max(o);
        }
    }
    out
}
