//! One log segment: `<base offset>.log` holding whole batches back to back,
//! and a sparse `<base offset>.index` of (relative offset, byte position)
//! pairs, one at least every `index_interval` bytes.
//!
//! The index is a lookup aid, not a source of truth: it is rebuilt from the
//! log on every open and never fsynced.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use super::error::StorageError;

/// File name of a segment or index: base offset padded to 20 digits.
pub fn file_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// What a segment scan found past the last valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// The file ends exactly after a valid batch.
    Clean,
    /// Bytes after the last valid batch that do not form a valid batch and
    /// are not followed by one: a torn write.
    TornTail {
        position: u64,
        bytes: u64,
        reason: String,
    },
    /// An invalid batch followed by a valid one: the middle of the file is damaged.
    Corrupt { position: u64, reason: String },
}

/// Bytes read ahead from a segment file by a sequential scan.
#[derive(Default)]
struct Window {
    /// File position of `data[0]`.
    start: u64,
    data: Vec<u8>,
}

impl Window {
    /// Bytes read per refill; small under test so that batches straddle
    /// refills.
    const CHUNK: usize = if cfg!(test) { 97 } else { 1 << 20 };

    /// `len` bytes at `pos` (fewer only at `limit`, the file's end).
    fn bytes(&mut self, file: &File, pos: u64, len: usize, limit: u64) -> Result<&[u8], String> {
        let end = pos + len as u64;
        if pos < self.start || end > self.start + self.data.len() as u64 {
            let want = (len.max(Self::CHUNK) as u64).min(limit - pos) as usize;
            self.start = pos;
            self.data.resize(want, 0);
            if let Err(e) = file.read_exact_at(&mut self.data, pos) {
                self.data.clear();
                return Err(format!("read failed: {e}"));
            }
        }
        let from = (pos - self.start) as usize;
        let to = (from + len).min(self.data.len());
        Ok(&self.data[from..to])
    }

    /// Reads and validates the batch at `pos` (< `limit`), as
    /// [`Segment::read_batch_at`] does.
    fn batch_at(&mut self, file: &File, pos: u64, limit: u64) -> Result<BatchHeader, String> {
        let avail = (limit - pos) as usize;
        let head = self.bytes(file, pos, HEADER_LEN.min(avail), limit)?;
        let header = BatchHeader::parse(head).map_err(|e| e.to_string())?;
        let total = header.total_len();
        if total > avail {
            return Err(format!(
                "batch of {total} bytes runs past the end of the file ({avail} bytes left)"
            ));
        }
        batch::validate(self.bytes(file, pos, total, limit)?).map_err(|e| e.to_string())
    }
}

/// An open segment.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: i64,
    /// One past the last offset stored in this segment.
    pub next_offset: i64,
    /// Bytes of valid batches.
    pub size: u64,
    pub log: Arc<File>,
    log_path: PathBuf,
    index: Vec<(u32, u32)>,
    index_file: File,
    index_path: PathBuf,
    index_interval: u64,
    bytes_since_index: u64,
    /// Largest max timestamp seen, for ListOffsets.
    pub max_timestamp: i64,
}

