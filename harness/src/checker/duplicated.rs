//! Property: each value is stored once. Violation: `duplicated`, with the
//! cause: a producer retry (the value was sent more than once) or not.

use serde::Serialize;

use super::facts::{Facts, Value};

/// A value stored at more than one offset.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Duplicate {
    pub value: String,
    pub offsets: Vec<(i32, i64)>,
    /// "producer-retry" when the value had more than one send attempt, else "unexplained".
    pub cause: &'static str,
}

/// Every duplicated value.
pub fn check(f: &Facts) -> Vec<Duplicate> {
    let mut out: Vec<Duplicate> = f
        .drained_again
        .iter()
        .map(|(v, again)| {
            let retried = matches!(v, Value::Id(id) if f.send(*id).is_some_and(|s| s.attempts > 1));
            let mut offsets: Vec<(i32, i64)> = f.drained_at(*v).into_iter().collect();
            offsets.extend(again);
            offsets.sort_unstable();
            Duplicate {
                value: f.show(*v),
                offsets,
                cause: if retried {
                    "producer-retry"
                } else {
                    "unexplained"
                },
            }
        })
        .collect();
    out.sort_by(|a, b| a.offsets.cmp(&b.offsets));
    out
}
