//! After the drain: read every replica of every partition, offset by
//! offset up to the drain's high watermark, so the checker can prove the
//! replicas agree (a value that differs is `inconsistent-offset`).
//!
//! Only committed data is compared: a replica in the ISR of the leader
//! epoch the drain was confirmed at has truncated its old suffix and holds
//! everything below the high watermark, so it is read up to it. A replica
//! outside the ISR (a deposed leader that has not yet learnt of the new
//! epoch still holds its uncommitted suffix) is waited for, and when it does
//! not rejoin in time it is compared only below its own high watermark, and
//! that is noted.
//!
//! Uses Kafka's debugging replica id (-2) in Fetch, which the builtin broker
//! serves from any replica; brokers that refuse it are noted, not failed
//! ("where possible"). A replica's copy never counts as the message being
//! present: only the drain through the leaders decides `lost`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::drain::{wait_for_agreement, Agreement, Drained};
use crate::cluster::kafka_wire::{self, Conn, DEBUG_REPLICA};
use crate::history::{EventKind, History};

/// How long the replica reads wait for every replica to be back in the ISR.
pub const REJOIN: Duration = Duration::from_secs(30);

/// Reads each replica below the drain's high watermarks; `nodes` maps node
/// ids to their Kafka addresses. Returns how many replicas were read.
pub fn read_replicas(
    nodes: &BTreeMap<u32, String>,
    topic: &str,
    drained: &Drained,
    timeout: Duration,
    history: &History,
) -> usize {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<String> = nodes.values().cloned().collect();
    let partitions = drained.agreement.partitions.len() as i32;
    let in_sync = |a: &Agreement| {
        a.partitions
            .values()
            .all(|p| p.replicas.iter().all(|r| p.isr.contains(r)))
    };
    // Wait (bounded) until every replica is back in the ISR.
    let rejoin_by = (Instant::now() + REJOIN).min(deadline);
    let mut agreement = drained.agreement.clone();
    while !in_sync(&agreement) && Instant::now() < rejoin_by {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok(a) = wait_for_agreement(&addrs, topic, partitions, rejoin_by) {
            agreement = a;
        }
    }
    if !agreement.same_leadership(&drained.agreement) {
        note(
            history,
            "leadership changed after the drain: replicas compared below their own high watermarks"
                .into(),
        );
    }
    let mut complete = 0;
    for (&partition, leader) in &drained.agreement.partitions {
        let Some(&hw) = drained.high.get(&partition) else {
            continue;
        };
        let now = &agreement.partitions[&partition];
        let current = now.leader_epoch == leader.leader_epoch;
        for &id in &leader.replicas {
            let Some(addr) = nodes.get(&(id as u32)) else {
                continue;
            };
            let in_isr = current && now.isr.contains(&id);
            match read_replica(addr, topic, partition, hw, deadline) {
                Ok((records, own_hw)) => {
                    let limit = if in_isr { hw } else { hw.min(own_hw) };
                    if !in_isr {
                        note(
                            history,
                            format!(
                                "replica {id} of partition {partition} is not in the ISR of leader epoch {} after the drain: compared below its own high watermark {limit}, not {hw}",
                                leader.leader_epoch
                            ),
                        );
                    }
                    for (offset, value) in records.into_iter().filter(|(o, _)| *o < limit) {
                        history.record(
                            "replicas",
                            EventKind::ReplicaRead {
                                node: id,
                                partition,
                                offset,
                                value,
                            },
                        );
                    }
                    complete += 1;
                }
                Err(e) => note(
                    history,
                    format!("replica read of partition {partition} on node {id}: {e}"),
                ),
            }
        }
    }
    complete
}

fn note(history: &History, message: String) {
    history.record("replicas", EventKind::Note { message });
}

/// Everything one replica (the broker at `addr`) holds of a partition
/// below `high`, offset and value, and that replica's own high watermark.
pub fn read_replica(
    addr: &str,
    topic: &str,
    partition: i32,
    high: i64,
    deadline: Instant,
) -> Result<(Vec<(i64, String)>, i64), String> {
    let mut conn = Conn::connect(addr, Duration::from_secs(5))?;
    let mut out = Vec::new();
    let mut own_hw = None;
    let mut offset = 0;
    while offset < high {
        if Instant::now() >= deadline {
            return Err(format!("timed out at offset {offset} of {high}"));
        }
        let f = kafka_wire::fetch(&mut conn, topic, partition, offset, DEBUG_REPLICA, -1)?;
        if f.error_code != 0 {
            return Err(format!("fetch error code {}", f.error_code));
        }
        own_hw.get_or_insert(f.high_watermark);
        let Some(&(last, _)) = f.records.last() else {
            // A replica still catching up (or truncated): compare what it has.
            break;
        };
        out.extend(f.records.into_iter().filter(|(o, _)| *o < high));
        offset = last + 1;
    }
    Ok((out, own_hw.unwrap_or(0)))
}
