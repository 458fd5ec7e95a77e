//! The history of a run: every operation and fault as it happened, written
//! as JSONL (one `Event` per line) while the run goes, so memory stays
//! bounded and a crashed run still leaves what it saw.
//!
//! Input: events from the workload, nemesis and drain. Output:
//! `history.jsonl.zst` in the run dir (zstd-compressed JSONL: `zstd -dc
//! history.jsonl.zst | jq`), and an iterator over a stored history, which
//! reads compressed and plain (`history.jsonl`, older run dirs) alike,
//! streaming. The writer ends a compressed block at least once a second,
//! so a crash loses at most the last second.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        /// The broker is a queue: messages have no positions (offsets are
        /// -1) and consumers remove what they acknowledge, so a message
        /// the group acknowledged is accounted for without the drain.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        queue: bool,
    },
    /// A send attempt starts.
    Invoke { value: String, attempt: u32 },
    /// The attempt was acknowledged at this partition and offset (-1:
    /// none given, as with acks 0 or a queue).
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
    /// A member acknowledged this message on its own (brokers with
    /// per-message acknowledgement: JetStream, Redis, RabbitMQ): the group
    /// will not be given it again. A queue's message has no offset (-1)
    /// and is named by its value.
    Ack {
        partition: i32,
        offset: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// The group's committed offset of a partition as the broker has it
    /// after the heal, once the consumers stopped (what a new member
    /// would start from).
    GroupCommitted { partition: i32, offset: i64 },
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

/// The history file a run writes (compressed).
pub const FILE: &str = "history.jsonl.zst";
/// The uncompressed history file of older run dirs.
pub const PLAIN_FILE: &str = "history.jsonl";

/// The history file in a run dir: the compressed one, else a plain one.
pub fn in_dir(dir: &Path) -> PathBuf {
    let compressed = dir.join(FILE);
    if !compressed.exists() && dir.join(PLAIN_FILE).exists() {
        return dir.join(PLAIN_FILE);
    }
    compressed
}

/// zstd's frame magic number, as the first four bytes of a file.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The zstd level: fast, and still a fraction of the JSON's size.
const LEVEL: i32 = 3;
/// The longest a written event may wait in the writer's buffers.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Appends events to the history file; cheap to clone and share.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Writer>>,
    start: Instant,
}

/// Where events go: plain JSONL, or a zstd frame over it.
enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Sink {
    fn out(&mut self) -> &mut dyn Write {
        match self {
            Sink::Plain(w) => w,
            Sink::Zstd(w) => w,
        }
    }

    /// Writes everything out, ending the frame.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Zstd(w) => w.finish()?.flush(),
        }
    }
}

struct Writer {
    /// None once closed.
    out: Option<Sink>,
    path: PathBuf,
    error: Option<String>,
    flushed: Instant,
}

impl Writer {
    fn note_error(&mut self, e: std::io::Error) {
        if self.error.is_none() {
            self.error = Some(format!("write {}: {e}", self.path.display()));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            let _ = out.finish();
        }
    }
}

impl History {
    /// Creates the file: zstd-compressed when its name ends in `.zst`.
    pub fn create(path: &Path) -> Result<History, HistoryError> {
        let io = |source| HistoryError::Io {
            verb: "create",
            path: path.into(),
            source,
        };
        let file = BufWriter::with_capacity(1 << 16, File::create(path).map_err(io)?);
        let out = if path.extension().is_some_and(|x| x == "zst") {
            Sink::Zstd(zstd::stream::write::Encoder::new(file, LEVEL).map_err(io)?)
        } else {
            Sink::Plain(file)
        };
        Ok(History {
            inner: Arc::new(Mutex::new(Writer {
                out: Some(out),
                path: path.into(),
                error: None,
                flushed: Instant::now(),
            })),
            start: Instant::now(),
        })
    }

    /// Microseconds since the history was created.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records an event now (nothing once the history is closed).
    pub fn record(&self, process: &str, kind: EventKind) {
        let event = Event {
            t: self.now(),
            process: process.to_string(),
            kind,
        };
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let due = w.flushed.elapsed() >= FLUSH_EVERY;
        let Some(out) = w.out.as_mut().map(Sink::out) else {
            return;
        };
        let mut result = serde_json::to_writer(&mut *out, &event)
            .map_err(std::io::Error::from)
            .and_then(|_| out.write_all(b"\n"));
        if due && result.is_ok() {
            result = out.flush();
        }
        if due {
            w.flushed = Instant::now();
        }
        if let Err(e) = result {
            w.note_error(e);
        }
    }

