//! Produce/consume benchmark of unlost-broker with librdkafka (rdkafka).
//! Prints figures; asserts nothing about speed.
//!
//! Run: `cargo bench -p unlost-tests --bench broker`
//! Env: BENCH_MESSAGES (default 1,000,000 for async flush; a fifth of it
//! for flush always), BENCH_FILTER (substring of scenario names, or
//! "failover" or "recovery"), BENCH_FAILOVERS (leader kills timed, default
//! 10), BENCH_RECOVERY_BATCHES (batches in the recovered log, default
//! 300,000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use unlost_tests::{partitions, BrokerProcess, Cluster, KafkaConn};

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
    /// Brokers in the cluster (replication factor = nodes).
    nodes: usize,
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
            nodes: 1,
        },
        Scenario {
            name: "1KiB acks=1 flush=ms:1000 1 producer",
            size: 1024,
            acks: "1",
            flush: "ms:1000",
            producers: 1,
            unbatched: false,
            partitions: 8,
            nodes: 1,
        },
        Scenario {
            name: "100B acks=all flush=always 1 producer",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 1,
            unbatched: false,
            partitions: 8,
            nodes: 1,
        },
        Scenario {
            name: "100B acks=all flush=always 8 producers",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: false,
            partitions: 8,
            nodes: 1,
        },
        Scenario {
            name: "1KiB acks=all flush=always 1 producer",
            size: 1024,
            acks: "all",
            flush: "always",
            producers: 1,
            unbatched: false,
            partitions: 8,
            nodes: 1,
        },
        Scenario {
            name: "1KiB acks=all flush=always 8 producers",
            size: 1024,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: false,
            partitions: 8,
            nodes: 1,
        },
        Scenario {
            name: "100B acks=all flush=always 8 unbatched 8 parts",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: true,
            partitions: 8,
            nodes: 1,
        },
        Scenario {
            name: "100B acks=all flush=always 8 unbatched 1 part",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 8,
            unbatched: true,
            partitions: 1,
            nodes: 1,
        },
        Scenario {
            name: "100B acks=all flush=ms:1000 8 unbatched 8 parts",
            size: 100,
            acks: "all",
            flush: "ms:1000",
            producers: 8,
            unbatched: true,
            partitions: 8,
            nodes: 1,
        },
        Scenario {
            name: "3 nodes RF3 100B acks=1 flush=ms:1000 1 producer",
            size: 100,
            acks: "1",
            flush: "ms:1000",
            producers: 1,
            unbatched: false,
            partitions: 8,
            nodes: 3,
        },
        Scenario {
            name: "3 nodes RF3 100B acks=all flush=ms:1000 1 producer",
            size: 100,
            acks: "all",
            flush: "ms:1000",
            producers: 1,
            unbatched: false,
            partitions: 8,
            nodes: 3,
        },
        Scenario {
            name: "3 nodes RF3 100B acks=1 flush=always 1 producer",
            size: 100,
            acks: "1",
            flush: "always",
            producers: 1,
            unbatched: false,
            partitions: 8,
            nodes: 3,
        },
        Scenario {
            name: "3 nodes RF3 100B acks=all flush=always 1 producer",
            size: 100,
            acks: "all",
            flush: "always",
            producers: 1,
            unbatched: false,
            partitions: 8,
            nodes: 3,
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
        "{:<52} {:>10} {:>12} {:>9} {:>14}",
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
        let flags = ["--flush", s.flush, "--default-partitions", &parts];
        // Keep the processes alive for the scenario.
        let (_single, _cluster, bootstrap) = if s.nodes == 1 {
            let b = BrokerProcess::start(&flags);
            let addr = b.bootstrap();
            (Some(b), None, addr)
        } else {
            let c = Cluster::start(s.nodes, &flags);
            let addr = c.bootstrap();
            (None, Some(c), addr)
        };
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
            "{:<52} {:>10} {:>12.0} {:>9.1} {:>14.0}{}",
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
    if "recovery".contains(&filter) || filter.is_empty() {
        recovery();
    }
    if "failover".contains(&filter) || filter.is_empty() {
        let rounds: usize = std::env::var("BENCH_FAILOVERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let mut t = failover_times(rounds);
        t.sort();
        println!(
            "failover (3 nodes, SIGKILL of the leader to the first acks=all produce on the new one): median {:.2} s, min {:.2} s, max {:.2} s over {rounds}",
            t[t.len() / 2].as_secs_f64(),
            t[0].as_secs_f64(),
            t[t.len() - 1].as_secs_f64()
        );
    }
}

/// Seconds `PartitionLog::open` takes to recover a log of `batches`
/// one-record batches of 200 bytes (as a soak's producers write them),
/// fsynced, in `dir`; and the log's size in bytes.
fn recovery_secs(dir: &std::path::Path, batches: u64) -> (f64, u64) {
    use unlost_broker::storage::{batch, LogConfig, PartitionLog};
    let payload = [b'x'; 200];
    {
        let (mut log, _) = PartitionLog::open(dir, LogConfig::default()).expect("open log");
        for _ in 0..batches {
            let mut buf = batch::build(0, &[&payload], 1_000);
            let mut headers: Vec<_> = batch::split(&buf)
                .expect("built batch")
                .into_iter()
                .map(|(_, h)| h)
                .collect();
            log.append(&mut buf, &mut headers, 1).expect("append");
        }
        log.sync().expect("fsync");
    }
    let bytes = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let start = Instant::now();
    let (log, _) = PartitionLog::open(dir, LogConfig::default()).expect("reopen log");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(log.log_end(), batches as i64, "recovery lost batches");
    (secs, bytes)
}

/// Recovery of one partition's log, on the local disk and through the lazy
/// filesystem (as in plans with `storage.lazyfs`), in a private mount
/// namespace so no mount outlives the bench.
fn recovery() {
    let batches: u64 = std::env::var("BENCH_RECOVERY_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let disk = tempfile::tempdir().unwrap();
    let (secs, bytes) = recovery_secs(disk.path(), batches);
    println!(
        "recovery of a partition log, {batches} batches ({:.0} MB), local disk: {secs:.2} s",
        bytes as f64 / 1e6
    );
    if !(nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/fuse").exists()) {
        println!("recovery through the lazy filesystem: not measured (needs root and /dev/fuse)");
        return;
    }
    std::thread::spawn(move || {
        use nix::mount::MsFlags;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("mount namespace");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("private mounts");
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let mount = unlost::lazyfs::mount(&backing, &mnt).expect("lazy filesystem");
        let (secs, _) = recovery_secs(&mnt, batches);
        println!("recovery of the same log through the lazy filesystem: {secs:.2} s");
        drop(mount);
    })
    .join()
    .unwrap();
}

/// Time from SIGKILL of a partition leader to the first acks=all produce
/// the new leader accepts (3 brokers, RF 3, flush always; raw requests sent
/// every 20 ms to every live broker, so client metadata refresh is not
/// counted). Returns each round's time.
fn failover_times(rounds: usize) -> Vec<Duration> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut c = Cluster::start(3, &["--flush", "always"]);
    produce(&c.bootstrap(), "failover", "all", 10, 10, 1, false);
    let produce_one = |addr: std::net::SocketAddr| -> bool {
        let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        else {
            return false;
        };
        drop(stream);
        let mut conn = KafkaConn::connect(addr);
        let batch = unlost_broker::storage::batch::build(0, &[b"failover"], 1);
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("failover")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(bytes::Bytes::from(batch)))])]);
        let r: Result<ProduceResponse, _> = conn.call(ApiKey::Produce, 7, &req);
        r.is_ok_and(|r| r.responses[0].partition_responses[0].error_code == 0)
    };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let leader = partitions(c.any_running(), "failover")[0].leader;
        let others: Vec<std::net::SocketAddr> = (1..=3)
            .filter(|&i| i != leader)
            .map(|i| c.broker(i).addr)
            .collect();
        let start = Instant::now();
        c.broker(leader).kill();
        'wait: loop {
            for &a in &others {
                if produce_one(a) {
                    break 'wait;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no new leader in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(start.elapsed());
        c.restart(leader);
        let deadline = Instant::now() + Duration::from_secs(30);
        while partitions(c.any_running(), "failover")[0].isr.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "killed leader did not rejoin the ISR"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    times
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