impl Segment {
    /// Creates a new empty segment.
    pub fn create(dir: &Path, base_offset: i64, index_interval: u64) -> Result<Self, StorageError> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(StorageError::io("create segment", &log_path))?;
        Self::with_file(dir, base_offset, log, log_path, index_interval)
    }

    fn with_file(
        dir: &Path,
        base_offset: i64,
        log: File,
        log_path: PathBuf,
        index_interval: u64,
    ) -> Result<Self, StorageError> {
        let index_path = dir.join(file_name(base_offset, "index"));
        let index_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&index_path)
            .map_err(StorageError::io("create index", &index_path))?;
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            log: Arc::new(log),
            log_path,
            index: Vec::new(),
            index_file,
            index_path,
            index_interval,
            bytes_since_index: u64::MAX,
            max_timestamp: -1,
        })
    }

    /// Opens an existing segment, validating every batch (each valid one is
    /// shown to `on_batch`) and rebuilding the index. Returns how the scan ended; the caller decides what to truncate.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        index_interval: u64,
        on_batch: &mut dyn FnMut(&BatchHeader),
    ) -> Result<(Self, ScanEnd), StorageError> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(StorageError::io("open segment", &log_path))?;
        let len = log
            .metadata()
            .map_err(StorageError::io("stat segment", &log_path))?
            .len();
        let mut seg = Self::with_file(dir, base_offset, log, log_path.clone(), index_interval)?;
        let mut pos = 0u64;
        let mut expected = base_offset;
        // The scan reads the file in large chunks: a read per batch made
        // recovery take seconds per 100,000 batches on a FUSE mount.
        let mut window = Window::default();
        let mut entries = Vec::new();
        let end = loop {
            if pos == len {
                break ScanEnd::Clean;
            }
            match window.batch_at(&seg.log, pos, len) {
                Ok(header) => {
                    if header.base_offset < expected {
                        break ScanEnd::Corrupt {
                            position: pos,
                            reason: format!(
                                "batch base offset {} is below the expected {expected}",
                                header.base_offset
                            ),
                        };
                    }
                    entries.extend(seg.note_batch(pos, &header));
                    on_batch(&header);
                    expected = header.last_offset() + 1;
                    pos += header.total_len() as u64;
                }
                Err(reason) => {
                    let valid_after = seg.valid_batch_follows(pos, len);
                    break if valid_after {
                        ScanEnd::Corrupt {
                            position: pos,
                            reason,
                        }
                    } else {
                        ScanEnd::TornTail {
                            position: pos,
                            bytes: len - pos,
                            reason,
                        }
                    };
                }
            }
        };
        seg.write_index(&entries)?;
        seg.size = pos;
        seg.next_offset = expected;
        Ok((seg, end))
    }

    /// Reads and validates the batch at `pos`, limited to `limit` bytes of file.
    fn read_batch_at(&self, pos: u64, limit: u64) -> Result<Option<Vec<u8>>, String> {
        if pos >= limit {
            return Ok(None);
        }
        let avail = (limit - pos) as usize;
        let mut head = vec![0u8; HEADER_LEN.min(avail)];
        self.log
            .read_exact_at(&mut head, pos)
            .map_err(|e| format!("read failed: {e}"))?;
        let header = BatchHeader::parse(&head).map_err(|e| e.to_string())?;
        let total = header.total_len();
        if total > avail {
            return Err(format!(
                "batch of {total} bytes runs past the end of the file ({avail} bytes left)"
            ));
        }
        let mut buf = vec![0u8; total];
        self.log
            .read_exact_at(&mut buf, pos)
            .map_err(|e| format!("read failed: {e}"))?;
        batch::validate(&buf).map_err(|e| e.to_string())?;
        Ok(Some(buf))
    }

    /// Whether a valid batch starts right after the (claimed) batch at `pos`.
    /// Distinguishes damage in the middle of a file from a torn tail.
    fn valid_batch_follows(&self, pos: u64, limit: u64) -> bool {
        let mut head = [0u8; LOG_OVERHEAD];
        if self.log.read_exact_at(&mut head, pos).is_err() {
            return false;
        }
        let claimed = i32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
        if claimed <= 0 {
            return false;
        }
        let next = pos + LOG_OVERHEAD as u64 + claimed as u64;
        matches!(self.read_batch_at(next, limit), Ok(Some(_)))
    }

    /// Notes a batch stored at `pos`; returns the index entry it adds (to
    /// be written to the index file), if it adds one.
    fn note_batch(&mut self, pos: u64, header: &BatchHeader) -> Option<[u8; 8]> {
        let mut added = None;
        if self.bytes_since_index >= self.index_interval {
            let rel = (header.base_offset - self.base_offset) as u32;
            self.index.push((rel, pos as u32));
            let mut entry = [0u8; 8];
            entry[..4].copy_from_slice(&rel.to_be_bytes());
            entry[4..].copy_from_slice(&(pos as u32).to_be_bytes());
            added = Some(entry);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.total_len() as u64;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        added
    }

    fn write_index(&mut self, entries: &[[u8; 8]]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.index_file
            .write_all(entries.as_flattened())
            .map_err(StorageError::io("append index", &self.index_path))
    }

    /// Appends already-validated batches (offsets assigned) at the end.
    pub fn append(&mut self, buf: &[u8], headers: &[BatchHeader]) -> Result<(), StorageError> {
        self.log
            .write_all_at(buf, self.size)
            .map_err(StorageError::io("append to segment", &self.log_path))?;
        let mut pos = self.size;
        let mut entries = Vec::new();
        for h in headers {
            entries.extend(self.note_batch(pos, h));
            pos += h.total_len() as u64;
            self.next_offset = h.last_offset() + 1;
        }
        self.write_index(&entries)?;
        self.size = pos;
        Ok(())
    }

    /// Byte position of the first batch whose last offset is >= `offset`,
    /// or `self.size` when there is none.
    pub fn position_of(&self, offset: i64) -> Result<u64, StorageError> {
        let rel = (offset - self.base_offset).max(0) as u32;
        let start = match self.index.partition_point(|&(r, _)| r <= rel) {
            0 => 0,
            i => self.index[i - 1].1 as u64,
        };
        let mut pos = start;
        let mut head = [0u8; HEADER_LEN];
        while pos < self.size {
            self.log
                .read_exact_at(&mut head, pos)
                .map_err(StorageError::io("read segment", &self.log_path))?;
            let h = BatchHeader::parse(&head).map_err(|e| StorageError::Corrupt {
                path: self.log_path.clone(),
                position: pos,
                reason: e.to_string(),
            })?;
            if h.last_offset() >= offset {
                return Ok(pos);
            }
            pos += h.total_len() as u64;
        }
        Ok(self.size)
    }

    /// Reads whole batches from `pos`: as many as fit in `max_bytes`, but at
    /// least one, stopping before any batch whose last offset is >= `below`.
    pub fn read_from(
        &self,
        pos: u64,
        max_bytes: usize,
        below: i64,
    ) -> Result<Vec<u8>, StorageError> {
        let want = (self.size - pos).min(max_bytes.max(HEADER_LEN) as u64) as usize;
        let mut buf = vec![0u8; want];
        self.log
            .read_exact_at(&mut buf, pos)
            .map_err(StorageError::io("read segment", &self.log_path))?;
        let mut cut = 0usize;
        loop {
            let rest = &buf[cut..];
            let Ok(h) = BatchHeader::parse(rest) else {
                break;
            };
            if h.last_offset() >= below {
                break;
            }
            let total = h.total_len();
            if total > rest.len() {
                if cut == 0 {
                    // The first batch is larger than max_bytes: return it whole.
                    let mut whole = vec![0u8; total];
                    self.log
                        .read_exact_at(&mut whole, pos)
                        .map_err(StorageError::io("read segment", &self.log_path))?;
                    return Ok(whole);
                }
                break;
            }
            cut += total;
        }
        buf.truncate(cut);
        Ok(buf)
    }

    /// Truncates the segment to byte `pos` (a batch boundary) whose first
    /// offset is `next_offset`, and rebuilds the index below it.
    pub fn truncate(&mut self, pos: u64, next_offset: i64) -> Result<(), StorageError> {
        self.log
            .set_len(pos)
            .map_err(StorageError::io("truncate segment", &self.log_path))?;
        self.size = pos;
        self.next_offset = next_offset;
        self.index.retain(|&(_, p)| (p as u64) < pos);
        self.index_file
            .set_len(self.index.len() as u64 * 8)
            .map_err(StorageError::io("truncate index", &self.index_path))?;
        use std::io::Seek;
        self.index_file
            .seek(std::io::SeekFrom::End(0))
            .map_err(StorageError::io("seek index", &self.index_path))?;
        self.bytes_since_index = if self.index.is_empty() { u64::MAX } else { 0 };
        Ok(())
    }

    /// fsyncs the segment's data.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.log
            .sync_data()
            .map_err(StorageError::io("fsync segment", &self.log_path))
    }

    /// Path of the `.log` file.
    pub fn path(&self) -> &Path {
        &self.log_path
    }

    /// Deletes both files of the segment.
    pub fn delete(self) -> Result<(), StorageError> {
        std::fs::remove_file(&self.log_path)
            .map_err(StorageError::io("delete segment", &self.log_path))?;
        let _ = std::fs::remove_file(&self.index_path);
        Ok(())
    }
}
