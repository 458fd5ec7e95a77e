//! Property: every acknowledged message is in the final drain (for a
//! queue: in the final drain, or acknowledged by the group, which took it
//! out of the queue).
//! Violation: `lost`, listed with its ack and the faults around it; an
//! absent message acknowledged inside a range the broker reported but did
//! not serve is `unreadable` instead (see unreadable.rs).

use serde::Serialize;

use super::facts::Facts;

/// How far before and after an ack a fault counts as "around" it (µs).
const BEFORE: u64 = 5_000_000;
const AFTER: u64 = 10_000_000;

/// An acknowledged message missing from the final drain.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LostMessage {
    pub value: String,
    pub partition: i32,
    pub offset: i64,
    /// Seconds since the run started.
    pub acked_at: f64,
    /// Faults active from 5 s before to 10 s after the ack: "kill#3 [1] leader".
    pub faults: Vec<String>,
}

/// Every lost message, in ack order.
pub fn check(f: &Facts) -> Vec<LostMessage> {
    absent(f, false)
}

/// Acknowledged messages absent from the drain, in ack order: those
/// acknowledged inside an unreadable range (`unreadable`) or outside.
pub fn absent(f: &Facts, unreadable: bool) -> Vec<LostMessage> {
    let mut lost: Vec<LostMessage> = f
        .sends()
        .filter_map(|(v, s)| {
            let (partition, offset, t) = s.ok?;
            if s.drained_at.is_some()
                || (f.queue && s.taken > 0)
                || f.unreadable_at(partition, offset).is_some() != unreadable
            {
                return None;
            }
            Some(LostMessage {
                value: v.to_string(),
                partition,
                offset,
                acked_at: t as f64 / 1e6,
                faults: f
                    .faults_near(t, BEFORE, AFTER)
                    .iter()
                    .map(|w| format!("{}#{} {:?} {}", w.fault, w.id, w.targets, w.detail))
                    .collect(),
            })
        })
        .collect();
    lost.sort_by(|a, b| a.acked_at.total_cmp(&b.acked_at));
    lost
}
