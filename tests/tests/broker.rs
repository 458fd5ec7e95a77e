//! End-to-end tests of unlost-broker: real broker processes on loopback,
//! driven by kcat, librdkafka (rdkafka) and raw Kafka frames.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use unlost_tests::{require_program, BrokerProcess, KafkaConn};

#[path = "broker/replication.rs"]
mod replication;
#[path = "broker/robustness.rs"]
mod robustness;

/// One acknowledged message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Acked {
    partition: i32,
    offset: i64,
    value: String,
}

fn producer(bootstrap: &str, acks: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set("message.timeout.ms", "4000")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("CreateTopics");
    for r in results {
        r.expect("topic created");
    }
}

/// Sends `count` values `p<id>-<seq>` round-robin over `partitions`, up to
/// 200 in flight; returns what was acknowledged.
async fn produce(
    p: &FutureProducer,
    topic: &str,
    id: usize,
    count: usize,
    partitions: i32,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut seq = 0;
    while seq < count {
        let mut inflight = Vec::new();
        for _ in 0..200.min(count - seq) {
            let value = format!("p{id}-{seq:08}");
            let part = (seq as i32) % partitions;
            let fut = p
                .send_result(
                    FutureRecord::<(), _>::to(topic)
                        .payload(&value)
                        .partition(part),
                )
                .expect("enqueue");
            inflight.push((value, fut));
            seq += 1;
        }
        for (value, fut) in inflight {
            if let Ok(Ok(d)) = fut.await {
                acked.push(Acked {
                    partition: d.partition,
                    offset: d.offset,
                    value,
                });
            }
        }
    }
    acked
}

/// Reads every partition from the beginning to its high watermark.
fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unlost-tests-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut high = HashMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, h) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        high.insert(p, h);
    }
    consumer.assign(&tpl).unwrap();
    let mut out: BTreeMap<i32, Vec<(i64, String)>> =
        (0..partitions).map(|p| (p, Vec::new())).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |out: &BTreeMap<i32, Vec<(i64, String)>>| {
        out.iter()
            .all(|(p, v)| v.last().map_or(0, |(o, _)| o + 1) >= high[p])
    };
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "read did not reach the high watermarks {high:?}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            let value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
            out.get_mut(&m.partition())
                .unwrap()
                .push((m.offset(), value));
        }
    }
    out
}

/// Every acknowledged message is at its acknowledged offset.
fn assert_all_present(acked: &[Acked], log: &BTreeMap<i32, Vec<(i64, String)>>) {
    let index: HashMap<(i32, i64), &String> = log
        .iter()
        .flat_map(|(p, v)| v.iter().map(move |(o, val)| ((*p, *o), val)))
        .collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|a| index.get(&(a.partition, a.offset)) != Some(&&a.value))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but missing or different: {missing:?}"
    );
}

