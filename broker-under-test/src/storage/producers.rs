//! Idempotent producer state of one partition: for each producer id, its
//! epoch and its last 5 batches (sequence range -> offsets), as Kafka keeps.
//!
//! Input: the producer fields of a batch header. Output: append it,
//! answer with the offsets of the identical batch already stored (a
//! retry), or refuse it (out of order, fenced epoch). The state is derived
//! from the log: rebuilt by scanning batches when the log opens.

use std::collections::{HashMap, VecDeque};

use super::batch::BatchHeader;
use crate::bugs::{self, Bug};

/// Batches remembered per producer (Kafka's max in-flight for idempotence).
pub const WINDOW: usize = 5;

/// One stored batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    epoch: i16,
    batches: VecDeque<StoredBatch>,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// New: append it.
    Append,
    /// A retry of a batch already stored at these offsets.
    Duplicate { base_offset: i64, last_offset: i64 },
    /// The sequence does not follow the last stored one.
    OutOfOrder { expected: i32, got: i32 },
    /// The producer epoch is older than the one stored (a fenced producer).
    Fenced { current: i16, got: i16 },
}

/// Producer states of a partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    map: HashMap<i64, Entry>,
}

/// Whether a batch takes part in idempotence.
pub fn is_idempotent(h: &BatchHeader) -> bool {
    h.producer_id >= 0 && h.base_sequence >= 0
}

fn last_seq(h: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX like Kafka's.
    ((i64::from(h.base_sequence) + i64::from(h.last_offset_delta)) % (i64::from(i32::MAX) + 1))
        as i32
}

impl ProducerStates {
    /// Decides about a batch (no change to the state).
    pub fn check(&self, h: &BatchHeader) -> Check {
        if !is_idempotent(h) || bugs::on(Bug::SequenceNotChecked) {
            return Check::Append;
        }
        let Some(e) = self.map.get(&h.producer_id) else {
            return Check::Append;
        };
        if h.producer_epoch < e.epoch {
            return Check::Fenced {
                current: e.epoch,
                got: h.producer_epoch,
            };
        }
        if h.producer_epoch > e.epoch {
            return if h.base_sequence == 0 {
                Check::Append
            } else {
                Check::OutOfOrder {
                    expected: 0,
                    got: h.base_sequence,
                }
            };
        }
        let last = last_seq(h);
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
        {
            return Check::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            };
        }
        let expected = e.batches.back().map_or(0, |b| {
            if b.last_seq == i32::MAX {
                0
            } else {
                b.last_seq + 1
            }
        });
        if h.base_sequence == expected {
            Check::Append
        } else {
            Check::OutOfOrder {
                expected,
                got: h.base_sequence,
            }
        }
    }

    /// Records a batch stored at its (assigned) offsets.
    pub fn record(&mut self, h: &BatchHeader) {
        if !is_idempotent(h) {
            return;
        }
        let e = self.map.entry(h.producer_id).or_default();
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        e.batches.push_back(StoredBatch {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        if e.batches.len() > WINDOW {
            e.batches.pop_front();
        }
    }

    /// Number of producers known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pid: i64, epoch: i16, seq: i32, count: i32, base: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_length: 100,
            leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    #[test]
    fn retries_are_duplicates_gaps_are_out_of_order_old_epochs_are_fenced() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&h(7, 0, 0, 3, 0)), Check::Append);
        s.record(&h(7, 0, 0, 3, 10));
        assert_eq!(s.check(&h(7, 0, 3, 2, 0)), Check::Append);
        s.record(&h(7, 0, 3, 2, 13));
        assert_eq!(
            s.check(&h(7, 0, 0, 3, 0)),
            Check::Duplicate {
                base_offset: 10,
                last_offset: 12
            }
        );
        assert_eq!(
            s.check(&h(7, 0, 3, 2, 0)),
            Check::Duplicate {
                base_offset: 13,
                last_offset: 14
            }
        );
        assert_eq!(
            s.check(&h(7, 0, 9, 1, 0)),
            Check::OutOfOrder {
                expected: 5,
                got: 9
            }
        );
        assert_eq!(
            s.check(&h(7, 1, 0, 1, 0)),
            Check::Append,
            "a new epoch starts at 0"
        );
        assert_eq!(
            s.check(&h(7, 1, 4, 1, 0)),
            Check::OutOfOrder {
                expected: 0,
                got: 4
            }
        );
        s.record(&h(7, 1, 0, 1, 15));
        assert_eq!(
            s.check(&h(7, 0, 5, 1, 0)),
            Check::Fenced { current: 1, got: 0 }
        );
        assert_eq!(
            s.check(&h(-1, -1, -1, 1, 0)),
            Check::Append,
            "non-idempotent batches pass"
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(&h(1, 0, i, 1, i64::from(i)));
        }
        assert_eq!(
            s.check(&h(1, 0, 6, 1, 0)),
            Check::Duplicate {
                base_offset: 6,
                last_offset: 6
            }
        );
        assert_eq!(
            s.check(&h(1, 0, 2, 1, 0)),
            Check::Duplicate {
                base_offset: 2,
                last_offset: 2
            }
        );
        assert!(
            matches!(s.check(&h(1, 0, 1, 1, 0)), Check::OutOfOrder { .. }),
            "batch 1 fell out of the window"
        );
        assert_eq!(s.len(), 1);
    }
}
