//! Consumer-group membership (the classic protocol): JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup. The broker coordinates; the clients' assignor
//! (the group leader) decides who reads what.
//!
//! Input: member requests. Output: join and sync answers (delivered when
//! the rebalance allows), heartbeat and leave error codes, and generation
//! checks for offset commits. State lives in memory: after a broker restart
//! members rejoin, as they do when a Kafka coordinator moves.
//!
//! A rebalance completes when every live member has rejoined, after a short
//! delay for a new group (so concurrent first joiners land in one
//! generation), or when the rebalance timeout removes the stragglers.
//! Members whose session expires without a heartbeat are removed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Kafka error codes used here.
pub mod codes {
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
}

/// Delay before the first generation of a new group.
const INITIAL_DELAY: Duration = Duration::from_millis(300);
/// Longest wait for members to rejoin, whatever they ask for.
const MAX_REBALANCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

#[derive(Debug)]
struct Member {
    protocols: Vec<(String, Bytes)>,
    session: Duration,
    rebalance: Duration,
    last_seen: Instant,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, Default)]
pub struct JoinAnswer {
    pub error: i16,
    pub generation: i32,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: every member and its metadata for the protocol.
    pub members: Vec<(String, Bytes)>,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, Default)]
pub struct SyncAnswer {
    pub error: i16,
    pub protocol: String,
    pub assignment: Bytes,
}

#[derive(Default)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    joins: HashMap<String, oneshot::Sender<JoinAnswer>>,
    syncs: HashMap<String, oneshot::Sender<SyncAnswer>>,
    assignments: HashMap<String, Bytes>,
    initial_until: Option<Instant>,
    deadline: Option<Instant>,
    next_member: u64,
}

impl Group {
    fn prepare(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            let wait = self
                .members
                .values()
                .map(|m| m.rebalance)
                .max()
                .unwrap_or(MAX_REBALANCE)
                .min(MAX_REBALANCE);
            if self.state == State::Empty {
                self.initial_until = Some(now + INITIAL_DELAY);
            }
            self.state = State::PreparingRebalance;
            self.deadline = Some(now + wait);
            for (_, tx) in self.syncs.drain() {
                let _ = tx.send(SyncAnswer {
                    error: codes::REBALANCE_IN_PROGRESS,
                    ..SyncAnswer::default()
                });
            }
        }
    }

    fn maybe_complete(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.keys().all(|m| self.joins.contains_key(m));
        let delayed = self.initial_until.is_some_and(|u| now < u);
        let timed_out = self.deadline.is_some_and(|d| now >= d);
        if !(all_joined && !delayed || timed_out) {
            return;
        }
        // Members that did not rejoin in time are out.
        let joins = &self.joins;
        self.members.retain(|id, _| joins.contains_key(id));
        self.initial_until = None;
        self.deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            return;
        }
        self.generation += 1;
        tracing::info!(generation = self.generation, members = ?self.members.keys().collect::<Vec<_>>(), "group rebalanced");
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().expect("a member").clone();
        }
        // The first protocol of the leader's that every member supports.
        let leader_protocols = &self.members[&self.leader].protocols;
        self.protocol = leader_protocols
            .iter()
            .map(|(p, _)| p.clone())
            .find(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(q, _)| q == p))
            })
            .unwrap_or_default();
        self.state = State::CompletingRebalance;
        self.assignments.clear();
        let everyone: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.protocols
                        .iter()
                        .find(|(p, _)| *p == self.protocol)
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        for (id, tx) in self.joins.drain() {
            let members = if id == self.leader {
                everyone.clone()
            } else {
                Vec::new()
            };
            let _ = tx.send(JoinAnswer {
                error: 0,
                generation: self.generation,
                protocol: self.protocol.clone(),
                leader: self.leader.clone(),
                member_id: id,
                members,
            });
        }
    }

    fn remove(&mut self, id: &str, now: Instant) {
        self.members.remove(id);
        self.joins.remove(id);
        self.syncs.remove(id);
        if self.members.is_empty() {
            self.state = State::Empty;
            for (_, tx) in self.syncs.drain() {
                let _ = tx.send(SyncAnswer {
                    error: codes::REBALANCE_IN_PROGRESS,
                    ..SyncAnswer::default()
                });
            }
        } else {
            self.prepare(now);
            self.maybe_complete(now);
        }
    }
}