    /// Writes buffered events out (a complete block); reports the first
    /// write error, if any.
    pub fn flush(&self) -> Result<(), String> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Err(e)) = w.out.as_mut().map(|o| o.out().flush()) {
            w.note_error(e);
        }
        w.flushed = Instant::now();
        match w.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Ends the file (the compressed frame); later events are dropped.
    /// Reports the first write error, if any.
    pub fn close(&self) -> Result<(), String> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Err(e)) = w.out.take().map(Sink::finish) {
            w.note_error(e);
        }
        match w.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A stored history's text, decompressed when it is zstd (by its first
/// bytes, whatever its name), streaming.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>, HistoryError> {
    let io = |verb, source| HistoryError::Io {
        verb,
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(|e| io("open", e))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match file.read(&mut magic[n..]).map_err(|e| io("read", e))? {
            0 => break,
            k => n += k,
        }
    }
    let raw = std::io::Cursor::new(magic[..n].to_vec()).chain(file);
    if n == 4 && magic == ZSTD_MAGIC {
        let decoder = zstd::stream::read::Decoder::new(raw).map_err(|e| io("read", e))?;
        Ok(Box::new(BufReader::with_capacity(1 << 16, decoder)))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, raw)))
    }
}

/// Reads a stored history line by line.
pub fn read(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Event, HistoryError>>, HistoryError> {
    let text = open(path)?;
    let path = path.to_path_buf();
    Ok(text.lines().enumerate().filter_map(move |(i, line)| {
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

    fn sends(h: &History, n: u64) {
        for i in 0..n {
            h.record(
                "p0",
                EventKind::Invoke {
                    value: format!("p0-{i}"),
                    attempt: 1,
                },
            );
            h.record(
                "p0",
                EventKind::Ok {
                    value: format!("p0-{i}"),
                    attempt: 1,
                    partition: (i % 3) as i32,
                    offset: i as i64,
                },
            );
        }
    }

    /// The compressed history reads back event for event, is a fraction
    /// of the plain one, and a plain history still reads.
    #[test]
    fn a_compressed_history_reads_back_and_is_smaller() {
        let dir = tempfile::tempdir().unwrap();
        let (zst, plain) = (dir.path().join(FILE), dir.path().join(PLAIN_FILE));
        for path in [&zst, &plain] {
            let h = History::create(path).unwrap();
            sends(&h, 5000);
            h.close().unwrap();
            // After close, events are dropped, not appended to a finished frame.
            sends(&h, 1);
        }
        let a: Vec<Event> = read(&zst).unwrap().map(Result::unwrap).collect();
        let b: Vec<Event> = read(&plain).unwrap().map(Result::unwrap).collect();
        assert_eq!(a.len(), 10_000);
        assert_eq!(
            a.iter().map(|e| &e.kind).collect::<Vec<_>>(),
            b.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
        let (zs, ps) = (
            std::fs::metadata(&zst).unwrap().len(),
            std::fs::metadata(&plain).unwrap().len(),
        );
        assert!(zs * 4 < ps, "compressed {zs} bytes, plain {ps}");
        assert_eq!(in_dir(dir.path()), zst);
        std::fs::remove_file(&zst).unwrap();
        assert_eq!(in_dir(dir.path()), plain, "older run dirs: the plain file");
    }

    /// A crash (no close) leaves every event up to the last flush
    /// readable; the cut-off frame is then reported, not hidden.
    #[test]
    fn a_crashed_compressed_history_keeps_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let h = History::create(&path).unwrap();
        sends(&h, 1000);
        h.flush().unwrap();
        let crashed = dir.path().join("crashed.jsonl.zst");
        std::fs::copy(&path, &crashed).unwrap();
        let mut events = 0;
        let mut error = None;
        for e in read(&crashed).unwrap() {
            match e {
                Ok(_) => events += 1,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        assert_eq!(events, 2000);
        assert!(error.is_some(), "the unfinished frame is reported");
        h.close().unwrap();
    }

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
