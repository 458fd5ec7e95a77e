//! The history of a run: every operation and fault as it happened, written
//! as JSONL (one `Event` per line) while the run goes, so memory stays
//! bounded and a crashed run still leaves what it saw. Readable with jq.
//!
//! Input: events from the workload, nemesis and drain. Output:
//! `history.jsonl` in the run dir, and an iterator over a stored history.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Microseconds since the run started.
    pub t: u64,
    /// Who: `p<N>` producer, `c<N>#<incarnation>` consumer, `nemesis`,
    /// `drain`, `harness`.
    pub process: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventKind {
    /// The first line: what the checker needs to know about the run.
    Run {
        plan: String,
        seed: u64,
        partitions: i32,
        max_in_flight: u32,
        retries: u32,
        /// Consumers the plan runs (a run with consumers must deliver).
        #[serde(default)]
        consumers: u32,
    },
    /// A send attempt starts.
    Invoke { value: String, attempt: u32 },
    /// The attempt was acknowledged at this partition and offset.
    Ok {
        value: String,
        attempt: u32,
        partition: i32,
        offset: i64,
    },
    /// The attempt definitely did not write the value.
    Fail {
        value: String,
        attempt: u32,
        error: String,
    },
    /// The attempt's outcome is unknown (timeout, connection lost).
    Info {
        value: String,
        attempt: u32,
        error: String,
    },
    /// A consumer processed this message.
    Deliver {
        partition: i32,
        offset: i64,
        value: String,
    },
    /// A consumer's commit of `offset` (the next offset to read) succeeded.
    Commit { partition: i32, offset: i64 },
    /// A consumer was (re)assigned these partitions: positions may reset.
    Assign { partitions: Vec<i32> },
    /// A consumer incarnation started.
    ConsumerStart,
    /// A consumer incarnation was killed mid-batch (no commit, no close).
    ConsumerCrash,
    /// A fault began.
    FaultStart {
        id: u32,
        fault: String,
        targets: Vec<u32>,
        detail: String,
        /// The plan fault (index in `faults:`) it comes from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<u32>,
    },
    /// A fault was due but had nothing to act on (no leader, no follower,
    /// no consumer alive, a cut that cuts nothing).
    FaultSkipped {
        fault: String,
        line: u32,
        reason: String,
    },
    /// A fault's inverse completed.
    FaultEnd {
        id: u32,
        fault: String,
        targets: Vec<u32>,
    },
    /// A message read by the final drain.
    Drain {
        partition: i32,
        offset: i64,
        value: String,
    },
    /// The drain finished (or gave up).
    /// (Map keys are partition numbers as text: JSON keys are strings.)
    DrainEnd {
        complete: bool,
        high_watermarks: BTreeMap<String, i64>,
        error: Option<String>,
        /// Ranges the cluster reported but would not serve while it was
        /// stable (the drain still counts as complete: it established
        /// what the cluster can serve).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unreadable: Vec<Unreadable>,
    },
    /// A message read from one replica (node) after the drain, below the
    /// drain's high watermark (builtin broker: Kafka's debugging replica id).
    ReplicaRead {
        node: i32,
        partition: i32,
        offset: i64,
        value: String,
    },
    /// The leader of a partition changed, as Metadata reports it (-1: none).
    Leader { partition: i32, leader: i32 },
    /// Anything the harness itself wants on record.
    Note { message: String },
}

/// Positions of one partition that its leader reports (below its high
/// watermark, or up to a stream's last sequence) but did not serve while
/// the cluster agreed on its leaders: a finding about the broker, not an
/// unfinished drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unreadable {
    pub partition: i32,
    /// The first position not served.
    pub from: i64,
    /// The end the broker reported (exclusive).
    pub to: i64,
    /// How long the drain waited at `from` without progress.
    pub waited_ms: u64,
    /// What the broker answered meanwhile.
    pub reason: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} positions {}..{} reported but not served ({:.1} s without progress: {})",
            self.partition,
            self.from,
            self.to,
            self.waited_ms as f64 / 1000.0,
            self.reason
        )
    }
}

/// A message value id: producer and sequence number, `p<producer>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u64);

