//! The final drain: after healing, read every partition from offset 0 up to
//! its high watermark with a fresh client (no group), within a timeout. A
//! drain that cannot finish leaves the verdict unknown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::value_of;
use crate::history::{EventKind, History};

/// Reads everything; returns the high watermarks when every partition
/// reached its own (None: the drain did not finish).
pub fn drain(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    history: &History,
) -> Option<BTreeMap<i32, i64>> {
    let deadline = Instant::now() + timeout;
    let result = (|| -> Result<BTreeMap<i32, i64>, String> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "unlost-drain")
            .set("enable.auto.commit", "false")
            .set("log_level", "0")
            // Reconnect quickly after a node restarts (default backoff grows to 10 s).
            .set("reconnect.backoff.max.ms", "1000")
            .create()
            .map_err(|e| format!("drain client: {e}"))?;
        let mut high = BTreeMap::new();
        for p in 0..partitions {
            loop {
                match c.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                    Ok((_, h)) => {
                        high.insert(p, h);
                        break;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("high watermark of partition {p}: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        c.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
        let mut next: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
        while next.iter().any(|(p, n)| n < &high[p]) {
            if Instant::now() >= deadline {
                let behind: Vec<String> = next
                    .iter()
                    .filter(|(p, n)| *n < &high[p])
                    .map(|(p, n)| format!("{p}: {n}/{}", high[p]))
                    .collect();
                return Err(format!(
                    "drain timed out with partitions behind: {}",
                    behind.join(", ")
                ));
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                history.record(
                    "drain",
                    EventKind::Drain {
                        partition: m.partition(),
                        offset: m.offset(),
                        value: value_of(m.payload()),
                    },
                );
                next.insert(m.partition(), m.offset() + 1);
            }
        }
        Ok(high)
    })();
    match result {
        Ok(high) => {
            let named = high.iter().map(|(p, h)| (p.to_string(), *h)).collect();
            history.record(
                "drain",
                EventKind::DrainEnd {
                    complete: true,
                    high_watermarks: named,
                    error: None,
                },
            );
            Some(high)
        }
        Err(e) => {
            history.record(
                "drain",
                EventKind::DrainEnd {
                    complete: false,
                    high_watermarks: BTreeMap::new(),
                    error: Some(e),
                },
            );
            None
        }
    }
}
