//! The workload: producers and consumers that record every operation in
//! the history, through the cluster's driver (`crate::driver`). Pacing,
//! retry recording and crash-mid-batch are written here once, for every
//! broker.
//!
//! Values are `p<producer>-<seq>` followed by a space and padding up to a
//! size drawn from the seed; only the id is recorded.

pub mod consumer;
pub mod producer;

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
