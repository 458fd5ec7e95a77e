//! The controller's replicated state machine: brokers, topics, partition
//! leadership and ISR, committed group offsets.
//!
//! Input: `Command`s, in Raft log order. Output: the new `ClusterState` and
//! a `Reply` per command. Pure and deterministic (no clocks, no I/O), so
//! every voter that applies the same log holds the same state; liveness
//! (leases) is judged by the Raft leader, which turns an expired lease into
//! a `Fence` command.
//!
//! Elections follow Kafka: a partition's new leader is the first live
//! member of its ISR in replica order. A fenced broker leaves every ISR,
//! except that the last member stays (so the partition waits for it rather
//! than losing data); with `unclean` on, a live replica outside the ISR may
//! then be elected, with the loss that implies. Each leader change bumps the
//! leader epoch; every change bumps the partition epoch, which ISR updates
//! must match.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bugs::{self, Bug};
use crate::storage::offsets::Committed;

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub host: String,
    pub port: i32,
    /// Bumped by every registration (a new process incarnation).
    pub epoch: i64,
    /// Fenced brokers lead nothing and are in no ISR (but a last member).
    pub fenced: bool,
}

/// Per-topic settings, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: i32,
    pub replication_factor: i16,
    pub min_insync_replicas: i32,
    /// Elect a replica outside the ISR when no ISR member is alive.
    pub unclean_leader_election: bool,
}

/// Leadership of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    pub replicas: Vec<i32>,
    /// -1 when no replica can lead.
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// A topic as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicState {
    pub config: TopicConfig,
    pub partitions: Vec<PartitionState>,
}

/// Everything the controller holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicState>,
    /// group -> (topic, partition) -> committed offset. Stored in
    /// snapshots as lists of entries: JSON map keys must be strings.
    #[serde(with = "offsets_as_lists")]
    pub offsets: BTreeMap<String, BTreeMap<(String, i32), Committed>>,
    pub next_producer_id_block: i64,
}

/// Committed offsets keyed by (topic, partition) as JSON: per group, a
/// list of [[topic, partition], committed] entries.
mod offsets_as_lists {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::storage::offsets::Committed;

    type Offsets = BTreeMap<String, BTreeMap<(String, i32), Committed>>;
    /// One committed offset as stored.
    type Entry = ((String, i32), Committed);
    /// One group's entries, borrowed for writing.
    type Entries<'a> = Vec<(&'a (String, i32), &'a Committed)>;

    pub fn serialize<S: Serializer>(m: &Offsets, s: S) -> Result<S::Ok, S::Error> {
        let lists: BTreeMap<&String, Entries<'_>> =
            m.iter().map(|(g, o)| (g, o.iter().collect())).collect();
        lists.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Offsets, D::Error> {
        let lists: BTreeMap<String, Vec<Entry>> = BTreeMap::deserialize(d)?;
        Ok(lists
            .into_iter()
            .map(|(g, o)| (g, o.into_iter().collect()))
            .collect())
    }
}

/// A change to the cluster state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker process starts (or restarts): new epoch, unfenced. A known
    /// broker is fenced first, so a restarted replica must catch up again
    /// before it rejoins an ISR.
    Register {
        id: i32,
        host: String,
        port: i32,
    },
    /// A broker's lease expired (only if `epoch` is still current).
    Fence {
        id: i32,
        epoch: i64,
    },
    CreateTopic {
        name: String,
        config: TopicConfig,
    },
    /// A leader changes its partition's ISR (Kafka's AlterPartition).
    AlterIsr {
        topic: String,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    CommitOffsets {
        group: String,
        offsets: Vec<(String, i32, Committed)>,
    },
    /// Reserves a block of producer ids.
    AllocateProducerIds {
        count: i64,
    },
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    Registered { epoch: i64 },
    ProducerIds { first: i64 },
    Partition(PartitionState),
    Error(CommandError),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("unknown topic or partition {0}")]
    UnknownPartition(String),
    #[error("replication factor {factor} is larger than the {live} live brokers")]
    NotEnoughBrokers { factor: i16, live: usize },
    #[error("stale ISR change: {0}")]
    StaleIsr(String),
    #[error("invalid ISR change: {0}")]
    InvalidIsr(String),
}

