//! Unsynced data of one file: the writes and truncations made since its
//! last fsync, in order, over the durable contents in the backing file.
//! Pure logic: `read` merges, `size` tells the visible size, `torn_prefix`
//! picks what a torn write leaves behind.

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
}

impl Pending {
    /// Records a write; a write that continues the previous one extends it
    /// (appends stay one op however many there are).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(Op::Write { offset: o, data: d }) = self.ops.last_mut() {
            if *o + d.len() as u64 == offset {
                d.extend_from_slice(data);
                return;
            }
        }
        self.ops.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
    }

    /// Records a truncation (or extension) to `size`.
    pub fn truncate(&mut self, size: u64) {
        self.ops.push(Op::Truncate(size));
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
