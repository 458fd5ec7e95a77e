//! One streaming pass over a history, keeping what the properties need.
//! Memory is proportional to the number of distinct messages (and offsets).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Event, EventKind, ValueId};

/// A message value as read from a log: a harness id, or foreign bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Id(ValueId),
    Other(String),
}

impl Value {
    /// Classifies a recorded value.
    pub fn of(s: &str) -> Value {
        ValueId::parse(s).map_or_else(|| Value::Other(s.to_string()), Value::Id)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Id(v) => write!(f, "{v}"),
            Value::Other(s) => write!(f, "{s:?}"),
        }
    }
}

/// Everything known about one sent value.
#[derive(Debug, Clone, Default)]
pub struct SendState {
    pub attempts: u32,
    pub fails: u32,
    pub infos: u32,
    /// First acknowledgement: partition, offset, time.
    pub ok: Option<(i32, i64, u64)>,
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

/// An offset seen with two different values.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub partition: i32,
    pub offset: i64,
    pub first: Value,
    pub second: Value,
    /// Where the second value was seen: ack, deliver or drain.
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
    pub sends: HashMap<ValueId, SendState>,
    /// Acknowledged offsets in completion order, per (producer, partition).
    pub ack_order: HashMap<(u32, i32), Vec<i64>>,
    /// The final drain: value at each offset, and offsets of each value.
    pub drain: HashMap<(i32, i64), Value>,
    pub drain_by_value: HashMap<Value, Vec<(i32, i64)>>,
    pub drain_complete: Option<bool>,
    pub drain_error: Option<String>,
    /// Deliveries to the group: count per value, and the offsets processed.
    pub deliveries: HashMap<Value, u32>,
    pub processed: HashSet<(i32, i64)>,
    pub delivered_total: u64,
    /// Highest committed offset per partition.
    pub committed: BTreeMap<i32, i64>,
    pub faults: Vec<FaultWindow>,
    /// Value first seen at each offset (ack, delivery or drain).
    first_at: HashMap<(i32, i64), Value>,
    pub conflicts: Vec<Conflict>,
    last_polled: HashMap<(String, i32), i64>,
    pub backwards: Vec<Backwards>,
    pub events: u64,
    pub end_time: u64,
}

impl Facts {
    /// Folds one event in.
    pub fn add(&mut self, e: Event) {
        self.events += 1;
        self.end_time = self.end_time.max(e.t);
        match e.kind {
            EventKind::Run {
                plan,
                seed,
                max_in_flight,
                ..
            } => {
                self.plan = plan;
                self.seed = seed;
                self.max_in_flight = max_in_flight;
            }
            EventKind::Invoke { value, .. } => {
                if let Some(v) = ValueId::parse(&value) {
                    self.sends.entry(v).or_default().attempts += 1;
                }
            }
            EventKind::Ok {
                value,
                partition,
                offset,
                ..
            } => {
                if let Some(v) = ValueId::parse(&value) {
                    let s = self.sends.entry(v).or_default();
                    if s.ok.is_none() {
                        s.ok = Some((partition, offset, e.t));
                    }
                    // acks=0 reports no offset (-1): nothing to compare.
                    if offset >= 0 {
                        self.ack_order
                            .entry((v.producer(), partition))
                            .or_default()
                            .push(offset);
                        self.see(partition, offset, Value::Id(v), "ack");
                    }
                }
            }
            EventKind::Fail { value, .. } => {
                if let Some(v) = ValueId::parse(&value) {
                    self.sends.entry(v).or_default().fails += 1;
                }
            }
            EventKind::Info { value, .. } => {
                if let Some(v) = ValueId::parse(&value) {
                    self.sends.entry(v).or_default().infos += 1;
                }
            }
            EventKind::Deliver {
                partition,
                offset,
                value,
            } => {
                let v = Value::of(&value);
                *self.deliveries.entry(v.clone()).or_default() += 1;
                self.processed.insert((partition, offset));
                self.delivered_total += 1;
                let key = (e.process, partition);
                if let Some(&last) = self.last_polled.get(&key) {
                    if offset <= last {
                        self.backwards.push(Backwards {
                            process: key.0.clone(),
                            partition,
                            from: last,
                            to: offset,
                        });
                    }
                }
                self.last_polled.insert(key, offset);
                self.see(partition, offset, v, "deliver");
            }
            EventKind::Commit { partition, offset } => {
                let c = self.committed.entry(partition).or_insert(offset);
                *c = (*c).max(offset);
            }
            EventKind::Assign { .. } | EventKind::ConsumerStart | EventKind::ConsumerCrash => {
                // A new assignment or incarnation may legitimately start over.
                self.last_polled.retain(|(p, _), _| *p != e.process);
            }
            EventKind::FaultStart {
                id,
                fault,
                targets,
                detail,
            } => {
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
            EventKind::Drain {
                partition,
                offset,
                value,
            } => {
                let v = Value::of(&value);
                self.drain.insert((partition, offset), v.clone());
                self.drain_by_value
                    .entry(v.clone())
                    .or_default()
                    .push((partition, offset));
                self.see(partition, offset, v, "drain");
            }
            EventKind::DrainEnd {
                complete, error, ..
            } => {
                self.drain_complete = Some(complete);
                self.drain_error = error;
            }
            EventKind::Note { .. } => {}
        }
    }

    fn see(&mut self, partition: i32, offset: i64, v: Value, seen_in: &'static str) {
        match self.first_at.get(&(partition, offset)) {
            None => {
                self.first_at.insert((partition, offset), v);
            }
            Some(first) if *first != v => {
                // One conflict per offset is enough to name it.
                if !self
                    .conflicts
                    .iter()
                    .any(|c| c.partition == partition && c.offset == offset)
                {
                    self.conflicts.push(Conflict {
                        partition,
                        offset,
                        first: first.clone(),
                        second: v,
                        seen_in,
                    });
                }
            }
            Some(_) => {}
        }
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