impl ClusterState {
    /// Applies one command; `index` is its Raft log index (unique, rising).
    pub fn apply(&mut self, index: u64, cmd: Command) -> Reply {
        match cmd {
            Command::Register { id, host, port } => {
                if self.brokers.contains_key(&id) {
                    self.fence(id);
                }
                let epoch = index as i64;
                self.brokers.insert(
                    id,
                    BrokerInfo {
                        host,
                        port,
                        epoch,
                        fenced: false,
                    },
                );
                self.elect_all();
                Reply::Registered { epoch }
            }
            Command::Fence { id, epoch } => {
                if self
                    .brokers
                    .get(&id)
                    .is_some_and(|b| b.epoch == epoch && !b.fenced)
                {
                    self.fence(id);
                    self.elect_all();
                }
                Reply::Ok
            }
            Command::CreateTopic { name, config } => self.create_topic(name, config),
            Command::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_isr(
                &topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            ),
            Command::CommitOffsets { group, offsets } => {
                let g = self.offsets.entry(group).or_default();
                for (topic, partition, c) in offsets {
                    g.insert((topic, partition), c);
                }
                Reply::Ok
            }
            Command::AllocateProducerIds { count } => {
                let first = self.next_producer_id_block;
                self.next_producer_id_block += count.max(1);
                Reply::ProducerIds { first }
            }
        }
    }

    /// Brokers that may lead and be in an ISR, by id.
    pub fn live(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// A partition's state.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionState> {
        self.topics.get(topic).and_then(|t| {
            usize::try_from(partition)
                .ok()
                .and_then(|i| t.partitions.get(i))
        })
    }

    fn fence(&mut self, id: i32) {
        if let Some(b) = self.brokers.get_mut(&id) {
            b.fenced = true;
        }
        for t in self.topics.values_mut() {
            for p in &mut t.partitions {
                let mut changed = false;
                if p.isr.len() > 1 && p.isr.contains(&id) {
                    p.isr.retain(|&r| r != id);
                    changed = true;
                }
                if p.leader == id {
                    p.leader = -1;
                    p.leader_epoch += 1;
                    changed = true;
                }
                if changed {
                    p.partition_epoch += 1;
                }
            }
        }
    }

