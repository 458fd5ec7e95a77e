//! One streaming pass over a history, keeping what the properties need.
//! Memory is proportional to the number of distinct messages: per sent
//! value one `SendState`, per offset one `OffsetInfo`, per drained value
//! its first location (more only for duplicates).

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use serde::Deserialize;

use super::dense::Dense;
use crate::history::{Event, EventKind, Unreadable, ValueId};

/// A message value: a harness id, or foreign bytes (interned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Id(ValueId),
    Other(u32),
}

impl Default for Value {
    fn default() -> Self {
        Value::Other(u32::MAX)
    }
}

/// Everything known about one sent value.
#[derive(Debug, Clone, Default)]
pub struct SendState {
    pub attempts: u32,
    pub fails: u32,
    pub infos: u32,
    /// Times the group processed it.
    pub delivered: u32,
    /// Times a member acknowledged it by value (a queue's messages, which
    /// the acknowledgement removes).
    pub taken: u32,
    /// First acknowledgement: partition, offset, time.
    pub ok: Option<(i32, i64, u64)>,
    /// Where the final drain first found it.
    pub drained_at: Option<(i32, i64)>,
}

/// What is known about one offset.
#[derive(Debug, Clone, Copy, Default)]
pub struct OffsetInfo {
    /// Whether anything was seen at this offset yet.
    pub seen: bool,
    /// The value first seen there (ack, delivery or drain).
    pub value: Value,
    pub drained: bool,
    pub processed: bool,
    /// A member acknowledged it (per-message acknowledgement).
    pub acked: bool,
}

/// A fault's time window.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultWindow {
    pub id: u32,
    pub fault: String,
    pub targets: Vec<u32>,
    pub detail: String,
    pub start: u64,
    pub end: Option<u64>,
}

/// How often one plan fault acted, and why it did not when it did not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultLine {
    pub fault: String,
    pub acted: u32,
    pub skipped: u32,
    /// Why its last skipped firing had nothing to act on.
    pub reason: String,
}

/// An offset seen with two different values.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub partition: i32,
    pub offset: i64,
    pub first: Value,
    pub second: Value,
    /// Where the second value was seen: ack, deliver, drain or replica read.
    pub seen_in: &'static str,
}

/// A consumer's offsets going backwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Backwards {
    pub process: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// What the history says, aggregated.
#[derive(Debug, Default)]
pub struct Facts {
    pub plan: String,
    pub seed: u64,
    pub max_in_flight: u32,
    /// Consumers the plan ran.
    pub consumers: u32,
    /// The broker is a queue: no positions; what the group acknowledged
    /// is gone from it.
    pub queue: bool,
    /// Per plan fault (index in `faults:`): firings that acted or not.
    pub fault_lines: BTreeMap<u32, FaultLine>,
    /// Per harness value (producer, sequence): attempts, ack, drain.
    sends: Dense<SendState>,
    /// Per (partition, offset): the value first seen there.
    offsets: Dense<OffsetInfo>,
    /// Where the drain first found foreign values (harness values: in `sends`).
    drained_foreign: HashMap<Value, (i32, i64)>,
    pub drained_again: HashMap<Value, Vec<(i32, i64)>>,
    pub drained_total: u64,
    pub drain_complete: Option<bool>,
    pub drain_error: Option<String>,
    /// Ranges the drain found reported but not served.
    pub unreadable: Vec<Unreadable>,
    /// Deliveries of foreign values (harness values count in `sends`).
    pub foreign_deliveries: HashMap<Value, u32>,
    pub delivered_total: u64,
    /// Highest committed offset per partition.
    pub committed: BTreeMap<i32, i64>,
    /// Highest commit a consumer had acknowledged, per partition.
    pub acked_commits: BTreeMap<i32, i64>,
    /// The group's committed offsets read after the heal, if they were.
    pub final_committed: Option<BTreeMap<i32, i64>>,
    pub faults: Vec<FaultWindow>,
    /// Leader changes: (time, partition, leader).
    pub leaders: Vec<(u64, i32, i32)>,
    pub conflicts: Vec<Conflict>,
    /// Last offset each consumer incarnation processed, per partition.
    last_polled: HashMap<(u32, i32), i64>,
    processes: HashMap<String, u32>,
    process_names: Vec<String>,
    pub backwards: Vec<Backwards>,
    /// Highest acknowledged offset per (producer, partition), and acks below it.
    max_acked: HashMap<(u32, i32), i64>,
    pub reorders: Vec<(u32, i32, i64, i64)>,
    foreign: Vec<String>,
    foreign_index: HashMap<String, u32>,
    pub events: u64,
}

