//! One partition replica: its log, its flush task and the offsets clients
//! wait on.
//!
//! Input: produce batches (validated), fetch offsets. Output: assigned
//! offsets, batch bytes, and a `Progress` watch (log end, high watermark,
//! durable end) that produce requests wait on for durability and fetches
//! for new data.
//!
//! Group commit: the flush task fsyncs the active segment whenever the log
//! end is past the durable end. Batches appended while an fsync runs are
//! covered by the next one, so one fsync serves every producer that arrived
//! in the meantime. With `messages:N` / `ms:N` appends are acknowledged at
//! once and the task fsyncs when N messages are unsynced / every N ms.
//!
//! Replication will move the high watermark from "log end" to "minimum log
//! end over the in-sync replicas"; produce and fetch already wait on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::FlushPolicy;
use crate::storage::batch::BatchHeader;
use crate::storage::log::Appended;
use crate::storage::{LogConfig, PartitionLog, Recovery, StorageError};

/// Offsets of a partition that waiters care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub log_end: i64,
    /// Consumers see offsets below this.
    pub high_watermark: i64,
    /// Everything below this is fsynced.
    pub durable: i64,
    /// Set once an fsync failed: nothing after `durable` can be promised.
    pub failed: Option<String>,
}

/// A partition of a topic, led by this broker.
#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub index: i32,
    log: Mutex<PartitionLog>,
    progress: watch::Sender<Progress>,
    flush_needed: Notify,
    unflushed_messages: AtomicU64,
    policy: FlushPolicy,
    /// Woken on every append, shared by all partitions of the broker.
    appended: Arc<watch::Sender<u64>>,
    pub leader_epoch: i32,
}

impl Partition {
    /// Opens the partition's log (recovering it) and starts its flush task.
    pub fn open(
        topic: &str,
        index: i32,
        dir: &std::path::Path,
        log_config: LogConfig,
        policy: FlushPolicy,
        appended: Arc<watch::Sender<u64>>,
    ) -> Result<(Arc<Self>, Recovery), StorageError> {
        let (log, recovery) = PartitionLog::open(dir, log_config)?;
        let end = log.log_end();
        let (progress, _) = watch::channel(Progress {
            log_end: end,
            high_watermark: end,
            durable: end,
            failed: None,
        });
        let partition = Arc::new(Partition {
            topic: topic.to_string(),
            index,
            log: Mutex::new(log),
            progress,
            flush_needed: Notify::new(),
            unflushed_messages: AtomicU64::new(0),
            policy,
            appended,
            leader_epoch: 0,
        });
        tokio::spawn(flush_task(Arc::downgrade(&partition)));
        Ok((partition, recovery))
    }

    fn log(&self) -> MutexGuard<'_, PartitionLog> {
        // A panic while holding the lock leaves the log as it was after its
        // last completed call; keep serving rather than poison every request.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current offsets.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A receiver that sees every progress change.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Appends validated batches as leader. The bytes are in the page cache
    /// when this returns; call `wait_durable` to wait for the fsync.
    pub fn append(
        &self,
        buf: &mut [u8],
        headers: &mut [BatchHeader],
    ) -> Result<Appended, StorageError> {
        let messages: u64 = headers.iter().map(|h| h.offset_count() as u64).sum();
        let appended = {
            let mut log = self.log();
            let appended = log.append(buf, headers, self.leader_epoch)?;
            let end = log.log_end();
            self.progress.send_modify(|p| {
                p.log_end = end;
                p.high_watermark = end;
            });
            appended
        };
        self.appended.send_modify(|v| *v = v.wrapping_add(1));
        let unflushed = self
            .unflushed_messages
            .fetch_add(messages, Ordering::Relaxed)
            + messages;
        match self.policy {
            FlushPolicy::Always => self.flush_needed.notify_one(),
            FlushPolicy::Messages(n) if unflushed >= n => self.flush_needed.notify_one(),
            _ => {}
        }
        Ok(appended)
    }

    /// Waits until every offset below `end` is fsynced.
    pub async fn wait_durable(&self, end: i64) -> Result<(), String> {
        let mut rx = self.progress.subscribe();
        let p = rx
            .wait_for(|p| p.durable >= end || p.failed.is_some())
            .await
            .map_err(|_| "partition closed".to_string())?;
        match &p.failed {
            Some(e) if p.durable < end => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Reads batches from `offset` below the high watermark.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<u8>, StorageError> {
        let hw = self.progress.borrow().high_watermark;
        self.log().read(offset, max_bytes, hw)
    }

    /// First and one-past-last offsets (log start, log end).
    pub fn bounds(&self) -> (i64, i64) {
        let log = self.log();
        (log.log_start(), log.log_end())
    }

    /// First offset with a timestamp >= `ts`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<i64>, StorageError> {
        self.log().offset_for_timestamp(ts)
    }

    /// Why the partition refuses writes, if it does.
    pub fn offline(&self) -> Option<String> {
        if let Some(e) = &self.progress.borrow().failed {
            return Some(e.clone());
        }
        self.log().offline().map(str::to_string)
    }

    /// fsyncs everything appended so far (used at shutdown).
    pub async fn flush(&self) -> Result<(), String> {
        let end = self.progress.borrow().log_end;
        self.flush_needed.notify_one();
        self.wait_durable(end).await
    }
}

/// Runs while the partition exists: fsyncs per the flush policy and
/// publishes the durable end. Holds only a weak reference between rounds,
/// so a dropped partition (a failed topic creation) ends the task.
async fn flush_task(partition: Weak<Partition>) {
    loop {
        let Some(p) = partition.upgrade() else { return };
        let tick = match p.policy {
            FlushPolicy::Interval(d) => d,
            _ => Duration::from_secs(1),
        };
        let flush_now = tokio::select! {
            _ = p.flush_needed.notified() => true,
            _ = tokio::time::sleep(tick) => matches!(p.policy, FlushPolicy::Interval(_)),
        };
        if !flush_now {
            continue;
        }
        let (file, end, path) = p.log().sync_handle();
        if end <= p.progress.borrow().durable {
            continue;
        }
        p.unflushed_messages.store(0, Ordering::Relaxed);
        match tokio::task::spawn_blocking(move || file.sync_data()).await {
            Ok(Ok(())) => p
                .progress
                .send_modify(|pr| pr.durable = pr.durable.max(end)),
            Ok(Err(e)) => {
                let msg = format!("fsync {}: {e}", path.display());
                tracing::error!(topic = %p.topic, partition = p.index, "{msg}; partition stops acknowledging");
                p.progress.send_modify(|pr| pr.failed = Some(msg));
                return;
            }
            Err(e) => {
                tracing::error!("flush task failed: {e}");
                return;
            }
        }
    }
}
