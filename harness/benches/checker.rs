//! Checker benchmark: events/s and peak memory on a generated history.
//! Prints figures; asserts nothing about speed.
//!
//! Run: `cargo bench -p unlost --bench checker` (CHECKER_EVENTS, default
//! 10,000,000). The history: 4 producers, 8 partitions; per message an
//! invoke, an ok, a delivery and a drain read, plus commits.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use unlost::checker::{self, Anomaly};
use unlost::history::{Event, EventKind};
use unlost::plan::Expect;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let events: u64 = std::env::var("CHECKER_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let messages = events / 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let start = Instant::now();
    {
        let mut out =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        let mut write = |t: u64, process: &str, kind: EventKind| {
            serde_json::to_writer(
                &mut out,
                &Event {
                    t,
                    process: process.into(),
                    kind,
                },
            )
            .unwrap();
            out.write_all(b"\n").unwrap();
        };
        write(
            0,
            "harness",
            EventKind::Run {
                plan: "bench".into(),
                seed: 1,
                partitions: 8,
                max_in_flight: 5,
                retries: 2,
                consumers: 0,
                queue: false,
            },
        );
        let mut next = [0i64; 8];
        let mut placed = Vec::with_capacity(messages as usize);
        for i in 0..messages {
            let (p, producer) = ((i % 8) as i32, (i % 4) as u32);
            let value = format!("p{producer}-{}", i / 4);
            let o = next[p as usize];
            next[p as usize] += 1;
            write(
                i * 10,
                &format!("p{producer}"),
                EventKind::Invoke {
                    value: value.clone(),
                    attempt: 1,
                },
            );
            write(
                i * 10 + 5,
                &format!("p{producer}"),
                EventKind::Ok {
                    value: value.clone(),
                    attempt: 1,
                    partition: p,
                    offset: o,
                },
            );
            write(
                i * 10 + 7,
                "c0#1",
                EventKind::Deliver {
                    partition: p,
                    offset: o,
                    value,
                },
            );
            placed.push((p, o));
            if i % 1000 == 999 {
                write(
                    i * 10 + 8,
                    "c0#1",
                    EventKind::Commit {
                        partition: p,
                        offset: o + 1,
                    },
                );
            }
        }
        for (i, (p, o)) in placed.into_iter().enumerate() {
            let value = format!("p{}-{}", i % 4, i / 4);
            write(
                messages * 10 + i as u64,
                "drain",
                EventKind::Drain {
                    partition: p,
                    offset: o,
                    value,
                },
            );
        }
        write(
            messages * 20,
            "drain",
            EventKind::DrainEnd {
                complete: true,
                high_watermarks: BTreeMap::new(),
                error: None,
                unreadable: Vec::new(),
            },
        );
    }
    let size = std::fs::metadata(&path).unwrap().len();
    println!(
        "generated {} events ({:.0} MiB) in {:.1}s",
        messages * 4,
        size as f64 / 1048576.0,
        start.elapsed().as_secs_f64()
    );
    let rss_before = peak_rss_mib();
    let expect: BTreeMap<Anomaly, Expect> = Anomaly::ALL
        .into_iter()
        .map(|a| (a, Expect::AtMost(0)))
        .collect();
    let start = Instant::now();
    let facts = checker::fold(&path).unwrap();
    let outcome = checker::evaluate(&facts, &expect);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        outcome.stats.acked, messages,
        "the generated history checks clean"
    );
    assert!(outcome.expectations_met, "{:?}", outcome.counts);
    println!(
        "checked {} events in {:.2}s: {:.0} events/s on one thread; peak RSS {:.0} MiB (generator peak before checking: {:.0} MiB)",
        outcome.stats.events,
        secs,
        outcome.stats.events as f64 / secs,
        peak_rss_mib(),
        rss_before
    );
}
