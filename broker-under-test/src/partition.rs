//! One partition replica: its log, leader-epoch cache, flush task, its role
//! (leader, follower or neither) and the offsets clients wait on.
//!
//! Input: produce batches (as leader), fetched batches (as follower),
//! follower fetch positions (as leader), role changes from the replica
//! manager. Output: assigned offsets, batch bytes, and a `Progress` watch
//! (log end, high watermark, durable end, role) that produce requests wait
//! on for durability and replication, and fetches for new data.
//!
//! Group commit: the flush task fsyncs the active segment whenever the log
//! end is past the durable end. Batches appended while an fsync runs are
//! covered by the next one, so one fsync serves every producer that arrived
//! in the meantime. With `messages:N` / `ms:N` appends are acknowledged at
//! once and the task fsyncs when N messages are unsynced / every N ms.
//!
//! Replication (Kafka's): the leader tracks each follower's log end (the
//! offset it fetches from); the high watermark is the minimum log end over
//! the ISR and never moves back while this replica leads. A follower
//! counts as caught up when it fetched up to the leader's log end of its
//! previous fetch; one that has not been caught up for the replica lag is
//! dropped from the ISR, and one that reaches the high watermark is added
//! back (both through the controller).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::bugs::{self, Bug};
use crate::config::FlushPolicy;
use crate::storage::batch::BatchHeader;
use crate::storage::epochs::EpochCache;
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
    /// The leader epoch this replica is at, and whether it leads in it.
    pub leader_epoch: i32,
    pub is_leader: bool,
    /// Size of the ISR (as leader), for min.insync.replicas.
    pub isr_size: usize,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy)]
struct FollowerState {
    /// Offset it fetched from last (-1: not yet).
    log_end: i64,
    last_caught_up: Instant,
    last_fetch: Instant,
    /// The leader's log end at its last fetch.
    leader_end_at_last_fetch: i64,
}

impl FollowerState {
    /// A follower not heard from yet, counted as caught up from `now` (as
    /// Kafka does), so it is not dropped before it had a chance to fetch.
    fn new(now: Instant) -> Self {
        FollowerState {
            log_end: -1,
            last_caught_up: now,
            last_fetch: now,
            leader_end_at_last_fetch: -1,
        }
    }
}

/// The leader's view of its partition.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub min_insync_replicas: i32,
    followers: HashMap<i32, FollowerState>,
    /// An ISR change is in flight to the controller.
    pub isr_change_pending: bool,
}

/// This replica's role.
#[derive(Debug, Clone)]
pub enum Role {
    Leader(Leadership),
    /// Copies from `leader`; `truncated` once its log was cut to where it
    /// agrees with the leader's (OffsetForLeaderEpoch).
    Follower {
        leader: i32,
        epoch: i32,
        truncated: bool,
    },
    /// No leader, or not a replica any more.
    Offline {
        epoch: i32,
    },
}

/// An ISR change the leader wants the controller to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// A partition replica hosted by this broker.
#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub broker_id: i32,
    dir: PathBuf,
    log_config: LogConfig,
    log: Mutex<PartitionLog>,
    epochs: Mutex<EpochCache>,
    role: Mutex<Role>,
    progress: watch::Sender<Progress>,
    flush_needed: Notify,
    unflushed_messages: AtomicU64,
    policy: FlushPolicy,
    /// Woken on every append, shared by all partitions of the broker.
    appended: Arc<watch::Sender<u64>>,
}

impl Partition {
    /// Opens the partition's log (recovering it) and starts its flush task.
    /// It starts without a role: the replica manager gives it one.
    pub fn open(
        topic: &str,
        index: i32,
        broker_id: i32,
        dir: &std::path::Path,
        log_config: LogConfig,
        policy: FlushPolicy,
        appended: Arc<watch::Sender<u64>>,
    ) -> Result<(Arc<Self>, Recovery), StorageError> {
        let (log, recovery) = PartitionLog::open(dir, log_config)?;
        let end = log.log_end();
        let epochs = EpochCache::open(dir, end)?;
        let (progress, _) = watch::channel(Progress {
            log_end: end,
            high_watermark: end,
            durable: end,
            failed: None,
            leader_epoch: epochs.latest().unwrap_or(-1),
            is_leader: false,
            isr_size: 0,
        });
        let partition = Arc::new(Partition {
            topic: topic.to_string(),
            index,
            broker_id,
            dir: dir.to_path_buf(),
            log_config,
            log: Mutex::new(log),
            epochs: Mutex::new(epochs),
            role: Mutex::new(Role::Offline { epoch: -1 }),
            progress,
            flush_needed: Notify::new(),
            unflushed_messages: AtomicU64::new(0),
            policy,
            appended,
        });
        tokio::spawn(flush_task(Arc::downgrade(&partition)));
        Ok((partition, recovery))
    }