impl ValueId {
    /// Packs a producer index and sequence number.
    pub fn new(producer: u32, seq: u64) -> Self {
        ValueId((u64::from(producer) << 40) | (seq & ((1 << 40) - 1)))
    }
    /// The producer index.
    pub fn producer(self) -> u32 {
        (self.0 >> 40) as u32
    }
    /// The sequence number.
    pub fn seq(self) -> u64 {
        self.0 & ((1 << 40) - 1)
    }
    /// Parses `p<producer>-<seq>` (what producers put first in a payload).
    pub fn parse(s: &str) -> Option<Self> {
        let (p, seq) = s.strip_prefix('p')?.split_once('-')?;
        Some(ValueId::new(p.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for ValueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}-{}", self.producer(), self.seq())
    }
}

/// Failure to write or read a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{verb} {}: {source}", path.display())]
    Io {
        verb: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: not a history event: {source}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// Appends events to `history.jsonl`; cheap to clone and share.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Writer>>,
    start: Instant,
}

struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
    error: Option<String>,
}

impl History {
    /// Creates the file.
    pub fn create(path: &Path) -> Result<History, HistoryError> {
        let file = File::create(path).map_err(|source| HistoryError::Io {
            verb: "create",
            path: path.into(),
            source,
        })?;
        Ok(History {
            inner: Arc::new(Mutex::new(Writer {
                out: BufWriter::with_capacity(1 << 16, file),
                path: path.into(),
                error: None,
            })),
            start: Instant::now(),
        })
    }

    /// Microseconds since the history was created.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records an event now.
    pub fn record(&self, process: &str, kind: EventKind) {
        let event = Event {
            t: self.now(),
            process: process.to_string(),
            kind,
        };
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let result = serde_json::to_writer(&mut w.out, &event)
            .map_err(std::io::Error::from)
            .and_then(|_| w.out.write_all(b"\n"));
        if let Err(e) = result {
            if w.error.is_none() {
                w.error = Some(format!("write {}: {e}", w.path.display()));
            }
        }
    }

    /// Flushes buffered events; reports the first write error, if any.
    pub fn flush(&self) -> Result<(), String> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let flushed = w
            .out
            .flush()
            .map_err(|e| format!("flush {}: {e}", w.path.display()));
        match w.error.take() {
            Some(e) => Err(e),
            None => flushed,
        }
    }
}

/// Reads a stored history line by line.
pub fn read(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Event, HistoryError>>, HistoryError> {
    let file = File::open(path).map_err(|source| HistoryError::Io {
        verb: "open",
        path: path.into(),
        source,
    })?;
    let path = path.to_path_buf();
    Ok(BufReader::with_capacity(1 << 16, file)
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| {
            let line = match line {
                Ok(l) => l,
                Err(source) => {
                    return Some(Err(HistoryError::Io {
                        verb: "read",
                        path: path.clone(),
                        source,
                    }))
                }
            };
            if line.trim().is_empty() {
                return None;
            }
            Some(
                serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                    path: path.clone(),
                    line: i + 1,
                    source,
                }),
            )
        }))
}

/// The value id at the start of a payload (up to the first space):
/// values are `p<producer>-<seq>`, a space and padding.
pub fn value_of(payload: Option<&[u8]>) -> String {
    let Some(p) = payload else {
        return "<null>".into();
    };
    let id = p.split(|b| *b == b' ').next().unwrap_or_default();
    match std::str::from_utf8(id) {
        Ok(s) if !s.is_empty() && s.len() <= 64 => s.to_string(),
        _ => format!("<{} bytes: {:02x?}>", p.len(), &p[..p.len().min(8)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let h = History::create(&path).unwrap();
        h.record(
            "p0",
            EventKind::Invoke {
                value: "p0-1".into(),
                attempt: 1,
            },
        );
        h.record(
            "p0",
            EventKind::Ok {
                value: "p0-1".into(),
                attempt: 1,
                partition: 2,
                offset: 7,
            },
        );
        h.record(
            "nemesis",
            EventKind::FaultStart {
                id: 1,
                fault: "kill".into(),
                targets: vec![1],
                detail: "leader".into(),
                line: Some(0),
            },
        );
        h.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains(r#""type":"ok","value":"p0-1","attempt":1,"partition":2,"offset":7"#),
            "{text}"
        );
        let events: Vec<Event> = read(&path).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[1].kind,
            EventKind::Ok {
                value: "p0-1".into(),
                attempt: 1,
                partition: 2,
                offset: 7
            }
        );
        assert!(events[0].t <= events[2].t);
    }

    #[test]
    fn value_ids_pack_and_parse() {
        let v = ValueId::new(3, 123456);
        assert_eq!((v.producer(), v.seq()), (3, 123456));
        assert_eq!(ValueId::parse("p3-123456"), Some(v));
        assert_eq!(v.to_string(), "p3-123456");
        assert_eq!(ValueId::parse("garbage"), None);
    }
}