/// All groups of this broker.
#[derive(Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

impl Coordinator {
    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A member joins (or rejoins); the answer comes when the rebalance completes.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        group: &str,
        member_id: &str,
        client_id: &str,
        session: Duration,
        rebalance: Duration,
        protocol_type: &str,
        protocols: Vec<(String, Bytes)>,
    ) -> oneshot::Receiver<JoinAnswer> {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let mut groups = self.groups();
        let g = groups.entry(group.to_string()).or_default();
        let fail = |tx: oneshot::Sender<JoinAnswer>, error: i16| {
            let _ = tx.send(JoinAnswer {
                error,
                member_id: member_id.to_string(),
                ..JoinAnswer::default()
            });
        };
        if !g.members.is_empty() && g.protocol_type != protocol_type {
            fail(tx, codes::INCONSISTENT_GROUP_PROTOCOL);
            return rx;
        }
        let id = if member_id.is_empty() {
            g.next_member += 1;
            format!("{client_id}-{}-{}", g.generation, g.next_member)
        } else if g.members.contains_key(member_id) {
            member_id.to_string()
        } else {
            fail(tx, codes::UNKNOWN_MEMBER_ID);
            return rx;
        };
        g.protocol_type = protocol_type.to_string();
        g.members.insert(
            id.clone(),
            Member {
                protocols,
                session,
                rebalance,
                last_seen: now,
            },
        );
        g.joins.insert(id, tx);
        g.prepare(now);
        g.maybe_complete(now);
        rx
    }

    /// A member sends (the leader: everyone's) assignment and gets its own.
    pub fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> oneshot::Receiver<SyncAnswer> {
        let (tx, rx) = oneshot::channel();
        let mut groups = self.groups();
        let fail = |tx: oneshot::Sender<SyncAnswer>, error: i16| {
            let _ = tx.send(SyncAnswer {
                error,
                ..SyncAnswer::default()
            });
        };
        let Some(g) = groups
            .get_mut(group)
            .filter(|g| g.members.contains_key(member_id))
        else {
            fail(tx, codes::UNKNOWN_MEMBER_ID);
            return rx;
        };
        g.members.get_mut(member_id).expect("checked").last_seen = Instant::now();
        if g.state == State::PreparingRebalance {
            fail(tx, codes::REBALANCE_IN_PROGRESS);
            return rx;
        }
        if generation != g.generation {
            fail(tx, codes::ILLEGAL_GENERATION);
            return rx;
        }
        if g.state == State::CompletingRebalance && member_id == g.leader {
            g.assignments = assignments.into_iter().collect();
            g.state = State::Stable;
            g.syncs.insert(member_id.to_string(), tx);
            for (id, tx) in g.syncs.drain() {
                let assignment = g.assignments.get(&id).cloned().unwrap_or_default();
                let _ = tx.send(SyncAnswer {
                    error: 0,
                    protocol: g.protocol.clone(),
                    assignment,
                });
            }
        } else if g.state == State::Stable {
            let assignment = g.assignments.get(member_id).cloned().unwrap_or_default();
            let _ = tx.send(SyncAnswer {
                error: 0,
                protocol: g.protocol.clone(),
                assignment,
            });
        } else {
            g.syncs.insert(member_id.to_string(), tx);
        }
        rx
    }

    /// A member's heartbeat: 0, or why it must rejoin.
    pub fn heartbeat(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        m.last_seen = Instant::now();
        if g.state == State::PreparingRebalance {
            return codes::REBALANCE_IN_PROGRESS;
        }
        if generation != g.generation {
            return codes::ILLEGAL_GENERATION;
        }
        0
    }

    /// Members leave; returns an error code per member.
    pub fn leave(&self, group: &str, members: &[String]) -> Vec<i16> {
        let now = Instant::now();
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else {
            return vec![codes::UNKNOWN_MEMBER_ID; members.len()];
        };
        members
            .iter()
            .map(|m| {
                if g.members.contains_key(m) {
                    g.remove(m, now);
                    0
                } else {
                    codes::UNKNOWN_MEMBER_ID
                }
            })
            .collect()
    }

    /// Whether an offset commit tagged with a generation may proceed (0).
    /// Commits without a generation (-1, no member) are always allowed.
    pub fn check_commit(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        if generation < 0 && member_id.is_empty() {
            return 0;
        }
        let groups = self.groups();
        let Some(g) = groups
            .get(group)
            .filter(|g| g.members.contains_key(member_id))
        else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        if g.state == State::PreparingRebalance {
            return codes::REBALANCE_IN_PROGRESS;
        }
        if generation != g.generation {
            return codes::ILLEGAL_GENERATION;
        }
        0
    }

    /// Expires sessions and completes rebalances whose time has come.
    pub fn tick(&self) {
        let now = Instant::now();
        for g in self.groups().values_mut() {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(id, m)| {
                    !g.joins.contains_key(*id) && now.duration_since(m.last_seen) > m.session
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "group member session expired");
                g.remove(&id, now);
            }
            g.maybe_complete(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocols() -> Vec<(String, Bytes)> {
        vec![("range".into(), Bytes::from_static(b"m"))]
    }

    #[tokio::test]
    async fn two_members_join_one_generation_and_sync_the_leaders_assignment() {
        let c = Coordinator::default();
        let s = Duration::from_secs(10);
        let a = c.join("g", "", "a", s, s, "consumer", protocols());
        let b = c.join("g", "", "b", s, s, "consumer", protocols());
        tokio::time::sleep(INITIAL_DELAY + Duration::from_millis(50)).await;
        c.tick();
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!((a.error, b.error, a.generation, b.generation), (0, 0, 1, 1));
        assert_eq!(a.leader, b.leader);
        let (leader, follower) = if a.member_id == a.leader {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        let fs = c.sync("g", 1, &follower.member_id, vec![]);
        let ls = c.sync(
            "g",
            1,
            &leader.member_id,
            vec![
                (leader.member_id.clone(), Bytes::from_static(b"p0")),
                (follower.member_id.clone(), Bytes::from_static(b"p1")),
            ],
        );
        assert_eq!(fs.await.unwrap().assignment, Bytes::from_static(b"p1"));
        assert_eq!(ls.await.unwrap().assignment, Bytes::from_static(b"p0"));
        assert_eq!(c.heartbeat("g", 1, &follower.member_id), 0);
        assert_eq!(c.check_commit("g", 1, &follower.member_id), 0);
        assert_eq!(
            c.check_commit("g", 0, &follower.member_id),
            codes::ILLEGAL_GENERATION
        );
        // The leader leaves: the follower must rejoin, and is alone in generation 2.
        assert_eq!(
            c.leave("g", std::slice::from_ref(&leader.member_id)),
            vec![0]
        );
        assert_eq!(
            c.heartbeat("g", 1, &follower.member_id),
            codes::REBALANCE_IN_PROGRESS
        );
        let again = c
            .join("g", &follower.member_id, "b", s, s, "consumer", protocols())
            .await
            .unwrap();
        assert_eq!(
            (again.generation, again.leader.as_str()),
            (2, follower.member_id.as_str())
        );
        assert_eq!(c.heartbeat("g", 1, "nobody"), codes::UNKNOWN_MEMBER_ID);
    }

    #[tokio::test]
    async fn a_silent_member_expires_and_the_group_rebalances() {
        let c = Coordinator::default();
        let short = Duration::from_millis(200);
        let a = c.join("g", "", "a", short, short, "consumer", protocols());
        tokio::time::sleep(INITIAL_DELAY + Duration::from_millis(50)).await;
        c.tick();
        let a = a.await.unwrap();
        let _ = c
            .sync(
                "g",
                a.generation,
                &a.member_id,
                vec![(a.member_id.clone(), Bytes::new())],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.tick();
        assert_eq!(
            c.heartbeat("g", a.generation, &a.member_id),
            codes::UNKNOWN_MEMBER_ID,
            "expired after its session"
        );
    }
}
