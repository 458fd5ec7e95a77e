//! The final drain of a Kafka-API cluster: after healing, read what the
//! cluster has committed, and be certain of it.
//!
//! Input: every node's address, the topic, a timeout. Output: `drain`
//! events for every message read and one `drain-end` (complete, or why
//! not), plus the agreed leadership the replica reads start from.
//!
//! A node that was cut off (or paused) keeps its last copy of the cluster
//! state until it hears from the controller again: for a moment after the
//! heal it still names itself leader at an old leader epoch and serves its
//! old, lower high watermark. A drain that asked it would stop short and
//! report committed messages as lost. So the drain:
//! 1. waits until every node that answers (a majority at least) names the
//!    same leader and leader epoch for every partition ([`agree`]);
//! 2. reads every partition from offset 0 up to its high watermark from
//!    that leader, with that leader epoch in every Fetch (a deposed leader
//!    answers FENCED_LEADER_EPOCH or NOT_LEADER_OR_FOLLOWER);
//! 3. asks again: if any leader, leader epoch or high watermark moved
//!    during the read, it reads again (the reads are recorded only once
//!    they are confirmed).
//!
//! A partition whose agreed leader reports a high watermark but serves
//! nothing at some offset for `patience` is `unreadable` from there: a
//! finding about the broker, recorded in `drain-end`, not an unfinished
//! drain. The whole drain is bounded by the plan's `drain.timeout`; when it
//! runs out the drain is incomplete and the verdict unknown, with the reason.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::wire::{self as kafka_wire, codes, Conn, NodeView, CONSUMER};
use crate::driver::patience;
use crate::history::{EventKind, History, Unreadable};

/// One partition's leadership as the cluster agrees on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    pub leader: i32,
    pub leader_epoch: i32,
    /// The leader's address.
    pub addr: String,
    pub replicas: Vec<i32>,
    /// The in-sync replicas, as the leader reports them.
    pub isr: Vec<i32>,
}

/// Leadership every answering node agrees on, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agreement {
    pub partitions: BTreeMap<i32, Agreed>,
}

impl Agreement {
    /// Same leader and leader epoch for every partition.
    pub fn same_leadership(&self, other: &Agreement) -> bool {
        self.partitions.len() == other.partitions.len()
            && self.partitions.iter().all(|(p, a)| {
                other
                    .partitions
                    .get(p)
                    .is_some_and(|b| (a.leader, a.leader_epoch) == (b.leader, b.leader_epoch))
            })
    }
}

/// Decides from every node's Metadata answer (by address) whether the
/// cluster agrees on the leaders of partitions `0..partitions`: a majority
/// of the nodes answers, every answer names the same leader and leader
/// epoch for every partition, and each leader is among those answering.
/// Err says why not, in words.
pub fn agree(
    answers: &[(String, Result<NodeView, String>)],
    partitions: i32,
) -> Result<Agreement, String> {
    let views: Vec<(&String, &NodeView)> = answers
        .iter()
        .filter_map(|(a, r)| r.as_ref().ok().map(|v| (a, v)))
        .collect();
    if views.len() * 2 <= answers.len() {
        let errors: Vec<String> = answers
            .iter()
            .filter_map(|(_, r)| r.as_ref().err().cloned())
            .collect();
        return Err(format!(
            "only {} of {} nodes answer Metadata ({})",
            views.len(),
            answers.len(),
            errors.join("; ")
        ));
    }
    let mut out = Agreement::default();
    for p in 0..partitions {
        let mut seen: Vec<(&String, i32, i32)> = Vec::new();
        for (addr, v) in &views {
            let Some(s) = v.partitions.get(&p) else {
                return Err(format!("{addr} does not know partition {p}"));
            };
            seen.push((addr, s.leader, s.leader_epoch));
        }
        let (_, leader, epoch) = seen[0];
        if seen.iter().any(|(_, l, e)| (*l, *e) != (leader, epoch)) {
            let said: Vec<String> = seen
                .iter()
                .map(|(a, l, e)| format!("{a} says leader {l} epoch {e}"))
                .collect();
            return Err(format!(
                "nodes disagree on partition {p}: {}",
                said.join(", ")
            ));
        }
        if leader < 0 {
            return Err(format!("partition {p} has no leader"));
        }
        let addr = views
            .iter()
            .find_map(|(_, v)| v.brokers.get(&leader))
            .ok_or_else(|| format!("no node lists the address of broker {leader}"))?;
        let Some((_, own)) = views.iter().find(|(a, _)| *a == addr) else {
            return Err(format!(
                "broker {leader}, leader of partition {p}, does not answer at {addr}"
            ));
        };
        let s = &own.partitions[&p];
        out.partitions.insert(
            p,
            Agreed {
                leader,
                leader_epoch: epoch,
                addr: addr.clone(),
                replicas: s.replicas.clone(),
                isr: s.isr.clone(),
            },
        );
    }
    Ok(out)
}

