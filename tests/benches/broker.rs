//! Produce/consume benchmark of unlost-broker with librdkafka (rdkafka).
//! Prints figures; asserts nothing about speed.
//!
//! Run: `cargo bench -p unlost-tests --bench broker`
//! Env: BENCH_MESSAGES (default 1,000,000 for async flush; a fifth of it
//! for flush always), BENCH_FILTER (substring of scenario names).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use unlost_tests::BrokerProcess;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Counts>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

struct Scenario {
    name: &'static str,
    size: usize,
    acks: &'static str,
    flush: &'static str,
    producers: usize,
    /// One message per request, one request in flight: every ack waits for
    /// its own fsync unless group commit shares it.
    unbatched: bool,
    partitions: i32,
}

/// Sends `count` messages of `size` bytes from one producer; returns acked.
fn produce(
    bootstrap: &str,
    topic: &str,
    acks: &str,
    size: usize,
    count: u64,
    partitions: i32,
    unbatched: bool,
) -> (u64, u64) {
    let counts = Arc::new(Counts::default());
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", "60000");
    if unbatched {
        config
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .set("max.in.flight.requests.per.connection", "1");
    }
    let p: BaseProducer<Ctx> = config
        .create_with_context(Ctx(counts.clone()))
        .expect("producer");
    let payload = vec![b'x'; size];
    for i in 0..count {
        let mut record = BaseRecord::<(), _>::to(topic)
            .payload(&payload)
            .partition((i % partitions as u64) as i32);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    p.poll(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("send: {e}"),
            }
        }
        if i % 1000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    )
}

fn consume(bootstrap: &str, topic: &str, partitions: i32, expected: u64) -> u64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while n < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            if m.payload().is_some() {
                n += 1;
            }
        }
    }
    n
}

fn main() {
    let base: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    let scenarios = [
        Scenario {
            name: "100B acks=1 flush=ms:1000 1 producer",
            size: 100,
            acks: "1",
            flush: "ms:1000",
            producers: 1,
            unbatched: false,
            partitions: 8,
        },
        Scenario {
            name: "1KiB acks=1 flush=ms:1000 1 producer",
            size: 1024,
            acks: "1",
            flush: "ms:1000",
            producers: 1,
            unbatched: false,
            partitions: 8,
        },
        Scenario {
            name: "100B acks=all flush=always 1 producer",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 1,
            unbatched: false,
            partitions: 8,
        },
        Scenario {
            name: "100B acks=all flush=always 8 producers",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: false,
            partitions: 8,
        },
        Scenario {
            name: "1KiB acks=all flush=always 1 producer",
            size: 1024,
            acks: "all",
            flush: "always",
            producers: 1,
            unbatched: false,
            partitions: 8,
        },
        Scenario {
            name: "1KiB acks=all flush=always 8 producers",
            size: 1024,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: false,
            partitions: 8,
        },
        Scenario {
            name: "100B acks=all flush=always 8 unbatched 8 parts",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: true,
            partitions: 8,
        },
        Scenario {
            name: "100B acks=all flush=always 8 unbatched 1 part",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: true,
            partitions: 1,
        },
        Scenario {
            name: "100B acks=all flush=ms:1000 8 unbatched 8 parts",
            size: 100,
            acks: "all",
            flush: "ms:1000",
            producers: 8,
            unbatched: true,
            partitions: 8,
        },
    ];
    println!(
        "unlost-broker benchmark: {} cores; rdkafka producers and consumer on loopback",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "fdatasync of a 100-byte append in the data dir's file system: {:.3} ms (median of 200)",
        fsync_ms()
    );
    println!(
        "{:<48} {:>10} {:>12} {:>9} {:>14}",
        "scenario", "messages", "msgs/s", "MB/s", "consume msgs/s"
    );
    for s in scenarios.iter().filter(|s| s.name.contains(&filter)) {
        let partitions = s.partitions;
        let count = match (s.unbatched, s.flush) {
            (true, _) => base / 50,
            (false, "always") => base / 5,
            _ => base,
        };
        let parts = partitions.to_string();
        let broker = BrokerProcess::start(&["--flush", s.flush, "--default-partitions", &parts]);
        let bootstrap = broker.bootstrap();
        let topic = "bench";
        // Create the topic (auto-create on metadata) before timing.
        produce(&bootstrap, topic, "1", 10, 8, partitions, false);
        let per = count / s.producers as u64;
        let start = Instant::now();
        let handles: Vec<_> = (0..s.producers)
            .map(|_| {
                let (b, acks, size, unbatched) = (bootstrap.clone(), s.acks, s.size, s.unbatched);
                std::thread::spawn(move || {
                    produce(&b, topic, acks, size, per, partitions, unbatched)
                })
            })
            .collect();
        let (mut ok, mut failed) = (0, 0);
        for h in handles {
            let (o, f) = h.join().unwrap();
            ok += o;
            failed += f;
        }
        let secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let read = consume(&bootstrap, topic, partitions, ok + 8);
        let csecs = start.elapsed().as_secs_f64();
        println!(
            "{:<48} {:>10} {:>12.0} {:>9.1} {:>14.0}{}",
            s.name,
            ok,
            ok as f64 / secs,
            ok as f64 * s.size as f64 / secs / 1e6,
            read as f64 / csecs,
            if failed > 0 {
                format!("  ({failed} failed)")
            } else {
                String::new()
            }
        );
    }
}

/// Median latency of append + fdatasync where the brokers keep their data.
fn fsync_ms() -> f64 {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let mut times: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&[b'x'; 100]).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}
