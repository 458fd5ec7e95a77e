//! Kafka RecordBatch (magic v2) framing: header parsing, CRC32C checks and
//! the two header fields the broker rewrites (base offset, leader epoch).
//!
//! Input: raw bytes from a Produce request or a segment file. Output: batch
//! boundaries and headers. Records inside a batch are never decoded: the log
//! stores batches exactly as the producer framed them.
//!
//! Layout of the fixed header (big-endian), offsets in bytes:
//! `0 base_offset i64 | 8 batch_length i32 | 12 leader_epoch i32 | 16 magic i8 |
//! 17 crc u32 | 21 attributes i16 | 23 last_offset_delta i32 | 27 base_ts i64 |
//! 35 max_ts i64 | 43 producer_id i64 | 51 producer_epoch i16 |
//! 53 base_sequence i32 | 57 record_count i32`. The CRC covers bytes 21..end,
//! so rewriting the base offset or the leader epoch keeps it valid.

use std::ops::Range;

/// Bytes before `batch_length` counts: base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed v2 batch header.
pub const HEADER_LEN: usize = 61;
/// The only record format this broker stores.
pub const MAGIC_V2: i8 = 2;
const CRC_START: usize = 21;

/// The fixed header of one RecordBatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is truncated: {needed} bytes needed, {available} available")]
    Short { needed: usize, available: usize },
    #[error("batch length {0} is out of range")]
    BadLength(i32),
    #[error("unsupported record format magic {0} (only v2 is stored)")]
    BadMagic(i8),
    #[error("CRC32C mismatch: header says {stored:#010x}, bytes give {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("batch declares {0} records and last offset delta {1}")]
    BadCount(i32, i32),
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Parses the fixed header from the start of `buf` (no CRC check).
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(BatchError::Short {
                needed: LOG_OVERHEAD,
                available: buf.len(),
            });
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Short {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let header = BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length,
            leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes")),
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        };
        if header.magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(header.magic));
        }
        Ok(header)
    }

    /// Total bytes of the batch including the log overhead.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Number of offsets the batch occupies.
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }
}

/// Parses and fully validates one batch at the start of `buf`: header,
/// length within `buf`, record count and CRC32C.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_len();
    if buf.len() < total {
        return Err(BatchError::Short {
            needed: total,
            available: buf.len(),
        });
    }
    if header.last_offset_delta < 0
        || header.record_count < 0
        || header.record_count > header.last_offset_delta.saturating_add(1)
    {
        return Err(BatchError::BadCount(
            header.record_count,
            header.last_offset_delta,
        ));
    }
    let computed = crc32c::crc32c(&buf[CRC_START..total]);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Splits a buffer of concatenated batches, validating each one.
pub fn split(buf: &[u8]) -> Result<Vec<(Range<usize>, BatchHeader)>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let header = validate(&buf[pos..])?;
        let end = pos + header.total_len();
        out.push((pos..end, header));
        pos = end;
    }
    Ok(out)
}

/// Rewrites the base offset of the batch starting at `batch[0]`.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Rewrites the partition leader epoch of the batch starting at `batch[0]`.
pub fn set_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Sets the idempotent-producer fields of a batch and recomputes its CRC
/// (they are covered by it). Test and tool support.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Builds a valid v2 batch of `count` records holding `values` (test and
/// tool support; producers normally frame their own batches).
pub fn build(base_offset: i64, values: &[&[u8]], timestamp_ms: i64) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    let mut records = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let mut body = vec![0u8]; // attributes
        varint(&mut body, 0); // timestamp delta
        varint(&mut body, i as i64); // offset delta
        varint(&mut body, -1); // null key
        varint(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        varint(&mut body, 0); // no headers
        varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let count = values.len().max(1) as i32;
    let mut b = Vec::with_capacity(HEADER_LEN + records.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&[0; 4]); // crc, filled below
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&(values.len() as i32).to_be_bytes());
    b.extend_from_slice(&records);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_batch_validates_and_survives_offset_rewrite() {
        let mut b = build(0, &[b"a", b"bc"], 1000);
        let h = validate(&b).unwrap();
        assert_eq!(h.record_count, 2);
        assert_eq!(h.last_offset_delta, 1);
        set_base_offset(&mut b, 42);
        set_leader_epoch(&mut b, 7);
        let h = validate(&b).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset(), h.leader_epoch),
            (42, 43, 7)
        );
    }

    #[test]
    fn flipped_bit_fails_crc() {
        let mut b = build(0, &[b"hello"], 1);
        let last = b.len() - 2;
        b[last] ^= 0x10;
        assert!(matches!(validate(&b), Err(BatchError::BadCrc { .. })));
    }

    #[test]
    fn short_and_bad_length_are_errors() {
        let b = build(0, &[b"hello"], 1);
        assert!(matches!(
            validate(&b[..b.len() - 1]),
            Err(BatchError::Short { .. })
        ));
        assert!(matches!(validate(&b[..5]), Err(BatchError::Short { .. })));
        let mut bad = b.clone();
        bad[8..12].copy_from_slice(&3i32.to_be_bytes());
        assert_eq!(validate(&bad), Err(BatchError::BadLength(3)));
        let two = [b.clone(), b.clone()].concat();
        assert_eq!(split(&two).unwrap().len(), 2);
    }
}