/// Asks every node until they agree (see [`agree`]) or `deadline` passes.
pub fn wait_for_agreement(
    nodes: &[String],
    topic: &str,
    partitions: i32,
    deadline: Instant,
) -> Result<Agreement, String> {
    loop {
        let answers: Vec<(String, Result<NodeView, String>)> = nodes
            .iter()
            .map(|a| {
                (
                    a.clone(),
                    kafka_wire::metadata(a, topic, Duration::from_secs(3)),
                )
            })
            .collect();
        match agree(&answers, partitions) {
            Ok(a) => return Ok(a),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!(
                "the nodes did not agree on the leaders of {topic} within the drain timeout: {why}"
            ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What the drain established.
#[derive(Debug, Clone)]
pub struct Confirmed {
    /// Partition -> the high watermark its leader reported.
    pub high: BTreeMap<i32, i64>,
    /// The leadership the read was confirmed against.
    pub agreement: Agreement,
}

/// One partition read from its leader.
struct PartitionRead {
    records: Vec<(i64, String)>,
    /// The high watermark the leader reported last.
    high: i64,
    unreadable: Option<Unreadable>,
}

enum ReadError {
    /// Leadership moved (or the leader stopped answering): agree and read again.
    Moved(String),
    /// The drain timeout ran out.
    Timeout(String),
}

/// Reads every partition of `topic` from its agreed leader; records the
/// messages and `drain-end`. None when the drain could not finish.
pub fn drain(
    nodes: &[String],
    topic: &str,
    partitions: i32,
    timeout: Duration,
    history: &History,
) -> Option<Confirmed> {
    let deadline = Instant::now() + timeout;
    match read_committed(
        nodes,
        topic,
        partitions,
        deadline,
        patience(timeout),
        history,
    ) {
        Ok((drained, reads, unreadable)) => {
            for (p, records) in reads {
                crate::driver::record_drained(history, p, records);
            }
            history.record(
                "drain",
                EventKind::DrainEnd {
                    complete: true,
                    high_watermarks: drained
                        .high
                        .iter()
                        .map(|(p, h)| (p.to_string(), *h))
                        .collect(),
                    error: None,
                    unreadable,
                },
            );
            Some(drained)
        }
        Err(e) => {
            history.record(
                "drain",
                EventKind::DrainEnd {
                    complete: false,
                    high_watermarks: BTreeMap::new(),
                    error: Some(e),
                    unreadable: Vec::new(),
                },
            );
            None
        }
    }
}

type Reads = BTreeMap<i32, Vec<(i64, String)>>;

/// Agree, read, confirm; again until a read is confirmed or time runs out.
fn read_committed(
    nodes: &[String],
    topic: &str,
    partitions: i32,
    deadline: Instant,
    patience: Duration,
    history: &History,
) -> Result<(Confirmed, Reads, Vec<Unreadable>), String> {
    for attempt in 1.. {
        let agreement = wait_for_agreement(nodes, topic, partitions, deadline)?;
        let mut reads = Reads::new();
        let mut high = BTreeMap::new();
        let mut unreadable = Vec::new();
        let mut moved = None;
        for (&p, leader) in &agreement.partitions {
            match read_partition(leader, topic, p, deadline, patience) {
                Ok(r) => {
                    reads.insert(p, r.records);
                    high.insert(p, r.high);
                    unreadable.extend(r.unreadable);
                }
                Err(ReadError::Moved(why)) => {
                    moved = Some(why);
                    break;
                }
                Err(ReadError::Timeout(why)) => return Err(why),
            }
        }
        if moved.is_none() {
            moved = confirm(nodes, topic, partitions, deadline, &agreement, &high)?;
        }
        match moved {
            None => return Ok((Confirmed { high, agreement }, reads, unreadable)),
            Some(why) if Instant::now() >= deadline => {
                return Err(format!("drain timed out: {why}"))
            }
            Some(why) => {
                history.record(
                    "drain",
                    EventKind::Note {
                        message: format!(
                            "drain attempt {attempt} not confirmed: {why}; reading again"
                        ),
                    },
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    unreachable!("the attempts loop only ends by returning")
}

/// After a read: the same leaders and epochs, and every leader still
/// reports the high watermark read to. Some(what moved) otherwise.
fn confirm(
    nodes: &[String],
    topic: &str,
    partitions: i32,
    deadline: Instant,
    agreement: &Agreement,
    high: &BTreeMap<i32, i64>,
) -> Result<Option<String>, String> {
    let again = wait_for_agreement(nodes, topic, partitions, deadline)?;
    if !again.same_leadership(agreement) {
        return Ok(Some("leadership changed during the read".into()));
    }
    for (p, leader) in &agreement.partitions {
        let now = Conn::connect(&leader.addr, Duration::from_secs(3)).and_then(|mut c| {
            kafka_wire::fetch(&mut c, topic, *p, high[p], CONSUMER, leader.leader_epoch)
        });
        match now {
            Ok(f) if f.error_code == 0 && f.high_watermark == high[p] => {}
            Ok(f) if f.error_code == 0 => {
                return Ok(Some(format!(
                    "the high watermark of partition {p} moved from {} to {}",
                    high[p], f.high_watermark
                )))
            }
            Ok(f) => {
                return Ok(Some(format!(
                    "leader {} of partition {p} answered error code {}",
                    leader.leader, f.error_code
                )))
            }
            Err(e) => return Ok(Some(e)),
        }
    }
    Ok(None)
}

/// Reads one partition from offset 0 to its leader's high watermark.
fn read_partition(
    leader: &Agreed,
    topic: &str,
    p: i32,
    deadline: Instant,
    patience: Duration,
) -> Result<PartitionRead, ReadError> {
    let mut conn = Conn::connect(&leader.addr, Duration::from_secs(3)).map_err(ReadError::Moved)?;
    let mut out = PartitionRead {
        records: Vec::new(),
        high: 0,
        unreadable: None,
    };
    let mut next = 0;
    let mut stalled_since: Option<Instant> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(ReadError::Timeout(format!(
                "drain timed out reading partition {p} at offset {next} of {}",
                out.high
            )));
        }
        let f = kafka_wire::fetch(&mut conn, topic, p, next, CONSUMER, leader.leader_epoch)
            .map_err(ReadError::Moved)?;
        let answer = match f.error_code {
            0 => {
                out.high = f.high_watermark;
                if let Some(&(last, _)) = f.records.last() {
                    next = last + 1;
                    out.records.extend(f.records);
                    stalled_since = None;
                    continue;
                }
                if next >= out.high {
                    return Ok(out);
                }
                "no records".to_string()
            }
            codes::NOT_LEADER_OR_FOLLOWER
            | codes::FENCED_LEADER_EPOCH
            | codes::UNKNOWN_LEADER_EPOCH => {
                return Err(ReadError::Moved(format!(
                    "leader {} of partition {p} answered error code {} at leader epoch {}",
                    leader.leader, f.error_code, leader.leader_epoch
                )))
            }
            code => format!("error code {code}"),
        };
        let since = *stalled_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= patience {
            out.unreadable = Some(Unreadable {
                partition: p,
                from: next,
                to: out.high.max(next),
                waited_ms: since.elapsed().as_millis() as u64,
                reason: format!(
                    "leader {} at epoch {} answered {answer}",
                    leader.leader, leader.leader_epoch
                ),
            });
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::kafka::wire::PartitionState;

    fn view(leader: i32, epoch: i32, isr: &[i32]) -> NodeView {
        NodeView {
            brokers: (1..=3).map(|i| (i, format!("n{i}:9092"))).collect(),
            partitions: BTreeMap::from([(
                0,
                PartitionState {
                    leader,
                    leader_epoch: epoch,
                    replicas: vec![1, 2, 3],
                    isr: isr.to_vec(),
                },
            )]),
        }
    }

    fn answers(v: [Result<NodeView, String>; 3]) -> Vec<(String, Result<NodeView, String>)> {
        v.into_iter()
            .enumerate()
            .map(|(i, r)| (format!("n{}:9092", i + 1), r))
            .collect()
    }

    #[test]
    fn every_node_naming_the_same_leader_and_epoch_agrees() {
        let a = agree(
            &answers([
                Ok(view(2, 5, &[2, 3])),
                Ok(view(2, 5, &[2, 3])),
                Ok(view(2, 5, &[1, 2, 3])),
            ]),
            1,
        )
        .unwrap();
        let p = &a.partitions[&0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.addr.as_str()),
            (2, 5, "n2:9092")
        );
        assert_eq!(p.isr, vec![2, 3], "the ISR is the leader's");
    }

    #[test]
    fn a_deposed_leader_still_naming_itself_blocks_agreement() {
        let e = agree(
            &answers([
                Ok(view(1, 4, &[1, 2, 3])),
                Ok(view(2, 5, &[2, 3])),
                Ok(view(2, 5, &[2, 3])),
            ]),
            1,
        )
        .unwrap_err();
        assert!(e.contains("n1:9092 says leader 1 epoch 4"), "{e}");
    }

    #[test]
    fn a_minority_answering_or_a_silent_leader_is_not_agreement() {
        let e = agree(
            &answers([Ok(view(2, 5, &[2])), Err("down".into()), Err("down".into())]),
            1,
        )
        .unwrap_err();
        assert!(e.starts_with("only 1 of 3"), "{e}");
        let e = agree(
            &answers([
                Ok(view(2, 5, &[2])),
                Err("down".into()),
                Ok(view(2, 5, &[2])),
            ]),
            1,
        )
        .unwrap_err();
        assert!(e.contains("does not answer"), "{e}");
        let e = agree(
            &answers([
                Ok(view(-1, 5, &[])),
                Ok(view(-1, 5, &[])),
                Ok(view(-1, 5, &[])),
            ]),
            1,
        )
        .unwrap_err();
        assert!(e.contains("no leader"), "{e}");
        let e = agree(
            &answers([
                Ok(view(2, 5, &[2])),
                Ok(view(2, 5, &[2])),
                Ok(view(2, 5, &[2])),
            ]),
            2,
        )
        .unwrap_err();
        assert!(e.contains("does not know partition 1"), "{e}");
    }

    #[test]
    fn leadership_compares_leaders_and_epochs_only() {
        let a = agree(
            &answers([
                Ok(view(2, 5, &[2])),
                Ok(view(2, 5, &[2])),
                Ok(view(2, 5, &[2])),
            ]),
            1,
        )
        .unwrap();
        let b = agree(
            &answers([
                Ok(view(2, 5, &[1, 2])),
                Ok(view(2, 5, &[2])),
                Ok(view(2, 5, &[1, 2])),
            ]),
            1,
        )
        .unwrap();
        let c = agree(
            &answers([
                Ok(view(2, 6, &[2])),
                Ok(view(2, 6, &[2])),
                Ok(view(2, 6, &[2])),
            ]),
            1,
        )
        .unwrap();
        assert!(a.same_leadership(&b));
        assert!(!a.same_leadership(&c));
    }
}