#[test]
fn kcat_round_trips_10000_lines_in_order() {
    require_program("kcat", "kcat");
    let broker = BrokerProcess::start(&["--flush", "always"]);
    let lines: String = (1..=10_000).map(|i| format!("line-{i}\n")).collect();
    let mut child = std::process::Command::new("kcat")
        .args([
            "-b",
            &broker.bootstrap(),
            "-P",
            "-t",
            "lines",
            "-X",
            "acks=all",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "kcat producer failed:\n{}",
        broker.log_text()
    );
    let out = std::process::Command::new("kcat")
        .args([
            "-b",
            &broker.bootstrap(),
            "-C",
            "-t",
            "lines",
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kcat consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got.lines().count(), 10_000);
    assert!(got == lines, "lines came back different or out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_producers_several_partitions_exactly_once() {
    let broker = BrokerProcess::start(&["--flush", "ms:100", "--segment-bytes", "16384"]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "multi", 4).await;
    let mut tasks = Vec::new();
    for id in 0..4 {
        let bootstrap = bootstrap.clone();
        tasks.push(tokio::spawn(async move {
            let p = producer(&bootstrap, "all");
            produce(&p, "multi", id, 2500, 4).await
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(
        acked.len(),
        10_000,
        "every send is acknowledged on a healthy broker"
    );
    let log = tokio::task::spawn_blocking(move || read_all(&bootstrap, "multi", 4))
        .await
        .unwrap();
    assert_all_present(&acked, &log);
    let mut seen = HashSet::new();
    for (p, entries) in &log {
        let offsets: Vec<i64> = entries.iter().map(|(o, _)| *o).collect();
        let expected: Vec<i64> = (0..entries.len() as i64).collect();
        assert_eq!(
            offsets, expected,
            "partition {p} offsets are contiguous from 0"
        );
        for (_, v) in entries {
            assert!(seen.insert(v.clone()), "{v} appears twice");
        }
    }
    assert_eq!(seen.len(), 10_000);
    // Small segments: the log rolled, and reads crossed segment boundaries.
    let segments = std::fs::read_dir(broker.data_dir.join("multi-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(segments > 1, "expected rolled segments, found {segments}");
}

/// Produces under load, SIGKILLs the broker, restarts it on the same data
/// dir, and checks that every acknowledged message is there.
async fn crash_keeps_acknowledged(flush: &str) {
    let mut broker = BrokerProcess::start(&["--flush", flush, "--segment-bytes", "262144"]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "crash", 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..3 {
        let (bootstrap, stop) = (bootstrap.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let p = producer(&bootstrap, "all");
            let mut acked = Vec::new();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = produce(&p, "crash", id * 1000 + round, 400, 3).await;
                acked.extend(got);
                round += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.kill();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 1000,
        "too few acknowledged before the kill: {}",
        acked.len()
    );
    broker.restart();
    let b = bootstrap.clone();
    let log = tokio::task::spawn_blocking(move || read_all(&b, "crash", 3))
        .await
        .unwrap();
    assert_all_present(&acked, &log);
    assert!(
        broker.log_text().contains("recovered partition"),
        "restart recovers partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_flush_always_keeps_every_acknowledged_message() {
    crash_keeps_acknowledged("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_async_flush_keeps_acknowledged_messages_in_page_cache() {
    // A process crash does not lose the page cache: only power loss would.
    crash_keeps_acknowledged("ms:60000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_sigkill() {
    let mut broker = BrokerProcess::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "offs", 2).await;
    let p = producer(&bootstrap, "1");
    produce(&p, "offs", 0, 20, 2).await;
    let consumer = |b: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", b)
            .set("group.id", "g1")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("offs", 0, Offset::Offset(7))
        .unwrap();
    tpl.add_partition_offset("offs", 1, Offset::Offset(3))
        .unwrap();
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        consumer(&b).commit(&tpl, CommitMode::Sync).expect("commit")
    })
    .await
    .unwrap();
    broker.kill();
    broker.restart();
    let b = bootstrap.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let c = consumer(&b);
        let mut want = TopicPartitionList::new();
        want.add_partition("offs", 0);
        want.add_partition("offs", 1);
        c.committed_offsets(want, Duration::from_secs(10))
            .expect("committed offsets")
    })
    .await
    .unwrap();
    let got: Vec<_> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    assert_eq!(got, vec![(0, Offset::Offset(7)), (1, Offset::Offset(3))]);
}

#[test]
fn sigterm_flushes_and_exits_cleanly() {
    let mut broker = BrokerProcess::start(&["--flush", "ms:60000"]);
    assert_eq!(broker.terminate(), Some(0));
    let log = broker.log_text();
    assert!(
        log.contains("broker started") && log.contains("broker stopped"),
        "{log}"
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_problem() {
    let out = std::process::Command::new(unlost_tests::binary("unlost-broker"))
        .args([
            "--id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "/tmp/x",
            "--flush",
            "sometimes",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid flush policy \"sometimes\""), "{err}");
    let out = std::process::Command::new(unlost_tests::binary("unlost-broker"))
        .args(["--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("id is required"));
}

#[test]
fn protocol_errors_are_answered_or_close_the_connection() {
    use kafka_protocol::messages::*;
    let mut broker = BrokerProcess::start(&[]);
    // ApiVersions newer than served: UNSUPPORTED_VERSION with the list (KIP-511).
    let mut conn = KafkaConn::connect(broker.addr);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    frame.extend_from_slice(&99i16.to_be_bytes());
    frame.extend_from_slice(&5i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    conn.send_frame(&frame).unwrap();
    let mut resp = conn.read_frame().unwrap();
    use kafka_protocol::protocol::Decodable;
    let header = ResponseHeader::decode(&mut resp, 0).unwrap();
    assert_eq!(header.correlation_id, 5);
    let av = ApiVersionsResponse::decode(&mut resp, 0).unwrap();
    assert_eq!(av.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(av
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16 && k.max_version == 9));

    // Produce with a corrupted batch: CORRUPT_MESSAGE, nothing appended.
    let mut conn = KafkaConn::connect(broker.addr);
    let mut batch = unlost_broker::storage::batch::build(0, &[b"hello"], 1);
    let last = batch.len() - 1;
    batch[last] ^= 1;
    let _: MetadataResponse = conn
        .call(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("c"),
                )))]))
                .with_allow_auto_topic_creation(true),
        )
        .unwrap();
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(
                kafka_protocol::protocol::StrBytes::from_static_str("c"),
            ))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(bytes::Bytes::from(batch))),
            ])]);
    let r: ProduceResponse = conn.call(ApiKey::Produce, 7, &produce).unwrap();
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 2,
        "CORRUPT_MESSAGE"
    );

    // Unknown API key, unsupported version, oversized and negative lengths:
    // the connection is closed, the broker keeps serving.
    for raw in [
        [
            &10i32.to_be_bytes()[..],
            &999i16.to_be_bytes(),
            &0i16.to_be_bytes(),
            &1i32.to_be_bytes(),
            &[0, 0],
        ]
        .concat(),
        [
            &10i32.to_be_bytes()[..],
            &(ApiKey::DeleteTopics as i16).to_be_bytes(),
            &1i16.to_be_bytes(),
            &1i32.to_be_bytes(),
            &[0, 0],
        ]
        .concat(),
        (200i32 << 20).to_be_bytes().to_vec(),
        // Metadata v1 declaring 2^31-1 topics: a decoder that trusts the count
        // asks for ~150 GB, which aborts a process on the system allocator.
        [
            &12i32.to_be_bytes()[..],
            &3i16.to_be_bytes(),
            &1i16.to_be_bytes(),
            &1i32.to_be_bytes(),
            &(-1i16).to_be_bytes(),
            &i32::MAX.to_be_bytes(),
        ]
        .concat(),
        (-5i32).to_be_bytes().to_vec(),
    ] {
        let mut conn = KafkaConn::connect(broker.addr);
        conn.send_raw(&raw).unwrap();
        assert!(
            conn.read_to_close().unwrap().is_empty(),
            "closed without an answer"
        );
    }
    assert!(
        broker.is_running(),
        "broker survived bad frames:\n{}",
        broker.log_text()
    );
    let mut conn = KafkaConn::connect(broker.addr);
    let ok: ApiVersionsResponse = conn
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .unwrap();
    assert_eq!(ok.error_code, 0);
    let log = broker.log_text();
    assert!(log.contains("unknown API key 999"), "{log}");
    assert!(log.contains("request size 209715200 is outside"), "{log}");
}

/// Sends 3,000 values while the broker is paused (SIGSTOP) for longer than
/// the producer's timeout. With idempotence, librdkafka retries requests
/// itself (same sequence numbers). Without, the application resends a value
/// whose send timed out, while the paused broker still holds the first
/// request. Returns (acknowledged, copies of each value, broker log).
async fn produce_through_a_pause(idempotent: bool) -> (Vec<Acked>, HashMap<String, usize>, String) {
    // flush always: a batch is appended, then its answer waits for the
    // fsync; a pause in that window loses the answer of a stored batch.
    let mut broker = BrokerProcess::start(&["--flush", "always"]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "idem", 1).await;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5");
    if idempotent {
        config
            .set("enable.idempotence", "true")
            .set("request.timeout.ms", "800")
            .set("message.timeout.ms", "30000");
    } else {
        config
            .set("enable.idempotence", "false")
            .set("message.send.max.retries", "0")
            .set("message.timeout.ms", "800");
    }
    let p: FutureProducer = config.create().unwrap();
    let sender = tokio::spawn(async move {
        let mut acked = Vec::new();
        for seq in 0..3000 {
            let value = format!("p0-{seq:08}");
            for _attempt in 0..20 {
                let record = FutureRecord::<(), _>::to("idem")
                    .payload(&value)
                    .partition(0);
                match p.send(record, Duration::from_secs(0)).await {
                    Ok(d) => {
                        acked.push(Acked {
                            partition: d.partition,
                            offset: d.offset,
                            value: value.clone(),
                        });
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            if seq % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        acked
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        broker.signal(nix::sys::signal::Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        broker.signal(nix::sys::signal::Signal::SIGCONT);
    }
    let acked = sender.await.unwrap();
    let b = bootstrap.clone();
    let log = tokio::task::spawn_blocking(move || read_all(&b, "idem", 1))
        .await
        .unwrap();
    assert_all_present(&acked, &log);
    let mut copies: HashMap<String, usize> = HashMap::new();
    for (_, v) in &log[&0] {
        *copies.entry(v.clone()).or_default() += 1;
    }
    (acked, copies, broker.log_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_retries_leave_no_duplicates() {
    let (acked, copies, log) = produce_through_a_pause(true).await;
    assert_eq!(acked.len(), 3000, "every send is acknowledged in the end");
    let dups: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "idempotence must prevent duplicates: {:?}",
        &dups[..dups.len().min(5)]
    );
    assert_eq!(copies.len(), 3000);
    let _ = log;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_without_idempotence_duplicate() {
    let (acked, copies, _) = produce_through_a_pause(false).await;
    assert_eq!(acked.len(), 3000);
    let dups = copies.values().filter(|n| **n > 1).count();
    assert!(dups > 0, "without idempotence a resent value whose first request the paused broker still held is stored twice");
}

#[test]
fn idempotent_batches_are_deduplicated_across_restarts_and_gaps_refused() {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use unlost_broker::storage::batch;
    let mut broker = BrokerProcess::start(&["--flush", "always"]);
    let topic = || TopicName(StrBytes::from_static_str("dedup"));
    let mut conn = KafkaConn::connect(broker.addr);
    let _: MetadataResponse = conn
        .call(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(topic()))]))
                .with_allow_auto_topic_creation(true),
        )
        .unwrap();
    let init: InitProducerIdResponse = conn
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_timeout_ms(60000),
        )
        .unwrap();
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    let send = |conn: &mut KafkaConn, values: &[&[u8]], epoch: i16, seq: i32| -> (i16, i64) {
        let mut b = batch::build(0, values, 1);
        batch::set_producer(&mut b, pid, epoch, seq);
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from(b))),
                ])]);
        let r: ProduceResponse = conn.call(ApiKey::Produce, 7, &req).unwrap();
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    assert_eq!(send(&mut conn, &[b"a", b"b"], epoch, 0), (0, 0));
    assert_eq!(send(&mut conn, &[b"c"], epoch, 2), (0, 2));
    assert_eq!(
        send(&mut conn, &[b"a", b"b"], epoch, 0),
        (0, 0),
        "a retry gets its first answer"
    );
    assert_eq!(
        send(&mut conn, &[b"x"], epoch, 7).0,
        45,
        "a gap is OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    // The state is rebuilt from the log after a crash.
    broker.kill();
    broker.restart();
    let mut conn = KafkaConn::connect(broker.addr);
    assert_eq!(
        send(&mut conn, &[b"c"], epoch, 2),
        (0, 2),
        "a retry after a restart gets its first answer"
    );
    assert_eq!(send(&mut conn, &[b"d"], epoch, 3), (0, 3));
    let bumped: InitProducerIdResponse = conn
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_transaction_timeout_ms(60000),
        )
        .unwrap();
    assert_eq!(
        (bumped.producer_id.0, bumped.producer_epoch),
        (pid, epoch + 1)
    );
    assert_eq!(send(&mut conn, &[b"e"], epoch + 1, 0), (0, 4));
    assert_eq!(
        send(&mut conn, &[b"f"], epoch, 4).0,
        47,
        "an old epoch is INVALID_PRODUCER_EPOCH"
    );
    let other: InitProducerIdResponse = conn
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_timeout_ms(60000),
        )
        .unwrap();
    assert_ne!(
        other.producer_id.0, pid,
        "ids are not reused after a restart"
    );
    let log = read_all(&broker.bootstrap(), "dedup", 1);
    let values: Vec<&str> = log[&0].iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        values,
        vec!["a", "b", "c", "d", "e"],
        "each batch stored once"
    );
    assert!(broker
        .log_text()
        .contains("idempotent retry: already stored"));
}

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .create()
        .unwrap();
    c.subscribe(&["members"]).unwrap();
    c
}