    fn log(&self) -> MutexGuard<'_, PartitionLog> {
        // A panic while holding the lock leaves the log as it was after its
        // last completed call; keep serving rather than poison every request.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn role_lock(&self) -> MutexGuard<'_, Role> {
        self.role.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn epochs(&self) -> MutexGuard<'_, EpochCache> {
        self.epochs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current offsets.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A receiver that sees every progress change.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role_lock().clone()
    }

    /// The leader epoch this replica is at.
    pub fn leader_epoch(&self) -> i32 {
        self.progress.borrow().leader_epoch
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.progress.borrow().is_leader
    }

    /// Takes leadership at `epoch` (or updates the ISR of the current one).
    pub fn become_leader(
        &self,
        epoch: i32,
        partition_epoch: i32,
        replicas: &[i32],
        isr: &[i32],
        min_insync_replicas: i32,
    ) -> Result<(), StorageError> {
        let mut role = self.role_lock();
        if let Role::Leader(l) = &mut *role {
            if l.epoch == epoch {
                if l.partition_epoch != partition_epoch {
                    l.partition_epoch = partition_epoch;
                    l.isr = isr.to_vec();
                    l.replicas = replicas.to_vec();
                    l.isr_change_pending = false;
                    let now = Instant::now();
                    for r in replicas.iter().filter(|&&r| r != self.broker_id) {
                        l.followers.entry(*r).or_insert(FollowerState::new(now));
                    }
                    drop(role);
                    self.update_high_watermark();
                }
                return Ok(());
            }
        }
        let end = self.log().log_end();
        self.epochs().assign(epoch, end)?;
        let now = Instant::now();
        let followers = replicas
            .iter()
            .filter(|&&r| r != self.broker_id)
            .map(|&r| (r, FollowerState::new(now)))
            .collect();
        *role = Role::Leader(Leadership {
            epoch,
            partition_epoch,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            min_insync_replicas,
            followers,
            isr_change_pending: false,
        });
        drop(role);
        tracing::info!(topic = %self.topic, partition = self.index, epoch, ?isr, log_end = end, "leading");
        self.progress.send_modify(|p| {
            p.leader_epoch = epoch;
            p.is_leader = true;
            p.isr_size = isr.len();
        });
        self.update_high_watermark();
        Ok(())
    }

    /// Follows `leader` at `epoch` (-1: no leader, stay offline).
    pub fn become_follower(&self, leader: i32, epoch: i32) {
        let mut role = self.role_lock();
        match &*role {
            Role::Follower {
                leader: l,
                epoch: e,
                ..
            } if *l == leader && *e == epoch => return,
            Role::Offline { epoch: e } if leader < 0 && *e == epoch => return,
            _ => {}
        }
        *role = if leader < 0 {
            Role::Offline { epoch }
        } else {
            Role::Follower {
                leader,
                epoch,
                truncated: false,
            }
        };
        drop(role);
        tracing::info!(topic = %self.topic, partition = self.index, leader, epoch, "following");
        self.progress.send_modify(|p| {
            p.leader_epoch = epoch;
            p.is_leader = false;
            p.isr_size = 0;
        });
    }

    /// Appends validated batches as leader (None: this replica does not
    /// lead). The bytes are in the page cache when this returns; call
    /// `wait_durable` to wait for the fsync.
    pub fn append(
        &self,
        buf: &mut [u8],
        headers: &mut [BatchHeader],
    ) -> Result<Option<Appended>, StorageError> {
        let messages: u64 = headers.iter().map(|h| h.offset_count() as u64).sum();
        let appended = {
            // The role lock is held across the append so a role change
            // cannot interleave with it.
            let role = self.role_lock();
            let Role::Leader(l) = &*role else {
                return Ok(None);
            };
            let epoch = l.epoch;
            let mut log = self.log();
            let appended = log.append(buf, headers, epoch)?;
            let end = log.log_end();
            drop(log);
            drop(role);
            self.progress.send_modify(|p| p.log_end = end);
            self.update_high_watermark();
            appended
        };
        self.after_append(messages);
        Ok(Some(appended))
    }

    fn after_append(&self, messages: u64) {
        self.appended.send_modify(|v| *v = v.wrapping_add(1));
        let unflushed = self
            .unflushed_messages
            .fetch_add(messages, Ordering::Relaxed)
            + messages;
        match self.policy {
            FlushPolicy::Always if !bugs::on(Bug::AckBeforeFsync) => self.flush_needed.notify_one(),
            FlushPolicy::Messages(n) if unflushed >= n => self.flush_needed.notify_one(),
            _ => {}
        }
    }

    /// Appends batches copied from the leader (offsets and epochs kept).
    pub fn append_replicated(
        &self,
        buf: &[u8],
        headers: &[BatchHeader],
    ) -> Result<(), StorageError> {
        let messages: u64 = headers.iter().map(|h| h.offset_count() as u64).sum();
        {
            let mut epochs = self.epochs();
            for h in headers {
                epochs.assign(h.leader_epoch, h.base_offset)?;
            }
            let mut log = self.log();
            log.append_assigned(buf, headers)?;
            let end = log.log_end();
            self.progress.send_modify(|p| p.log_end = end);
        }
        self.after_append(messages);
        Ok(())
    }

    /// As follower: the leader's high watermark, capped at our log end.
    pub fn set_follower_high_watermark(&self, leader_hw: i64) {
        self.progress.send_modify(|p| {
            p.high_watermark = leader_hw.min(p.log_end).max(0);
        });
    }

    /// Cuts the log at `offset` (a follower diverging from its leader) and
    /// rebuilds the producer state from what remains. Returns the new end.
    pub fn truncate_to(&self, offset: i64) -> Result<i64, StorageError> {
        let mut epochs = self.epochs();
        let mut log = self.log();
        let before = log.log_end();
        let end = log.truncate_to(offset)?;
        if end < before {
            log.sync()?;
            *log = PartitionLog::open(&self.dir, self.log_config)?.0;
            tracing::warn!(topic = %self.topic, partition = self.index, from = before, to = end, "truncated log to match the leader");
        }
        epochs.truncate_from(end)?;
        drop(log);
        drop(epochs);
        self.progress.send_modify(|p| {
            p.log_end = end;
            p.high_watermark = p.high_watermark.min(end);
            p.durable = p.durable.min(end);
        });
        Ok(end)
    }

    /// Marks the follower role as truncated (if still at `epoch`).
    pub fn set_truncated(&self, epoch: i32) {
        if let Role::Follower {
            epoch: e,
            truncated,
            ..
        } = &mut *self.role_lock()
        {
            if *e == epoch {
                *truncated = true;
            }
        }
    }

    /// As follower: find the divergence from the leader again.
    /// A follower's way out of a corrupt log (see
    /// `PartitionLog::set_aside_damage`): the damage goes aside, the log is
    /// reopened below it, and the follower copies the rest from its leader.
    /// Returns what the damage was, if there was any.
    pub fn set_aside_damage(&self) -> Result<Option<String>, StorageError> {
        let mut epochs = self.epochs();
        let mut log = self.log();
        let Some(what) = log.set_aside_damage()? else {
            return Ok(None);
        };
        *log = PartitionLog::open(&self.dir, self.log_config)?.0;
        let end = log.log_end();
        epochs.truncate_from(end)?;
        drop(log);
        drop(epochs);
        self.progress.send_modify(|pr| {
            pr.log_end = end;
            pr.high_watermark = pr.high_watermark.min(end);
            pr.durable = pr.durable.min(end);
        });
        Ok(Some(what))
    }

    pub fn reset_truncation(&self) {
        if let Role::Follower { truncated, .. } = &mut *self.role_lock() {
            *truncated = false;
        }
    }

    /// OffsetForLeaderEpoch on this replica.
    pub fn end_offset_for(&self, epoch: i32) -> (i32, i64) {
        let end = self.log().log_end();
        self.epochs().end_offset_for(epoch, end)
    }

    /// The newest epoch in this replica's cache.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs().latest()
    }

    /// As leader: a follower fetched from `offset`. Returns an ISR
    /// expansion to propose, if the follower has caught up.
    pub fn follower_fetched(&self, follower: i32, offset: i64) -> Option<IsrChange> {
        let now = Instant::now();
        let hw = self.progress.borrow().high_watermark;
        let end = self.log().log_end();
        let change = {
            let mut role = self.role_lock();
            let Role::Leader(l) = &mut *role else {
                return None;
            };
            let f = l
                .followers
                .entry(follower)
                .or_insert(FollowerState::new(now));
            if offset >= end {
                f.last_caught_up = now;
            } else if offset >= f.leader_end_at_last_fetch && f.leader_end_at_last_fetch >= 0 {
                f.last_caught_up = f.last_caught_up.max(f.last_fetch);
            }
            f.log_end = offset;
            f.last_fetch = now;
            f.leader_end_at_last_fetch = end;
            let epoch_start = self.epochs().end_offset_for(l.epoch - 1, end).1.max(0);
            if !l.isr.contains(&follower)
                && !l.isr_change_pending
                && offset >= hw
                && offset >= epoch_start.min(end)
            {
                l.isr_change_pending = true;
                let mut isr = l.isr.clone();
                isr.push(follower);
                Some(IsrChange {
                    leader_epoch: l.epoch,
                    partition_epoch: l.partition_epoch,
                    isr,
                })
            } else {
                None
            }
        };
        self.update_high_watermark();
        change
    }

    /// As leader: followers in the ISR that have not caught up within
    /// `lag`; returns the shrunk ISR to propose.
    pub fn lagging_followers(&self, lag: Duration) -> Option<IsrChange> {
        let now = Instant::now();
        let mut role = self.role_lock();
        let Role::Leader(l) = &mut *role else {
            return None;
        };
        if l.isr_change_pending {
            return None;
        }
        let me = self.broker_id;
        let keep: Vec<i32> = l
            .isr
            .iter()
            .copied()
            .filter(|r| {
                *r == me
                    || l.followers
                        .get(r)
                        .is_some_and(|f| now.duration_since(f.last_caught_up) <= lag)
            })
            .collect();
        if keep.len() == l.isr.len() {
            return None;
        }
        l.isr_change_pending = true;
        Some(IsrChange {
            leader_epoch: l.epoch,
            partition_epoch: l.partition_epoch,
            isr: keep,
        })
    }

    /// An ISR proposal finished (accepted or not): allow the next one.
    pub fn isr_change_done(&self) {
        if let Role::Leader(l) = &mut *self.role_lock() {
            l.isr_change_pending = false;
        }
    }

    /// Recomputes the high watermark: the minimum log end over the ISR.
    fn update_high_watermark(&self) {
        let end = self.progress.borrow().log_end;
        let role = self.role_lock();
        let Role::Leader(l) = &*role else {
            return;
        };
        let me = self.broker_id;
        let mut hw = end;
        for r in l.isr.iter().filter(|&&r| r != me) {
            let f_end = l.followers.get(r).map_or(-1, |f| f.log_end);
            if !bugs::on(Bug::HwIgnoresIsr) {
                hw = hw.min(f_end);
            }
        }
        let isr_size = l.isr.len();
        drop(role);
        self.progress.send_if_modified(|p| {
            let new = hw.max(p.high_watermark).min(p.log_end);
            let changed = new != p.high_watermark || p.isr_size != isr_size;
            p.high_watermark = new;
            p.isr_size = isr_size;
            changed
        });
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

    /// Reads batches from `offset` below `below` (a consumer passes the
    /// high watermark, a follower the log end).
    pub fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        below: i64,
    ) -> Result<Vec<u8>, StorageError> {
        self.log().read(offset, max_bytes, below)
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

    /// fsyncs everything appended so far (shutdown; a follower before it
    /// fetches more with `--flush always`).
    pub async fn flush(&self) -> Result<(), String> {
        let end = self.progress.borrow().log_end;
        if self.progress.borrow().durable >= end {
            return Ok(());
        }
        self.flush_needed.notify_one();
        self.wait_durable(end).await
    }

    /// The flush policy.
    pub fn policy(&self) -> FlushPolicy {
        self.policy
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
            _ = tokio::time::sleep(tick) => {
                matches!(p.policy, FlushPolicy::Interval(_)) || bugs::on(Bug::AckBeforeFsync)
            }
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
