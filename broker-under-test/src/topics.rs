//! The partition replicas this broker hosts, and the checks a topic
//! creation must pass before it goes to the controller.
//!
//! Input: the controller's assignments (through the replica manager).
//! Output: open `Partition`s by (topic, index). Which topics exist, and
//! where their replicas live, is the controller's; this registry only holds
//! the local logs, in `<data-dir>/<topic>-<index>/`. A directory whose
//! topic the controller does not know is never opened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::config::Config;
use crate::partition::Partition;
use crate::storage::StorageError;

pub use crate::controller::state::TopicConfig;

/// Why a topic cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("topic {0:?} already exists")]
    Exists(String),
    #[error("invalid topic name {0:?}: use 1-249 characters of [a-zA-Z0-9._-], not . or ..")]
    InvalidName(String),
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    #[error("replication factor {factor} is not possible with {live} live brokers")]
    InvalidReplicationFactor { factor: i16, live: usize },
    #[error("invalid config {0}")]
    InvalidConfig(String),
    #[error("{0}")]
    Controller(String),
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

/// Checks a creation request (defaults already filled in).
pub fn check(name: &str, config: &TopicConfig, live_brokers: usize) -> Result<(), CreateError> {
    if !valid_name(name) {
        return Err(CreateError::InvalidName(name.to_string()));
    }
    if !(1..=10_000).contains(&config.partitions) {
        return Err(CreateError::InvalidPartitions(config.partitions));
    }
    let rf = config.replication_factor;
    if rf < 1 || rf as usize > live_brokers {
        return Err(CreateError::InvalidReplicationFactor {
            factor: rf,
            live: live_brokers,
        });
    }
    if config.min_insync_replicas < 1 || config.min_insync_replicas > i32::from(rf) {
        return Err(CreateError::InvalidConfig(format!(
            "min.insync.replicas={} must be between 1 and the replication factor {rf}",
            config.min_insync_replicas
        )));
    }
    Ok(())
}

/// The local replicas.
#[derive(Debug)]
pub struct Topics {
    dir: PathBuf,
    config: Config,
    appended: Arc<watch::Sender<u64>>,
    map: RwLock<BTreeMap<(String, i32), Arc<Partition>>>,
}

impl Topics {
    /// An empty registry over the data dir.
    pub fn new(config: &Config, appended: Arc<watch::Sender<u64>>) -> Result<Topics, StorageError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(StorageError::io("create data dir", &dir))?;
        Ok(Topics {
            dir,
            config: config.clone(),
            appended,
            map: RwLock::new(BTreeMap::new()),
        })
    }

    /// The local replica of a partition, if this broker hosts one.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<Partition>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Every local replica.
    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Opens (recovering) the local replica of a partition, once.
    pub fn open(&self, topic: &str, index: i32) -> Result<Arc<Partition>, StorageError> {
        if let Some(p) = self.get(topic, index) {
            return Ok(p);
        }
        let pdir = self.dir.join(format!("{topic}-{index}"));
        let existed = pdir.exists();
        let started = std::time::Instant::now();
        let (p, rec) = Partition::open(
            topic,
            index,
            self.config.id,
            &pdir,
            self.config.log,
            self.config.flush,
            self.appended.clone(),
        )?;
        if rec.truncated_bytes > 0 {
            tracing::warn!(
                topic,
                partition = index,
                bytes = rec.truncated_bytes,
                log_end = rec.log_end,
                "recovery truncated a torn tail"
            );
        }
        if let Some(c) = &rec.corruption {
            tracing::error!(
                topic,
                partition = index,
                log_end = rec.log_end,
                "recovery found corruption: {c}; serving below it, refusing writes"
            );
        }
        if existed {
            tracing::info!(
                topic,
                partition = index,
                segments = rec.segments,
                log_end = rec.log_end,
                ms = started.elapsed().as_millis() as u64,
                "recovered partition"
            );
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry((topic.to_string(), index)).or_insert(p).clone())
    }
}
