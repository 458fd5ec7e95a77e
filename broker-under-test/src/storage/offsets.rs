//! Committed consumer-group offsets, durable on a single node.
//!
//! Input: commits (group, topic, partition -> offset). Output: the latest
//! committed offset per key. Stored as an append-only file of records
//! `[len u32][crc32c u32][json]`; `commit` returns only after fsync, so an
//! acknowledged OffsetCommit survives a crash or power loss. On open, a torn
//! tail is truncated and the file is rewritten compactly when mostly stale.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StorageError;
use super::log::write_atomically;

const FILE: &str = "committed-offsets.log";

/// Key of a committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OffsetKey {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

/// A committed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    key: OffsetKey,
    value: Committed,
}

/// The store; one per broker.
#[derive(Debug)]
pub struct OffsetStore {
    path: PathBuf,
    file: File,
    map: HashMap<OffsetKey, Committed>,
    records: usize,
}

fn encode(rec: &Record, out: &mut Vec<u8>) {
    let payload = serde_json::to_vec(rec).expect("offset record serializes");
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
}

impl OffsetStore {
    /// Opens the store in `dir`, returning it and the bytes of torn tail dropped.
    pub fn open(dir: &Path) -> Result<(Self, u64), StorageError> {
        let path = dir.join(FILE);
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(StorageError::io("read offsets", &path))?;
        }
        let mut map = HashMap::new();
        let mut records = 0;
        let mut pos = 0;
        while pos + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4")) as usize;
            let crc = u32::from_be_bytes(bytes[pos + 4..pos + 8].try_into().expect("4"));
            let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32c::crc32c(payload) != crc {
                break;
            }
            let Ok(rec) = serde_json::from_slice::<Record>(payload) else {
                break;
            };
            map.insert(rec.key, rec.value);
            records += 1;
            pos += 8 + len;
        }
        let dropped = (bytes.len() - pos) as u64;
        let mut store = OffsetStore {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(StorageError::io("open offsets", &path))?,
            path,
            map,
            records,
        };
        if dropped > 0 || store.records > 2 * store.map.len() + 1024 {
            store.rewrite(dir)?;
        }
        Ok((store, dropped))
    }

    /// Rewrites the file with one record per key (write, fsync, rename).
    fn rewrite(&mut self, dir: &Path) -> Result<(), StorageError> {
        let mut out = Vec::new();
        for (key, value) in &self.map {
            encode(
                &Record {
                    key: key.clone(),
                    value: value.clone(),
                },
                &mut out,
            );
        }
        write_atomically(dir, FILE, &out)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(StorageError::io("open offsets", &self.path))?;
        self.records = self.map.len();
        Ok(())
    }

    /// Stores commits durably: returns after the fsync.
    pub fn commit(&mut self, entries: Vec<(OffsetKey, Committed)>) -> Result<(), StorageError> {
        let mut out = Vec::new();
        for (key, value) in &entries {
            encode(
                &Record {
                    key: key.clone(),
                    value: value.clone(),
                },
                &mut out,
            );
        }
        self.file
            .write_all(&out)
            .and_then(|_| self.file.sync_data())
            .map_err(StorageError::io("append offsets", &self.path))?;
        self.records += entries.len();
        self.map.extend(entries);
        Ok(())
    }

    /// The committed offset of one key.
    pub fn get(&self, key: &OffsetKey) -> Option<&Committed> {
        self.map.get(key)
    }

    /// Every committed offset of a group.
    pub fn group(&self, group: &str) -> Vec<(&OffsetKey, &Committed)> {
        let mut v: Vec<_> = self.map.iter().filter(|(k, _)| k.group == group).collect();
        v.sort_by(|a, b| (&a.0.topic, a.0.partition).cmp(&(&b.0.topic, b.0.partition)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> OffsetKey {
        OffsetKey {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
        }
    }
    fn at(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: -1,
            metadata: None,
        }
    }

    #[test]
    fn commits_survive_reopen_and_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = OffsetStore::open(dir.path()).unwrap();
            s.commit(vec![(key(0), at(5)), (key(1), at(7))]).unwrap();
            s.commit(vec![(key(0), at(9))]).unwrap();
        }
        let path = dir.path().join(FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(f);
        let (s, dropped) = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(dropped, 6);
        assert_eq!(s.get(&key(0)), Some(&at(9)));
        assert_eq!(s.get(&key(1)), Some(&at(7)));
        assert_eq!(s.group("g").len(), 2);
        assert!(s.group("other").is_empty());
    }
}