/// One history line as it is parsed: borrowed text, plain optional fields
/// (no per-line allocation for the common events).
#[derive(Debug, Deserialize)]
pub struct Line<'a> {
    t: u64,
    #[serde(borrow)]
    process: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    value: Option<std::borrow::Cow<'a, str>>,
    partition: Option<i32>,
    offset: Option<i64>,
}

impl Facts {
    /// The text of a value.
    pub fn show(&self, v: Value) -> String {
        match v {
            Value::Id(id) => id.to_string(),
            Value::Other(i) => format!("{:?}", self.foreign[i as usize]),
        }
    }

    fn process_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.processes.get(name) {
            return i;
        }
        let i = self.process_names.len() as u32;
        self.process_names.push(name.to_string());
        self.processes.insert(name.to_string(), i);
        i
    }

    fn value(&mut self, s: &str) -> Value {
        if let Some(id) = ValueId::parse(s) {
            return Value::Id(id);
        }
        if let Some(&i) = self.foreign_index.get(s) {
            return Value::Other(i);
        }
        let i = self.foreign.len() as u32;
        self.foreign.push(s.to_string());
        self.foreign_index.insert(s.to_string(), i);
        Value::Other(i)
    }

    /// Folds one history line in; the fast path for stored histories.
    /// Lines that carry more than offsets and values are decoded in full.
    pub fn add_line(&mut self, raw: &[u8]) -> Result<(), serde_json::Error> {
        let line: Line = serde_json::from_slice(raw)?;
        let v = line.value.as_deref();
        match (&*line.kind, v, line.partition, line.offset) {
            ("invoke", Some(v), _, _) => self.on_send(v, line.t, Outcome::Invoke),
            ("ok", Some(v), Some(p), Some(o)) => self.on_send(v, line.t, Outcome::Ok(p, o)),
            ("fail", Some(v), _, _) => self.on_send(v, line.t, Outcome::Fail),
            ("info", Some(v), _, _) => self.on_send(v, line.t, Outcome::Info),
            ("deliver", Some(v), Some(p), Some(o)) => self.on_deliver(&line.process, v, p, o),
            ("drain", Some(v), Some(p), Some(o)) => self.on_drain(v, p, o),
            ("commit", _, Some(p), Some(o)) => self.on_commit(p, o),
            _ => self.add(serde_json::from_slice::<Event>(raw)?),
        }
        Ok(())
    }

    fn tick(&mut self) {
        self.events += 1;
    }

    fn on_send(&mut self, value: &str, t: u64, outcome: Outcome) {
        self.tick();
        let Some(v) = ValueId::parse(value) else {
            return;
        };
        let s = self.sends.entry(u64::from(v.producer()), v.seq());
        match outcome {
            Outcome::Invoke => s.attempts += 1,
            Outcome::Fail => s.fails += 1,
            Outcome::Info => s.infos += 1,
            Outcome::Ok(p, o) => {
                if s.ok.is_none() {
                    s.ok = Some((p, o, t));
                }
                // acks=0 reports no offset (-1): nothing to compare.
                if o >= 0 {
                    let max = self.max_acked.entry((v.producer(), p)).or_insert(i64::MIN);
                    if o < *max {
                        self.reorders.push((v.producer(), p, o, *max));
                    }
                    *max = (*max).max(o);
                    self.see(p, o, Value::Id(v), "ack");
                }
            }
        }
    }

    fn on_deliver(&mut self, process: &str, value: &str, p: i32, o: i64) {
        self.tick();
        let v = self.value(value);
        match v {
            Value::Id(id) => {
                self.sends
                    .entry(u64::from(id.producer()), id.seq())
                    .delivered += 1
            }
            Value::Other(_) => *self.foreign_deliveries.entry(v).or_default() += 1,
        }
        self.delivered_total += 1;
        if o < 0 {
            // A queue's delivery: no position to follow.
            return;
        }
        let key = (self.process_id(process), p);
        if let Some(&last) = self.last_polled.get(&key) {
            if o <= last {
                self.backwards.push(Backwards {
                    process: process.to_string(),
                    partition: p,
                    from: last,
                    to: o,
                });
            }
        }
        self.last_polled.insert(key, o);
        self.see(p, o, v, "deliver");
        self.offsets.entry(p as u64, o as u64).processed = true;
    }

    fn on_drain(&mut self, value: &str, p: i32, o: i64) {
        self.tick();
        let v = self.value(value);
        self.drained_total += 1;
        let first = match v {
            Value::Id(id) => self
                .sends
                .entry(u64::from(id.producer()), id.seq())
                .drained_at
                .replace((p, o)),
            Value::Other(_) => self.drained_foreign.insert(v, (p, o)),
        };
        // Keep the first place; further ones are duplicates.
        if let Some(first) = first {
            match v {
                Value::Id(id) => {
                    self.sends
                        .entry(u64::from(id.producer()), id.seq())
                        .drained_at = Some(first)
                }
                Value::Other(_) => {
                    self.drained_foreign.insert(v, first);
                }
            }
            self.drained_again.entry(v).or_default().push((p, o));
        }
        if o < 0 {
            return;
        }
        self.see(p, o, v, "drain");
        self.offsets.entry(p as u64, o as u64).drained = true;
    }

    fn on_commit(&mut self, p: i32, o: i64) {
        self.tick();
        let c = self.committed.entry(p).or_insert(o);
        *c = (*c).max(o);
        let a = self.acked_commits.entry(p).or_insert(o);
        *a = (*a).max(o);
    }

    /// A member's own acknowledgement: of a position, or (a queue's
    /// message) of a value, which it takes out of the queue.
    fn on_ack(&mut self, partition: i32, offset: i64, value: Option<&str>) {
        self.tick();
        if offset >= 0 {
            self.offsets.entry(partition as u64, offset as u64).acked = true;
        }
        if let Some(id) = value.and_then(ValueId::parse) {
            self.sends.entry(u64::from(id.producer()), id.seq()).taken += 1;
        }
    }

    fn on_group_committed(&mut self, p: i32, o: i64) {
        self.tick();
        let c = self.committed.entry(p).or_insert(o);
        *c = (*c).max(o);
        self.final_committed.get_or_insert_default().insert(p, o);
    }

    /// Folds one event in.
    pub fn add(&mut self, e: Event) {
        match e.kind {
            EventKind::Invoke { value, .. } => self.on_send(&value, e.t, Outcome::Invoke),
            EventKind::Ok {
                value,
                partition,
                offset,
                ..
            } => self.on_send(&value, e.t, Outcome::Ok(partition, offset)),
            EventKind::Fail { value, .. } => self.on_send(&value, e.t, Outcome::Fail),
            EventKind::Info { value, .. } => self.on_send(&value, e.t, Outcome::Info),
            EventKind::Deliver {
                partition,
                offset,
                value,
            } => self.on_deliver(&e.process, &value, partition, offset),
            EventKind::Drain {
                partition,
                offset,
                value,
            } => self.on_drain(&value, partition, offset),
            EventKind::Commit { partition, offset } => self.on_commit(partition, offset),
            EventKind::Ack {
                partition,
                offset,
                value,
            } => self.on_ack(partition, offset, value.as_deref()),
            EventKind::GroupCommitted { partition, offset } => {
                self.on_group_committed(partition, offset);
            }
            EventKind::ReplicaRead {
                partition,
                offset,
                value,
                ..
            } => {
                // Only compared: a replica's copy never makes a value present.
                self.tick();
                let v = self.value(&value);
                self.see(partition, offset, v, "replica read");
            }
            other => {
                self.tick();
                match other {
                    EventKind::Run {
                        plan,
                        seed,
                        max_in_flight,
                        consumers,
                        queue,
                        ..
                    } => {
                        self.plan = plan;
                        self.seed = seed;
                        self.max_in_flight = max_in_flight;
                        self.consumers = consumers;
                        self.queue = queue;
                    }
                    EventKind::FaultSkipped {
                        fault,
                        line,
                        reason,
                    } => {
                        let l = self.fault_lines.entry(line).or_default();
                        l.fault = fault;
                        l.skipped += 1;
                        l.reason = reason;
                    }
                    EventKind::Assign { .. }
                    | EventKind::ConsumerStart
                    | EventKind::ConsumerCrash => {
                        // A new assignment or incarnation may legitimately start over.
                        let id = self.process_id(&e.process);
                        self.last_polled.retain(|(p, _), _| *p != id);
                    }
                    EventKind::FaultStart {
                        id,
                        fault,
                        targets,
                        detail,
                        line,
                    } => {
                        if let Some(line) = line {
                            let l = self.fault_lines.entry(line).or_default();
                            l.fault = fault.clone();
                            l.acted += 1;
                        }
                        self.faults.push(FaultWindow {
                            id,
                            fault,
                            targets,
                            detail,
                            start: e.t,
                            end: None,
                        });
                    }
                    EventKind::FaultEnd { id, .. } => {
                        if let Some(f) = self
                            .faults
                            .iter_mut()
                            .rev()
                            .find(|f| f.id == id && f.end.is_none())
                        {
                            f.end = Some(e.t);
                        }
                    }
                    EventKind::Leader { partition, leader } => {
                        self.leaders.push((e.t, partition, leader))
                    }
                    EventKind::DrainEnd {
                        complete,
                        error,
                        unreadable,
                        ..
                    } => {
                        self.drain_complete = Some(complete);
                        self.drain_error = error;
                        self.unreadable = unreadable;
                    }
                    _ => {}
                }
            }
        }
    }

    fn see(&mut self, partition: i32, offset: i64, v: Value, seen_in: &'static str) {
        let info = self.offsets.entry(partition as u64, offset as u64);
        if !info.seen {
            info.seen = true;
            info.value = v;
            return;
        }
        let first = info.value;
        // One conflict per offset is enough to name it.
        if first != v
            && !self
                .conflicts
                .iter()
                .any(|c| c.partition == partition && c.offset == offset)
        {
            self.conflicts.push(Conflict {
                partition,
                offset,
                first,
                second: v,
                seen_in,
            });
        }
    }

    /// The unreadable range holding this position, if any.
    pub fn unreadable_at(&self, partition: i32, offset: i64) -> Option<&Unreadable> {
        self.unreadable
            .iter()
            .find(|u| u.partition == partition && (u.from..u.to).contains(&offset))
    }

    /// Where the drain first found this value, if it did.
    pub fn drained_at(&self, v: Value) -> Option<(i32, i64)> {
        match v {
            Value::Id(id) => self.send(id).and_then(|s| s.drained_at),
            Value::Other(_) => self.drained_foreign.get(&v).copied(),
        }
    }

    /// Whether the drain read this value.
    pub fn was_drained(&self, v: Value) -> bool {
        self.drained_at(v).is_some()
    }

    /// Every value the drain read, with where it first found it.
    pub fn drained_values(&self) -> impl Iterator<Item = (Value, (i32, i64))> + '_ {
        let ids = self
            .sends()
            .filter_map(|(v, s)| s.drained_at.map(|at| (Value::Id(v), at)));
        ids.chain(self.drained_foreign.iter().map(|(v, at)| (*v, *at)))
    }

    /// Every harness value the history mentions, with what is known of it.
    pub fn sends(&self) -> impl Iterator<Item = (ValueId, &SendState)> {
        self.sends
            .iter()
            .map(|((p, s), st)| (ValueId::new(p as u32, s), st))
    }

    /// What is known of one harness value.
    pub fn send(&self, v: ValueId) -> Option<&SendState> {
        self.sends.get(u64::from(v.producer()), v.seq())
    }

    /// Every offset seen, with what is known of it.
    pub fn offsets(&self) -> impl Iterator<Item = ((i32, i64), &OffsetInfo)> {
        self.offsets
            .iter()
            .map(|((p, o), info)| ((p as i32, o as i64), info))
    }

    /// Faults whose window overlaps [t - before, t + after].
    pub fn faults_near(&self, t: u64, before: u64, after: u64) -> Vec<&FaultWindow> {
        let (lo, hi) = (t.saturating_sub(before), t + after);
        self.faults
            .iter()
            .filter(|f| f.start <= hi && f.end.unwrap_or(u64::MAX) >= lo)
            .collect()
    }
}

enum Outcome {
    Invoke,
    Ok(i32, i64),
    Fail,
    Info,
}
