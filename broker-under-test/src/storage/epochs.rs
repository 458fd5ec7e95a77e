//! The leader-epoch cache of one partition replica: for each leader epoch,
//! the first offset written in it (Kafka's `leader-epoch-checkpoint`).
//!
//! Input: new epochs (a leader taking over at its log end, or a follower
//! copying a batch of a newer epoch) and truncations. Output: the end
//! offset of an epoch (OffsetForLeaderEpoch), which followers use to find
//! where their log diverges from the leader's (KIP-101, KIP-279). Every
//! change is written with write, fsync, rename before it is used.

use std::path::{Path, PathBuf};

use super::log::write_atomically;
use super::StorageError;

const FILE: &str = "leader-epoch-checkpoint";

/// (epoch, start offset), epochs and offsets rising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochCache {
    dir: PathBuf,
    entries: Vec<(i32, i64)>,
}

impl EpochCache {
    /// Loads the cache, keeping only epochs that start at or below `log_end`.
    pub fn open(dir: &Path, log_end: i64) -> Result<EpochCache, StorageError> {
        let path = dir.join(FILE);
        let mut entries = Vec::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let parsed = line
                        .split_once(' ')
                        .and_then(|(e, o)| Some((e.parse().ok()?, o.parse().ok()?)));
                    let Some(entry) = parsed else {
                        return Err(StorageError::Corrupt {
                            path,
                            position: n as u64,
                            reason: format!("line {}: {line:?} is not \"epoch offset\"", n + 1),
                        });
                    };
                    entries.push(entry);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError::Io {
                    verb: "read",
                    path,
                    source,
                })
            }
        }
        let mut cache = EpochCache {
            dir: dir.to_path_buf(),
            entries,
        };
        if cache.entries.iter().any(|&(_, o)| o > log_end) {
            cache.entries.retain(|&(_, o)| o <= log_end);
            cache.save()?;
        }
        Ok(cache)
    }

    fn save(&self) -> Result<(), StorageError> {
        let text: String = self
            .entries
            .iter()
            .map(|(e, o)| format!("{e} {o}\n"))
            .collect();
        write_atomically(&self.dir, FILE, text.as_bytes())
    }

    /// The newest epoch, if any.
    pub fn latest(&self) -> Option<i32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// Records that `epoch` starts at `offset` (ignored unless newer).
    pub fn assign(&mut self, epoch: i32, offset: i64) -> Result<(), StorageError> {
        if self.latest().is_some_and(|l| epoch <= l) {
            return Ok(());
        }
        // An epoch that started at the same offset wrote nothing: drop it.
        self.entries.retain(|&(_, o)| o < offset);
        self.entries.push((epoch, offset));
        self.save()
    }

    /// Forgets epochs starting at or after `offset` (the log was cut there).
    pub fn truncate_from(&mut self, offset: i64) -> Result<(), StorageError> {
        let before = self.entries.len();
        self.entries.retain(|&(_, o)| o < offset);
        if self.entries.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// OffsetForLeaderEpoch: the largest epoch <= `epoch` this replica knows
    /// and the offset where it ended (the start of the next epoch, or
    /// `log_end` for the latest). (-1, -1) when there is none.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        let Some(i) = self.entries.iter().rposition(|&(e, _)| e <= epoch) else {
            return (-1, -1);
        };
        let end = self.entries.get(i + 1).map_or(log_end, |&(_, o)| o);
        (self.entries[i].0, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_truncation_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EpochCache::open(dir.path(), 0).unwrap();
        assert_eq!(c.end_offset_for(5, 0), (-1, -1));
        c.assign(1, 0).unwrap();
        c.assign(3, 10).unwrap();
        c.assign(2, 12).unwrap(); // older: ignored
        c.assign(4, 15).unwrap();
        assert_eq!(c.end_offset_for(1, 20), (1, 10));
        assert_eq!(c.end_offset_for(2, 20), (1, 10));
        assert_eq!(c.end_offset_for(3, 20), (3, 15));
        assert_eq!(c.end_offset_for(9, 20), (4, 20));
        assert_eq!(c.end_offset_for(0, 20), (-1, -1));
        c.truncate_from(12).unwrap();
        assert_eq!(c.end_offset_for(9, 12), (3, 12));
        // Survives reopening; entries past the log end are dropped.
        let c2 = EpochCache::open(dir.path(), 12).unwrap();
        assert_eq!(c2, c);
        let c3 = EpochCache::open(dir.path(), 5).unwrap();
        assert_eq!(c3.end_offset_for(9, 5), (1, 5));
        // An epoch that wrote nothing is replaced by the next one.
        let mut c4 = EpochCache::open(dir.path(), 5).unwrap();
        c4.assign(6, 5).unwrap();
        c4.assign(7, 5).unwrap();
        assert_eq!(c4.end_offset_for(6, 5), (1, 5));
        std::fs::write(dir.path().join(FILE), "1 0\nbad\n").unwrap();
        let err = EpochCache::open(dir.path(), 5).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
