//! Unsynced data of one file: the writes and truncations made since its
//! last fsync, in order, over the durable contents in the backing file.
//! Pure logic: `read` merges, `size` tells the visible size, `torn_prefix`
//! picks what a torn write leaves behind.

use std::time::{Duration, Instant};

/// One unsynced change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

/// The unsynced changes of a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    pub ops: Vec<Op>,
    /// When each op began (for the kernel's writeback of old dirty data).
    pub at: Vec<Instant>,
}

/// Memory one op holds beyond its data: the op, its start time, and the
/// allocator's share.
const OP_OVERHEAD: u64 = 64;

/// The memory one op holds.
fn footprint(op: &Op) -> u64 {
    match op {
        Op::Write { data, .. } => data.capacity() as u64 + OP_OVERHEAD,
        Op::Truncate(_) => OP_OVERHEAD,
    }
}

/// How long appends keep extending one op: a write-back cut falls within
/// this much of its age.
const MERGE: Duration = Duration::from_secs(1);

impl Pending {
    /// Records a write; a write that continues the previous one extends it
    /// (appends made within a second stay one op).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let now = Instant::now();
        if let (Some(Op::Write { offset: o, data: d }), Some(at)) =
            (self.ops.last_mut(), self.at.last())
        {
            if *o + d.len() as u64 == offset && now.duration_since(*at) < MERGE {
                d.extend_from_slice(data);
                return;
            }
        }
        self.ops.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        self.at.push(now);
    }

    /// Records a truncation (or extension) to `size`.
    pub fn truncate(&mut self, size: u64) {
        self.ops.push(Op::Truncate(size));
        self.at.push(Instant::now());
    }

    /// Splits off what a kernel would have written back by `now`: the ops
    /// begun at least `after` ago (returned), keeping the younger ones.
    pub fn written_back(&mut self, after: Duration, now: Instant) -> Vec<Op> {
        match now.checked_sub(after) {
            Some(cutoff) => self.split_through(cutoff),
            None => Vec::new(),
        }
    }

    /// Splits off the ops begun no later than `cutoff` (returned, oldest
    /// first), keeping the younger ones.
    pub fn split_through(&mut self, cutoff: Instant) -> Vec<Op> {
        let old = self.at.iter().take_while(|t| **t <= cutoff).count();
        self.at.drain(..old);
        self.ops.drain(..old).collect()
    }

    /// When each op began and the memory it holds, oldest first.
    pub fn ages(&self) -> impl Iterator<Item = (Instant, u64)> + '_ {
        self.at.iter().copied().zip(self.ops.iter().map(footprint))
    }

    /// The memory these changes hold.
    pub fn footprint(&self) -> u64 {
        self.ops.iter().map(footprint).sum()
    }

    /// The visible size given the durable size.
    pub fn size(&self, durable: u64) -> u64 {
        self.ops.iter().fold(durable, |size, op| match op {
            Op::Write { offset, data } => size.max(offset + data.len() as u64),
            Op::Truncate(s) => *s,
        })
    }

    /// Visible bytes [offset, offset+len) given the durable bytes of that
    /// range (`durable`, possibly shorter) and the durable size.
    pub fn read(&self, offset: u64, len: usize, durable: &[u8], durable_size: u64) -> Vec<u8> {
        let size = self.size(durable_size);
        let end = (offset + len as u64).min(size);
        if end <= offset {
            return Vec::new();
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let n = durable.len().min(buf.len());
        buf[..n].copy_from_slice(&durable[..n]);
        for op in &self.ops {
            match op {
                Op::Write { offset: o, data } => {
                    let (ws, we) = (*o, o + data.len() as u64);
                    let (s, e) = (ws.max(offset), we.min(end));
                    if s < e {
                        buf[(s - offset) as usize..(e - offset) as usize]
                            .copy_from_slice(&data[(s - ws) as usize..(e - ws) as usize]);
                    }
                }
                Op::Truncate(t) => {
                    // Bytes past a truncation read as zeros until rewritten.
                    if *t < end {
                        let from = t.max(&offset) - offset;
                        buf[from as usize..].fill(0);
                    }
                }
            }
        }
        buf
    }

    /// The ops a torn write leaves: all but the last write, which keeps
    /// only its first `keep` bytes.
    pub fn torn_prefix(&self, keep: usize) -> Vec<Op> {
        let mut ops = self.ops.clone();
        if let Some(i) = ops.iter().rposition(|op| matches!(op, Op::Write { .. })) {
            if let Op::Write { offset, data } = &ops[i] {
                let (offset, data) = (*offset, data[..keep.min(data.len())].to_vec());
                ops.truncate(i);
                if !data.is_empty() {
                    ops.push(Op::Write { offset, data });
                }
            }
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ops_older_than_the_writeback_age_are_written_back() {
        let mut p = Pending::default();
        p.write(0, b"old");
        p.truncate(10);
        p.write(20, b"new");
        let t0 = p.at[0];
        // Make the first two ops 40 s old, the last one 1 s old.
        let now = t0 + Duration::from_secs(40);
        p.at = vec![t0, t0, now - Duration::from_secs(1)];
        let back = p.written_back(Duration::from_secs(30), now);
        assert_eq!(
            back,
            vec![
                Op::Write {
                    offset: 0,
                    data: b"old".to_vec()
                },
                Op::Truncate(10)
            ]
        );
        assert_eq!(p.ops.len(), 1);
        assert_eq!(p.at.len(), 1);
        assert!(p.written_back(Duration::from_secs(30), now).is_empty());
        assert_eq!(p.footprint(), p.ages().map(|(_, n)| n).sum::<u64>());
        assert!(p.footprint() >= 3 + OP_OVERHEAD);
        assert_eq!(
            p.split_through(now),
            vec![Op::Write {
                offset: 20,
                data: b"new".to_vec()
            }]
        );
        assert_eq!((p.ops.len(), p.at.len(), p.footprint()), (0, 0, 0));
    }

    #[test]
    fn appends_coalesce_and_reads_merge() {
        let mut p = Pending::default();
        p.write(4, b"ab");
        p.write(6, b"cd");
        assert_eq!(p.ops.len(), 1);
        assert_eq!(p.size(4), 8);
        assert_eq!(p.read(0, 100, b"wxyz", 4), b"wxyzabcd");
        p.truncate(5);
        assert_eq!(p.size(4), 5);
        assert_eq!(p.read(0, 100, b"wxyz", 4), b"wxyza");
        p.write(7, b"Q");
        assert_eq!(p.read(0, 100, b"wxyz", 4), b"wxyza\0\0Q");
        assert_eq!(p.read(6, 2, b"", 4), b"\0Q");
    }

    #[test]
    fn torn_prefix_keeps_part_of_the_last_write() {
        let mut p = Pending::default();
        p.write(0, b"hello");
        p.write(10, b"world");
        assert_eq!(
            p.torn_prefix(2),
            vec![
                Op::Write {
                    offset: 0,
                    data: b"hello".to_vec()
                },
                Op::Write {
                    offset: 10,
                    data: b"wo".to_vec()
                }
            ]
        );
        assert_eq!(
            p.torn_prefix(0),
            vec![Op::Write {
                offset: 0,
                data: b"hello".to_vec()
            }]
        );
    }
}