/// Polls the consumers round-robin until `want` distinct values arrived.
fn poll_until(consumers: &[&BaseConsumer], seen: &mut BTreeMap<String, usize>, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} values consumed",
            seen.len()
        );
        for (i, c) in consumers.iter().enumerate() {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                seen.insert(String::from_utf8_lossy(m.payload().unwrap()).into(), i);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_consumers_share_partitions_and_take_over_when_one_leaves() {
    let broker = BrokerProcess::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "members", 4).await;
    let p = producer(&bootstrap, "all");
    produce(&p, "members", 0, 400, 4).await;
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let (c1, c2) = (group_consumer(&b, "share"), group_consumer(&b, "share"));
        let mut seen = BTreeMap::new();
        poll_until(&[&c1, &c2], &mut seen, 400);
        let a1 = c1.assignment().unwrap().count();
        let a2 = c2.assignment().unwrap().count();
        assert_eq!(a1 + a2, 4, "every partition has one owner");
        assert!(
            a1 > 0 && a2 > 0,
            "both members got partitions: {a1} and {a2}"
        );
        // One member leaves (close sends LeaveGroup): the other takes all.
        drop(c1);
        let p2: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        for i in 0..200 {
            let v = format!("after-{i}");
            p2.send(
                rdkafka::producer::BaseRecord::<(), _>::to("members")
                    .payload(&v)
                    .partition(i % 4),
            )
            .unwrap();
        }
        rdkafka::producer::Producer::flush(&p2, Duration::from_secs(10)).unwrap();
        poll_until(&[&c2], &mut seen, 600);
        assert_eq!(c2.assignment().unwrap().count(), 4);
    })
    .await
    .unwrap();
}

