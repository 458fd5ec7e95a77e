//! The workload: producers and consumers that record every operation in
//! the history, and the final drain.
//!
//! Values are `p<producer>-<seq>` followed by a space and padding up to a
//! size drawn from the seed; only the id is recorded.

pub mod consumer;
pub mod drain;
pub mod producer;
pub mod replicas;

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters for the status line.
#[derive(Debug, Default)]
pub struct Status {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub indeterminate: AtomicU64,
    pub delivered: AtomicU64,
}

impl Status {
    /// (sent, acked, failed, indeterminate, delivered)
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.indeterminate.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
        )
    }
}

/// The id at the start of a payload (up to the first space).
pub fn value_of(payload: Option<&[u8]>) -> String {
    let Some(p) = payload else {
        return "<null>".into();
    };
    let id = p.split(|b| *b == b' ').next().unwrap_or_default();
    match std::str::from_utf8(id) {
        Ok(s) if !s.is_empty() && s.len() <= 64 => s.to_string(),
        _ => format!("<{} bytes: {:02x?}>", p.len(), &p[..p.len().min(8)]),
    }
}
