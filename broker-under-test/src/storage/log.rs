//! A partition's log: an ordered set of segments in one directory.
//!
//! Input: validated batches to append (offsets assigned here), offsets to
//! read from or truncate to. Output: batch bytes and offsets.
//!
//! Durability model, written where it is implemented:
//! - `append` returns once the bytes are written to the file (page cache).
//!   A process crash (SIGKILL) keeps them; a power failure may not.
//! - `sync` makes everything appended so far durable (fdatasync of the
//!   active segment). Rolled segments are fsynced at roll time and the
//!   directory is fsynced when a segment file is created or deleted.
//! - `open` recovers: every batch is CRC-checked; bytes after the last valid
//!   batch of the newest segment that are not followed by a valid batch are a
//!   torn write and are truncated. A damaged batch that is followed by valid
//!   data (or one in an older segment) is corruption: the log keeps serving
//!   below it and refuses writes, rather than serve or overwrite garbage.
//!   A follower, whose leader holds the data, can `set_aside_damage`: the
//!   damaged bytes move to `.damaged` files and the log takes writes again.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::batch::BatchHeader;
use super::error::StorageError;
use super::producers::{Check, ProducerStates};
use super::segment::{ScanEnd, Segment};
use crate::bugs::{self, Bug};

/// Tunables of one log.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Roll to a new segment once the active one reaches this many bytes.
    pub segment_bytes: u64,
    /// Bytes between sparse index entries.
    pub index_interval: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            index_interval: 4096,
        }
    }
}

/// What recovery did on open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub log_end: i64,
    /// Bytes dropped from a torn tail.
    pub truncated_bytes: u64,
    /// Damage found in the middle of the log (file, position, reason).
    pub corruption: Option<String>,
}

/// A batch append's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
    /// A retry of an idempotent batch already stored: nothing was written.
    pub duplicate: bool,
}

