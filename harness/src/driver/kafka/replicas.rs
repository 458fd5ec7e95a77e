//! After the drain: read every replica of every partition, offset by
//! offset up to the drain's high watermark, so the checker can prove the
//! replicas agree (a value that differs is `inconsistent-offset`).
//!
//! Only committed data is compared: a replica in the ISR of the leader
//! epoch the drain was confirmed at has truncated its old suffix and holds
//! everything below the high watermark, so it is read up to it; so is one
//! whose own high watermark has reached the drain's. Any other replica (a
//! deposed leader that has not yet learnt of the new epoch still holds its
//! uncommitted suffix) is waited for, and when it does not rejoin in time it
//! is compared only below its own high watermark, and that is noted:
//! everything below both high watermarks is committed in both.
//!
//! Uses Kafka's debugging replica id (-2) in Fetch, which the builtin broker
//! serves from any replica; brokers that refuse it are noted, not failed
//! ("where possible"). A replica's copy never counts as the message being
//! present: only the drain through the leaders decides `lost`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::drain::{wait_for_agreement, Agreement, Confirmed};
use super::wire::{self as kafka_wire, Conn, DEBUG_REPLICA};
use crate::history::{EventKind, History};

/// How long the replica reads wait for every replica to be back in the ISR.
pub const REJOIN: Duration = Duration::from_secs(30);

/// Reads each replica below the drain's high watermarks; `nodes` maps node
/// ids to their Kafka addresses. Returns how many replicas were read.
///
/// A replica is compared up to the drain's high watermark when it is in
/// the ISR of the confirmed leader epoch, or when its own high watermark
/// (learnt from that leader) has reached it; otherwise the others are
/// compared first, then it is waited for (up to `REJOIN`) and read again,
/// and if it has not caught up it is compared below its own high
/// watermark: everything below both is committed in both.
pub fn read_replicas(
    nodes: &BTreeMap<u32, String>,
    topic: &str,
    drained: &Confirmed,
    timeout: Duration,
    history: &History,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut complete = 0;
    let mut behind = Vec::new();
    for (partition, id, addr, hw) in replicas(nodes, drained) {
        let in_isr = drained.agreement.partitions[&partition].isr.contains(&id);
        match read_replica(addr, topic, partition, hw, deadline) {
            Ok((records, own_hw)) if in_isr || own_hw >= hw => {
                record(history, id, partition, records, hw);
                complete += 1;
            }
            Ok(_) => behind.push((partition, id, addr, hw)),
            Err(e) => note(
                history,
                format!("replica read of partition {partition} on node {id}: {e}"),
            ),
        }
    }
    if behind.is_empty() {
        return complete;
    }
    // Wait (bounded) until the replicas behind are back in the ISR.
    let addrs: Vec<String> = nodes.values().cloned().collect();
    let partitions = drained.agreement.partitions.len() as i32;
    let rejoin_by = (Instant::now() + REJOIN).min(deadline);
    let rejoined = |a: &Agreement| {
        behind
            .iter()
            .all(|(p, id, ..)| a.partitions.get(p).is_some_and(|now| now.isr.contains(id)))
    };
    let mut agreement = drained.agreement.clone();
    while !rejoined(&agreement) && Instant::now() < rejoin_by {
        std::thread::sleep(Duration::from_millis(250));
        if let Ok(a) = wait_for_agreement(&addrs, topic, partitions, rejoin_by) {
            agreement = a;
        }
    }
    let same = agreement.same_leadership(&drained.agreement);
    for (partition, id, addr, hw) in behind {
        let in_isr = same && agreement.partitions[&partition].isr.contains(&id);
        match read_replica(addr, topic, partition, hw, deadline) {
            Ok((records, own_hw)) => {
                let limit = if in_isr { hw } else { hw.min(own_hw) };
                if limit < hw {
                    note(
                        history,
                        format!(
                            "replica {id} of partition {partition} did not rejoin the ISR of leader epoch {}: compared below its own high watermark {limit}, not {hw}",
                            drained.agreement.partitions[&partition].leader_epoch
                        ),
                    );
                }
                record(history, id, partition, records, limit);
                complete += 1;
            }
            Err(e) => note(
                history,
                format!("replica read of partition {partition} on node {id}: {e}"),
            ),
        }
    }
    complete
}

/// Every (partition, replica id, its address, the drain's high watermark).
fn replicas<'a>(
    nodes: &'a BTreeMap<u32, String>,
    drained: &'a Confirmed,
) -> impl Iterator<Item = (i32, i32, &'a String, i64)> + 'a {
    drained
        .agreement
        .partitions
        .iter()
        .flat_map(move |(&p, leader)| {
            let hw = drained.high.get(&p).copied();
            leader
                .replicas
                .iter()
                .filter_map(move |&id| Some((p, id, nodes.get(&(id as u32))?, hw?)))
        })
}

fn record(history: &History, node: i32, partition: i32, records: Vec<(i64, String)>, below: i64) {
    for (offset, value) in records.into_iter().filter(|(o, _)| *o < below) {
        history.record(
            "replicas",
            EventKind::ReplicaRead {
                node,
                partition,
                offset,
                value,
            },
        );
    }
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
