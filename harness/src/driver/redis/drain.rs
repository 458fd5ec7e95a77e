//! The final drain of a Redis stream: read it whole with XRANGE from the
//! primary every Sentinel agrees on, and confirm with a second look (the
//! same primary, the same last id and length) that nothing moved meanwhile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::streams::StreamRangeReply;

use super::client::FIELD;
use super::{open, position, Nodes};
use crate::history::{value_of, EventKind, History};

/// What the primary says of the stream: its last generated id and length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamView {
    primary: String,
    last_id: String,
    length: u64,
}

/// One confirmed-or-not read: the view before, the entries.
type Read = (StreamView, Vec<(i64, String)>);

fn view(con: &mut redis::Connection, primary: &str, key: &str) -> Result<StreamView, String> {
    let info: redis::RedisResult<redis::streams::StreamInfoStreamReply> =
        redis::cmd("XINFO").arg("STREAM").arg(key).query(con);
    match info {
        Ok(i) => Ok(StreamView {
            primary: primary.to_string(),
            last_id: i.last_generated_id,
            length: i.length as u64,
        }),
        // The stream is not there: it holds nothing.
        Err(e) if e.to_string().contains("no such key") => Ok(StreamView {
            primary: primary.to_string(),
            last_id: "0-0".into(),
            length: 0,
        }),
        Err(e) => Err(format!("XINFO STREAM {key} on {primary}: {e}")),
    }
}

fn read(nodes: &Nodes, key: &str, timeout: Duration) -> Result<Read, String> {
    let primary = nodes.agreed_primary().map_err(|e| e.to_string())?;
    let mut con =
        open(&primary, timeout.min(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let before = view(&mut con, &primary, key)?;
    let mut records = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
            .map_err(|e| format!("XRANGE {key} on {primary}: {e}"))?;
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        for entry in &page.ids {
            let at = position(&entry.id)
                .ok_or_else(|| format!("entry id {:?} is not a position", entry.id))?;
            let payload = match entry.map.get(FIELD) {
                Some(redis::Value::BulkString(b)) => Some(b.as_slice()),
                _ => None,
            };
            records.push((at, value_of(payload)));
        }
    }
    Ok((before, records))
}

/// Reads the stream until a read is confirmed (the primary, last id and
/// length unchanged after it), then records it. Returns {0: the last
/// entry's position + 1}, or 0 for an empty stream.
pub fn drain(
    nodes: &Nodes,
    key: &str,
    timeout: Duration,
    history: &History,
) -> Result<BTreeMap<i32, i64>, String> {
    let deadline = Instant::now() + timeout;
    for attempt in 1.. {
        let why = match read(nodes, key, timeout) {
            Ok((before, records)) => {
                let after = nodes
                    .agreed_primary()
                    .map_err(|e| e.to_string())
                    .and_then(|p| {
                        let mut con =
                            open(&p, Duration::from_secs(5)).map_err(|e| e.to_string())?;
                        view(&mut con, &p, key)
                    });
                match after {
                    Ok(after) if after == before => {
                        let high = records.last().map_or(0, |(at, _)| at + 1);
                        crate::driver::record_drained(history, 0, records);
                        return Ok(BTreeMap::from([(0, high)]));
                    }
                    Ok(after) => format!(
                        "primary {} last id {} length {} became primary {} last id {} length {}",
                        before.primary,
                        before.last_id,
                        before.length,
                        after.primary,
                        after.last_id,
                        after.length
                    ),
                    Err(e) => format!("after the read: {e}"),
                }
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("drain not confirmed before the timeout: {why}"));
        }
        history.record(
            "drain",
            EventKind::Note {
                message: format!("drain attempt {attempt} not confirmed: {why}; reading again"),
            },
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    unreachable!("the attempts loop only ends by returning")
}
