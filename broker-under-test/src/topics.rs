//! The topics this broker hosts, persisted in `<data-dir>/topics.json`.
//!
//! Input: create requests and lookups. Output: `Topic`s with their open
//! partitions. The file is rewritten with write, fsync, rename, fsync dir,
//! so a topic whose creation was answered survives a crash. Partition logs
//! live in `<data-dir>/<topic>-<index>/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
use crate::partition::Partition;
use crate::storage::log::write_atomically;
use crate::storage::StorageError;

/// Per-topic settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: i32,
    pub replication_factor: i16,
    pub min_insync_replicas: i32,
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<Partition>>,
}

/// Why a topic cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("topic {0:?} already exists")]
    Exists(String),
    #[error("invalid topic name {0:?}: use 1-249 characters of [a-zA-Z0-9._-], not . or ..")]
    InvalidName(String),
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    #[error("replication factor {0} is not possible on a single broker")]
    InvalidReplicationFactor(i16),
    #[error("invalid config {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Checks Kafka's topic naming rules.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The registry.
#[derive(Debug)]
pub struct Topics {
    dir: PathBuf,
    config: Config,
    appended: Arc<watch::Sender<u64>>,
    map: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes creations so the file is written in order.
    create_lock: std::sync::Mutex<()>,
}

const FILE: &str = "topics.json";

impl Topics {
    /// Loads every topic of the data dir, recovering each partition log.
    pub fn open(
        config: &Config,
        appended: Arc<watch::Sender<u64>>,
    ) -> Result<Topics, StorageError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(StorageError::io("create data dir", &dir))?;
        let path = dir.join(FILE);
        let saved: BTreeMap<String, TopicConfig> = if path.exists() {
            let text = std::fs::read(&path).map_err(StorageError::io("read topics", &path))?;
            serde_json::from_slice(&text).map_err(|e| StorageError::Corrupt {
                path: path.clone(),
                position: e.column() as u64,
                reason: e.to_string(),
            })?
        } else {
            BTreeMap::new()
        };
        let topics = Topics {
            dir,
            config: config.clone(),
            appended,
            map: RwLock::new(BTreeMap::new()),
            create_lock: std::sync::Mutex::new(()),
        };
        for (name, tc) in saved {
            let topic = topics.open_topic(&name, tc, true)?;
            topics.write_map().insert(name, Arc::new(topic));
        }
        Ok(topics)
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    fn open_topic(
        &self,
        name: &str,
        config: TopicConfig,
        existing: bool,
    ) -> Result<Topic, StorageError> {
        let mut partitions = Vec::new();
        for i in 0..config.partitions {
            let pdir = self.dir.join(format!("{name}-{i}"));
            let (p, rec) = Partition::open(
                name,
                i,
                &pdir,
                self.config.log,
                self.config.flush,
                self.appended.clone(),
            )?;
            if rec.truncated_bytes > 0 {
                tracing::warn!(
                    topic = name,
                    partition = i,
                    bytes = rec.truncated_bytes,
                    log_end = rec.log_end,
                    "recovery truncated a torn tail"
                );
            }
            if let Some(c) = &rec.corruption {
                tracing::error!(
                    topic = name,
                    partition = i,
                    log_end = rec.log_end,
                    "recovery found corruption: {c}; serving below it, refusing writes"
                );
            }
            if existing {
                tracing::info!(
                    topic = name,
                    partition = i,
                    segments = rec.segments,
                    log_end = rec.log_end,
                    "recovered partition"
                );
            }
            partitions.push(p);
        }
        Ok(Topic {
            name: name.to_string(),
            config,
            partitions,
        })
    }

    /// Looks a topic up.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every topic, by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Checks a creation request without creating anything.
    pub fn check(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<(), CreateError> {
        if !valid_name(name) {
            return Err(CreateError::InvalidName(name.to_string()));
        }
        if self.get(name).is_some() {
            return Err(CreateError::Exists(name.to_string()));
        }
        if !(1..=10_000).contains(&partitions) {
            return Err(CreateError::InvalidPartitions(partitions));
        }
        if replication_factor != 1 {
            return Err(CreateError::InvalidReplicationFactor(replication_factor));
        }
        Ok(())
    }

    /// Creates a topic durably. `partitions` -1 means the broker default.
    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        min_insync_replicas: i32,
    ) -> Result<Arc<Topic>, CreateError> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let partitions = if partitions == -1 {
            self.config.default_partitions
        } else {
            partitions
        };
        let replication_factor = if replication_factor == -1 {
            1
        } else {
            replication_factor
        };
        self.check(name, partitions, replication_factor)?;
        if min_insync_replicas < 1 || min_insync_replicas > i32::from(replication_factor) {
            return Err(CreateError::InvalidConfig(format!(
                "min.insync.replicas={min_insync_replicas} must be between 1 and the replication factor {replication_factor}"
            )));
        }
        let config = TopicConfig {
            partitions,
            replication_factor,
            min_insync_replicas,
        };
        // Directories of an unregistered topic are left from a creation that
        // crashed or failed before it was recorded: never reuse their data.
        self.remove_partition_dirs(name, partitions)?;
        let created = self.open_topic(name, config, false).and_then(|topic| {
            let mut all: BTreeMap<String, TopicConfig> = self
                .all()
                .iter()
                .map(|t| (t.name.clone(), t.config.clone()))
                .collect();
            all.insert(name.to_string(), topic.config.clone());
            self.persist(&all)?;
            Ok(Arc::new(topic))
        });
        let topic = match created {
            Ok(t) => t,
            Err(e) => {
                if let Err(cleanup) = self.remove_partition_dirs(name, partitions) {
                    tracing::error!(topic = name, "cleanup after failed creation: {cleanup}");
                }
                return Err(e.into());
            }
        };
        self.write_map().insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    fn remove_partition_dirs(&self, name: &str, partitions: i32) -> Result<(), StorageError> {
        for i in 0..partitions {
            let pdir = self.dir.join(format!("{name}-{i}"));
            if pdir.exists() {
                tracing::warn!(dir = %pdir.display(), "removing data of an unregistered topic");
                std::fs::remove_dir_all(&pdir)
                    .map_err(StorageError::io("remove stale partition dir", &pdir))?;
            }
        }
        Ok(())
    }

    fn persist(&self, all: &BTreeMap<String, TopicConfig>) -> Result<(), StorageError> {
        write_atomically(
            &self.dir,
            FILE,
            &serde_json::to_vec_pretty(all).expect("topics serialize"),
        )
    }
}