#[test]
fn kcat_consumes_as_a_group_and_resumes_from_committed_offsets() {
    require_program("kcat", "kcat");
    let broker = BrokerProcess::start(&["--default-partitions", "3"]);
    // kcat's stdout, and its stderr (librdkafka's debug log when asked).
    let run = |args: &[&str], input: Option<&str>| -> (String, String) {
        let mut cmd = std::process::Command::new("kcat");
        cmd.arg("-b")
            .arg(broker.bootstrap())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        if let Some(text) = input {
            stdin.write_all(text.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // 100 messages in each partition, so the group commits an offset for
    // every partition. (Left to librdkafka's sticky partitioner, a
    // partition sometimes got none of the 300: no commit there, and the
    // resumed member started it at the end under kcat's default
    // auto.offset.reset=latest, skipping the new messages in it. That was
    // this test's flake, about 1 run in 25; the broker was right.)
    for p in 0..3 {
        let part: String = (1..=300)
            .filter(|i| i % 3 == p)
            .map(|i| format!("{i}\n"))
            .collect();
        run(
            &["-P", "-t", "gt", "-p", &p.to_string(), "-X", "acks=all"],
            Some(&part),
        );
    }
    let (got, _) = run(&["-G", "kg", "gt", "-q", "-e", "-o", "beginning"], None);
    assert_eq!(
        got.lines().count(),
        300,
        "the group consumer reads everything"
    );
    // The group's commits are stored (100 per partition) before the next
    // member starts: a failure here means a commit was lost, a failure
    // below that resuming ignored stored offsets.
    let committed = || -> Vec<i64> {
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        use kafka_protocol::messages::{
            ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;
        let mut conn = KafkaConn::connect(broker.addr);
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("kg")))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("gt")))
                .with_partition_indexes(vec![0, 1, 2])]));
        let r: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 1, &req).unwrap();
        r.topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| (p.partition_index, p.committed_offset))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed() != [100, 100, 100] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        committed(),
        [100, 100, 100],
        "the first member's commits are stored, one per partition"
    );
    let second: String = (301..=350).map(|i| format!("{i}\n")).collect();
    run(&["-P", "-t", "gt", "-X", "acks=all"], Some(&second));
    let (out, debug) = run(
        &["-G", "kg", "gt", "-q", "-e", "-d", "cgrp,fetch,topic"],
        None,
    );
    let got: Vec<u32> = out.lines().map(|l| l.parse().unwrap()).collect();
    let mut got = got;
    got.sort_unstable();
    let log = broker.log_text();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    assert_eq!(
        got,
        (301..=350).collect::<Vec<_>>(),
        "the group resumes from its committed offsets; broker log, newest first:\n{}\nkcat's offsets and EOFs:\n{}",
        tail.join("\n"),
        debug
            .lines()
            .filter(|l| ["OFFSET", "EOF", "RESET", "FETCHSTART", "ASSIGN", "VALIDAT", "LEADER"]
                .iter()
                .any(|w| l.contains(w)))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