/// The log of one partition.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    /// Set when recovery found damage: the log serves below it and refuses writes.
    offline: Option<String>,
    /// Idempotent producers' last batches, derived from the log.
    producers: ProducerStates,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir` and recovers it.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Self, Recovery), StorageError> {
        std::fs::create_dir_all(dir).map_err(StorageError::io("create partition dir", dir))?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(StorageError::io("list partition dir", dir))? {
            let entry = entry.map_err(StorageError::io("list partition dir", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments: BTreeMap::new(),
            offline: None,
            producers: ProducerStates::default(),
        };
        let mut recovery = Recovery::default();
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            if log.offline.is_some() {
                break;
            }
            let producers = &mut log.producers;
            let (mut seg, end) = Segment::open(dir, base, config.index_interval, &mut |h| {
                producers.record(h)
            })?;
            let newest = i + 1 == count;
            match end {
                ScanEnd::Clean => {}
                ScanEnd::TornTail {
                    position, bytes, ..
                } if newest => {
                    let position = if bugs::on(Bug::TornTailDropsSegment) {
                        0
                    } else {
                        position
                    };
                    seg.truncate(position, seg.next_offset)?;
                    seg.sync()?;
                    recovery.truncated_bytes += bytes;
                }
                ScanEnd::TornTail {
                    position, reason, ..
                }
                | ScanEnd::Corrupt { position, reason } => {
                    let what = format!("{} at byte {position}: {reason}", seg.path().display());
                    log.offline = Some(what);
                }
            }
            if let Some((_, prev)) = log.segments.iter().next_back() {
                if seg.base_offset < prev.next_offset && log.offline.is_none() {
                    log.offline = Some(format!(
                        "{} starts at offset {} inside the previous segment (ends at {})",
                        seg.path().display(),
                        seg.base_offset,
                        prev.next_offset
                    ));
                }
            }
            log.segments.insert(base, seg);
        }
        if log.segments.is_empty() {
            let seg = Segment::create(dir, 0, config.index_interval)?;
            log.segments.insert(0, seg);
            sync_dir(dir)?;
        }
        recovery.segments = log.segments.len();
        recovery.log_end = log.log_end();
        recovery.corruption = log.offline.clone();
        Ok((log, recovery))
    }

    /// One past the last offset in the log.
    pub fn log_end(&self) -> i64 {
        self.active().next_offset
    }

    /// First offset still in the log.
    pub fn log_start(&self) -> i64 {
        *self
            .segments
            .keys()
            .next()
            .expect("a log always has a segment")
    }

    /// Why the log refuses writes, if it does.
    pub fn offline(&self) -> Option<&str> {
        self.offline.as_deref()
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    /// Appends batches as a leader: assigns consecutive offsets from the log
    /// end and stamps `leader_epoch`. `buf` holds validated batches whose
    /// headers are `headers` (in order); it is rewritten in place.
    pub fn append(
        &mut self,
        buf: &mut [u8],
        headers: &mut [BatchHeader],
        leader_epoch: i32,
    ) -> Result<Appended, StorageError> {
        // Idempotent producers: a retried batch gets its first answer again;
        // a gap or an old epoch is refused (one batch per request is what
        // clients send; several must all be new).
        for h in headers.iter() {
            match self.producers.check(h) {
                Check::Append => {}
                Check::Duplicate {
                    base_offset,
                    last_offset,
                } if headers.len() == 1 => {
                    tracing::info!(
                        dir = %self.dir.display(),
                        producer = h.producer_id,
                        sequence = h.base_sequence,
                        "idempotent retry: already stored at offsets {base_offset}..={last_offset}, not appended again"
                    );
                    return Ok(Appended {
                        base_offset,
                        last_offset,
                        duplicate: true,
                    });
                }
                Check::Duplicate { .. } => {
                    return Err(StorageError::OutOfOrderSequence {
                        producer_id: h.producer_id,
                        expected: -1,
                        got: h.base_sequence,
                    });
                }
                Check::OutOfOrder { expected, got } => {
                    return Err(StorageError::OutOfOrderSequence {
                        producer_id: h.producer_id,
                        expected,
                        got,
                    });
                }
                Check::Fenced { current, got } => {
                    return Err(StorageError::FencedEpoch {
                        producer_id: h.producer_id,
                        current,
                        got,
                    });
                }
            }
        }
        let base = self.log_end();
        let mut next = base;
        let mut pos = 0usize;
        for h in headers.iter_mut() {
            let batch = &mut buf[pos..pos + h.total_len()];
            super::batch::set_base_offset(batch, next);
            super::batch::set_leader_epoch(batch, leader_epoch);
            h.base_offset = next;
            h.leader_epoch = leader_epoch;
            next = h.last_offset() + 1;
            pos += h.total_len();
        }
        self.append_assigned(buf, headers)?;
        Ok(Appended {
            base_offset: base,
            last_offset: next - 1,
            duplicate: false,
        })
    }

    /// Appends batches that already carry their offsets (a follower copying
    /// its leader). The first batch must start at the log end.
    pub fn append_assigned(
        &mut self,
        buf: &[u8],
        headers: &[BatchHeader],
    ) -> Result<(), StorageError> {
        if let Some(reason) = &self.offline {
            return Err(StorageError::Offline {
                offset: self.log_end(),
                reason: reason.clone(),
            });
        }
        let Some(first) = headers.first() else {
            return Ok(());
        };
        if first.base_offset != self.log_end() {
            return Err(StorageError::OutOfRange {
                offset: first.base_offset,
                start: self.log_end(),
                end: self.log_end(),
            });
        }
        let active = self.active();
        if active.size > 0 && active.size + buf.len() as u64 > self.config.segment_bytes {
            self.roll()?;
        }
        let dir = self.dir.clone();
        let active = self.segments.values_mut().next_back().expect("a segment");
        let result = active.append(buf, headers);
        if result.is_ok() {
            for h in headers {
                self.producers.record(h);
            }
        }
        if let Err(e) = &result {
            // A failed write may have left part of the bytes: cut back to the
            // last known batch boundary so the next append starts clean.
            let (size, next) = (active.size, active.next_offset);
            let _ = active.truncate(size, next);
            tracing::error!(dir = %dir.display(), "append failed ({e}); truncated back to offset {next}");
        }
        result
    }

    /// Starts a new segment at the log end; the old one is fsynced first so
    /// only the active segment can hold unsynced data.
    fn roll(&mut self) -> Result<(), StorageError> {
        if !bugs::on(Bug::RollWithoutFsync) {
            self.active().sync()?;
        }
        let base = self.log_end();
        let seg = Segment::create(&self.dir, base, self.config.index_interval)?;
        self.segments.insert(base, seg);
        sync_dir(&self.dir)
    }

    /// Reads whole batches starting at the batch that contains `offset`,
    /// up to `max_bytes` (at least one batch), only batches entirely below
    /// `below` (the high watermark for consumers). Empty when there is none.
    pub fn read(&self, offset: i64, max_bytes: usize, below: i64) -> Result<Vec<u8>, StorageError> {
        let (start, end) = (self.log_start(), self.log_end());
        if offset < start || offset > end {
            return Err(StorageError::OutOfRange { offset, start, end });
        }
        if offset >= below.min(end) {
            return Ok(Vec::new());
        }
        let first = self.segment_base_for(offset);
        let mut out = Vec::new();
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            let pos = seg.position_of(offset)?;
            if pos >= seg.size {
                continue;
            }
            let budget = max_bytes.saturating_sub(out.len());
            if !out.is_empty() && budget == 0 {
                break;
            }
            let bytes = seg.read_from(pos, budget, below)?;
            if bytes.is_empty() || (!out.is_empty() && bytes.len() > budget) {
                break;
            }
            out.extend_from_slice(&bytes);
            if seg.size > pos + bytes.len() as u64 {
                break; // stopped inside this segment: budget or `below`
            }
        }
        Ok(out)
    }

    fn segment_base_for(&self, offset: i64) -> i64 {
        self.segments
            .range(..=offset)
            .next_back()
            .map_or_else(|| self.log_start(), |(&b, _)| b)
    }

    /// Removes every batch whose last offset is >= `offset`. The log end
    /// becomes the base of the first removed batch (batches are atomic), so
    /// it can be below `offset`. Returns the new log end.
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64, StorageError> {
        if offset >= self.log_end() {
            return Ok(self.log_end());
        }
        // Producer state may describe removed batches: callers reopen the
        // log (which rebuilds it) before serving idempotent producers.
        self.producers = ProducerStates::default();
        let mut removed_any = false;
        while self.segments.len() > 1 && self.active().base_offset >= offset {
            let (_, seg) = self.segments.pop_last().expect("more than one segment");
            seg.delete()?;
            removed_any = true;
        }
        if removed_any {
            sync_dir(&self.dir)?;
        }
        let seg = self.segments.values_mut().next_back().expect("a segment");
        let pos = seg.position_of(offset)?;
        if pos < seg.size {
            let head = seg.read_from(pos, 1, i64::MAX)?;
            let new_end = BatchHeader::parse(&head)
                .map_err(|e| StorageError::Corrupt {
                    path: seg.path().to_path_buf(),
                    position: pos,
                    reason: e.to_string(),
                })?
                .base_offset;
            seg.truncate(pos, new_end)?;
        }
        Ok(self.log_end())
    }

    /// A follower's way out of corruption: moves the damaged bytes aside
    /// (the damaged segment's bytes from its first bad batch on go to
    /// `<segment>.log.damaged`, later segments are renamed to
    /// `<segment>.log.damaged`), cuts the log at its last valid batch and
    /// takes writes again, so the follower copies the rest from its leader.
    /// Nothing is deleted: the damage stays on disk for inspection. Returns
    /// what the damage was, or None when the log was not offline.
    pub fn set_aside_damage(&mut self) -> Result<Option<String>, StorageError> {
        let Some(reason) = self.offline.clone() else {
            return Ok(None);
        };
        // A segment that starts inside the previous one goes aside whole.
        let overlaps = {
            let mut it = self.segments.values().rev();
            match (it.next(), it.next()) {
                (Some(last), Some(prev)) => last.base_offset < prev.next_offset,
                _ => false,
            }
        };
        if overlaps {
            let (_, seg) = self.segments.pop_last().expect("two segments");
            set_aside(seg.path())?;
            let _ = std::fs::remove_file(seg.path().with_extension("index"));
        }
        let active_base = self.active().base_offset;
        for entry in std::fs::read_dir(&self.dir)
            .map_err(StorageError::io("list partition dir", &self.dir))?
        {
            let path = entry
                .map_err(StorageError::io("list partition dir", &self.dir))?
                .path();
            let base = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|b| b.parse::<i64>().ok());
            if base.is_some_and(|b| b > active_base) {
                set_aside(&path)?;
                let _ = std::fs::remove_file(path.with_extension("index"));
            }
        }
        let seg = self.segments.values_mut().next_back().expect("a segment");
        let len = seg
            .log
            .metadata()
            .map_err(StorageError::io("stat segment", seg.path()))?
            .len();
        if len > seg.size {
            let mut tail = vec![0u8; (len - seg.size) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&*seg.log, &mut tail, seg.size)
                .map_err(StorageError::io("read damaged bytes", seg.path()))?;
            let aside = damaged_name(seg.path());
            std::fs::write(&aside, &tail)
                .and_then(|_| File::open(&aside)?.sync_all())
                .map_err(StorageError::io("write damaged bytes", &aside))?;
            let (size, next) = (seg.size, seg.next_offset);
            seg.truncate(size, next)?;
            seg.sync()?;
        }
        sync_dir(&self.dir)?;
        self.offline = None;
        Ok(Some(reason))
    }

    /// fsyncs the active segment (older ones were synced when they rolled).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.active().sync()
    }

    /// A handle to fsync the active segment outside the log's lock, with the
    /// log end it covers once the fsync returns.
    pub fn sync_handle(&self) -> (Arc<File>, i64, PathBuf) {
        let a = self.active();
        (a.log.clone(), a.next_offset, a.path().to_path_buf())
    }

    /// First offset whose batch has a max timestamp >= `ts`, if any.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<i64>, StorageError> {
        for seg in self.segments.values() {
            if seg.max_timestamp < ts {
                continue;
            }
            let mut offset = seg.base_offset;
            while offset < seg.next_offset {
                let pos = seg.position_of(offset)?;
                let bytes = seg.read_from(pos, 1, i64::MAX)?;
                let h = BatchHeader::parse(&bytes).map_err(|e| StorageError::Corrupt {
                    path: seg.path().to_path_buf(),
                    position: pos,
                    reason: e.to_string(),
                })?;
                if h.max_timestamp >= ts {
                    return Ok(Some(h.base_offset.max(offset)));
                }
                offset = h.last_offset() + 1;
            }
        }
        Ok(None)
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// fsyncs a directory so that file creations and deletions in it are durable.
/// `<file>.damaged` (with a number when one exists already).
fn damaged_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".damaged");
    let mut candidate = PathBuf::from(&name);
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{}.{n}", PathBuf::from(&name).display()));
    }
    candidate
}

/// Renames a whole damaged file to `<file>.damaged`.
fn set_aside(path: &Path) -> Result<(), StorageError> {
    std::fs::rename(path, damaged_name(path)).map_err(StorageError::io("set aside segment", path))
}

pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync directory", dir))
}

/// Writes `name` in `dir` so that a crash leaves either the old or the new
/// contents: write a temporary file, fsync it, rename, fsync the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(StorageError::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(StorageError::io("rename", &path))?;
    sync_dir(dir)
}