    /// Elects a leader for every partition that has none (or a fenced one).
    fn elect_all(&mut self) {
        let live: Vec<i32> = self
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(&id, _)| id)
            .collect();
        for t in self.topics.values_mut() {
            let unclean = t.config.unclean_leader_election || bugs::on(Bug::ElectOutsideIsr);
            for p in &mut t.partitions {
                if p.leader >= 0 && live.contains(&p.leader) {
                    continue;
                }
                let clean = p
                    .replicas
                    .iter()
                    .copied()
                    .find(|r| p.isr.contains(r) && live.contains(r));
                let chosen = match clean {
                    Some(r) => Some((r, None)),
                    None if unclean => p
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| live.contains(r))
                        .map(|r| (r, Some(vec![r]))),
                    None => None,
                };
                if let Some((leader, isr)) = chosen {
                    if p.leader >= 0 {
                        // The old leader was fenced without a Fence command
                        // (not expected, but keep epochs rising).
                        p.leader_epoch += 1;
                    }
                    p.leader = leader;
                    p.leader_epoch += 1;
                    p.partition_epoch += 1;
                    if let Some(isr) = isr {
                        tracing::warn!(leader, "unclean leader election: ISR was {:?}", p.isr);
                        p.isr = isr;
                    } else {
                        // Fenced members left already; keep the survivor set.
                        p.isr.retain(|r| live.contains(r) || *r == leader);
                    }
                }
            }
        }
    }

    fn create_topic(&mut self, name: String, config: TopicConfig) -> Reply {
        if self.topics.contains_key(&name) {
            return Reply::Error(CommandError::TopicExists(name));
        }
        let live: Vec<i32> = self
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(&id, _)| id)
            .collect();
        let rf = config.replication_factor.max(1) as usize;
        if rf > live.len() {
            return Reply::Error(CommandError::NotEnoughBrokers {
                factor: config.replication_factor,
                live: live.len(),
            });
        }
        // Spread leaders: partition i starts at live broker (i + offset).
        let offset = self.topics.len();
        let partitions = (0..config.partitions as usize)
            .map(|i| {
                let replicas: Vec<i32> = (0..rf)
                    .map(|j| live[(i + offset + j) % live.len()])
                    .collect();
                PartitionState {
                    leader: replicas[0],
                    leader_epoch: 0,
                    partition_epoch: 0,
                    isr: replicas.clone(),
                    replicas,
                }
            })
            .collect();
        self.topics.insert(name, TopicState { config, partitions });
        Reply::Ok
    }

    fn alter_isr(
        &mut self,
        topic: &str,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    ) -> Reply {
        let live: Vec<i32> = self
            .brokers
            .iter()
            .filter(|(_, b)| !b.fenced)
            .map(|(&id, _)| id)
            .collect();
        let Some(p) = self.topics.get_mut(topic).and_then(|t| {
            usize::try_from(partition)
                .ok()
                .and_then(|i| t.partitions.get_mut(i))
        }) else {
            return Reply::Error(CommandError::UnknownPartition(format!(
                "{topic}-{partition}"
            )));
        };
        if p.leader != leader || p.leader_epoch != leader_epoch {
            return Reply::Error(CommandError::StaleIsr(format!(
                "leader {leader} epoch {leader_epoch}, current leader {} epoch {}",
                p.leader, p.leader_epoch
            )));
        }
        if p.partition_epoch != partition_epoch {
            return Reply::Error(CommandError::StaleIsr(format!(
                "partition epoch {partition_epoch}, current {}",
                p.partition_epoch
            )));
        }
        if !isr.contains(&leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
            return Reply::Error(CommandError::InvalidIsr(format!(
                "{isr:?} must hold the leader and only replicas {:?}",
                p.replicas
            )));
        }
        // Only live brokers may join.
        if let Some(r) = isr.iter().find(|r| !p.isr.contains(r) && !live.contains(r)) {
            return Reply::Error(CommandError::InvalidIsr(format!("broker {r} is fenced")));
        }
        p.isr = p
            .replicas
            .iter()
            .copied()
            .filter(|r| isr.contains(r))
            .collect();
        p.partition_epoch += 1;
        Reply::Partition(p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: i32) -> (ClusterState, u64) {
        let mut s = ClusterState::default();
        let mut index = 1;
        for id in 1..=n {
            s.apply(
                index,
                Command::Register {
                    id,
                    host: "h".into(),
                    port: 9000 + id,
                },
            );
            index += 1;
        }
        (s, index)
    }

    fn topic(s: &mut ClusterState, index: u64, rf: i16, unclean: bool) {
        let r = s.apply(
            index,
            Command::CreateTopic {
                name: "t".into(),
                config: TopicConfig {
                    partitions: 3,
                    replication_factor: rf,
                    min_insync_replicas: 2,
                    unclean_leader_election: unclean,
                },
            },
        );
        assert_eq!(r, Reply::Ok);
    }

    #[test]
    fn create_spreads_leaders_and_refuses_large_factor() {
        let (mut s, i) = cluster(3);
        topic(&mut s, i, 3, false);
        let leaders: Vec<i32> = s.topics["t"].partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders, vec![1, 2, 3]);
        assert_eq!(s.topics["t"].partitions[1].isr, vec![2, 3, 1]);
        let r = s.apply(
            i + 1,
            Command::CreateTopic {
                name: "u".into(),
                config: TopicConfig {
                    partitions: 1,
                    replication_factor: 4,
                    min_insync_replicas: 1,
                    unclean_leader_election: false,
                },
            },
        );
        assert!(matches!(
            r,
            Reply::Error(CommandError::NotEnoughBrokers { .. })
        ));
    }

    #[test]
    fn fencing_the_leader_elects_from_isr_and_bumps_epoch() {
        let (mut s, i) = cluster(3);
        topic(&mut s, i, 3, false);
        let epoch1 = s.brokers[&1].epoch;
        s.apply(
            i + 1,
            Command::Fence {
                id: 1,
                epoch: epoch1,
            },
        );
        let p = &s.topics["t"].partitions[0];
        // Fencing bumps the epoch (no leader), the election bumps it again.
        assert_eq!((p.leader, p.leader_epoch), (2, 2));
        assert_eq!(p.isr, vec![2, 3]);
        // A stale fence (old epoch) does nothing.
        s.apply(
            i + 2,
            Command::Register {
                id: 1,
                host: "h".into(),
                port: 9001,
            },
        );
        let before = s.clone();
        s.apply(
            i + 3,
            Command::Fence {
                id: 1,
                epoch: epoch1,
            },
        );
        assert_eq!(s, before);
        // The restarted broker is live but not in the ISR until the leader adds it.
        assert!(s.live(1));
        assert_eq!(s.topics["t"].partitions[0].isr, vec![2, 3]);
    }

    #[test]
    fn last_isr_member_stays_and_leads_again_unless_unclean() {
        for unclean in [false, true] {
            let (mut s, mut i) = cluster(3);
            topic(&mut s, i, 3, unclean);
            for id in [1, 2, 3] {
                i += 1;
                let e = s.brokers[&id].epoch;
                s.apply(i, Command::Fence { id, epoch: e });
            }
            let p = s.topics["t"].partitions[0].clone();
            assert_eq!((p.leader, p.isr.clone()), (-1, vec![3]));
            // Broker 1 (not in the ISR) comes back.
            i += 1;
            s.apply(
                i,
                Command::Register {
                    id: 1,
                    host: "h".into(),
                    port: 9001,
                },
            );
            let p = &s.topics["t"].partitions[0];
            if unclean {
                assert_eq!((p.leader, p.isr.clone()), (1, vec![1]));
            } else {
                assert_eq!((p.leader, p.isr.clone()), (-1, vec![3]));
                i += 1;
                s.apply(
                    i,
                    Command::Register {
                        id: 3,
                        host: "h".into(),
                        port: 9003,
                    },
                );
                let p = &s.topics["t"].partitions[0];
                assert_eq!((p.leader, p.isr.clone()), (3, vec![3]));
            }
        }
    }

    #[test]
    fn alter_isr_checks_leader_and_partition_epochs() {
        let (mut s, i) = cluster(3);
        topic(&mut s, i, 3, false);
        let shrink = |pe| Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 0,
            partition_epoch: pe,
            isr: vec![1, 2],
        };
        let r = s.apply(i + 1, shrink(0));
        assert!(
            matches!(r, Reply::Partition(ref p) if p.isr == vec![1, 2] && p.partition_epoch == 1)
        );
        assert!(matches!(
            s.apply(i + 2, shrink(0)),
            Reply::Error(CommandError::StaleIsr(_))
        ));
        let r = s.apply(
            i + 3,
            Command::AlterIsr {
                topic: "t".into(),
                partition: 0,
                leader: 2,
                leader_epoch: 0,
                partition_epoch: 1,
                isr: vec![2],
            },
        );
        assert!(matches!(r, Reply::Error(CommandError::StaleIsr(_))));
        let r = s.apply(
            i + 4,
            Command::AlterIsr {
                topic: "t".into(),
                partition: 0,
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 1,
                isr: vec![2],
            },
        );
        assert!(matches!(r, Reply::Error(CommandError::InvalidIsr(_))));
    }
}
