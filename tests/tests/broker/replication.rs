//! Three-broker clusters on loopback: leader failover with acks=all and
//! min.insync.replicas=2 (nothing acknowledged is lost), the acks=1
//! negative control (acknowledged messages are lost), min.insync.replicas
//! refusing writes, a divergent replica truncating to the new leader, and
//! idempotence across a leader change.

use std::net::SocketAddr;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use unlost_tests::{partitions, replica_contents, Cluster, PartitionInfo};

use super::*;

async fn create(bootstrap: &str, name: &str, parts: i32, rf: i32, min_isr: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let topic =
        NewTopic::new(name, parts, TopicReplication::Fixed(rf)).set("min.insync.replicas", min_isr);
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("CreateTopics")
    {
        r.expect("topic created");
    }
}

fn cluster_producer(bootstrap: &str, acks: &str, idempotent: bool) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks)
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        .set("message.timeout.ms", "15000")
        .set("request.timeout.ms", "3000")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

/// Polls `f` until it returns Some, failing after `timeout` with `what`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn info(c: &mut Cluster, topic: &str) -> Vec<PartitionInfo> {
    let addr = c.any_running();
    wait_for(Duration::from_secs(10), "the topic in Metadata", || {
        let p = partitions(addr, topic);
        (!p.is_empty()).then_some(p)
    })
}

/// Produces rounds of 300 messages until `stop`; returns what was acked.
fn produce_until(
    p: FutureProducer,
    topic: &'static str,
    parts: i32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Acked>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut round = 0;
        while !stop.load(Ordering::Relaxed) {
            acked.extend(produce(&p, topic, round, 300, parts).await);
            round += 1;
        }
        acked
    })
}

/// Every replica of every partition holds the same offsets and values.
fn assert_replicas_agree(addrs: &[SocketAddr], topic: &str, parts: i32) {
    for p in 0..parts {
        let contents: Vec<_> = addrs
            .iter()
            .map(|a| replica_contents(*a, topic, p))
            .collect();
        for (i, c) in contents.iter().enumerate().skip(1) {
            let first_diff = contents[0]
                .iter()
                .zip(c)
                .find(|(a, b)| a != b)
                .map(|(a, b)| (a.0, b.0));
            assert!(
                c == &contents[0],
                "partition {p}: replica {} differs from replica 1 (lengths {} and {}, first difference at {first_diff:?})",
                i + 1,
                contents[0].len(),
                c.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_with_min_isr_2_survives_killing_each_leader_in_turn() {
    let mut c = Cluster::start(3, &["--flush", "always"]);
    let bootstrap = c.bootstrap();
    create(&bootstrap, "ha", 3, 3, "2").await;
    let stop = Arc::new(AtomicBool::new(false));
    let task = produce_until(
        cluster_producer(&bootstrap, "all", false),
        "ha",
        3,
        stop.clone(),
    );
    let mut failovers = Vec::new();
    for part in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let old = info(&mut c, "ha")[part].leader;
        let killed = Instant::now();
        c.broker(old).kill();
        let new = tokio::task::block_in_place(|| {
            wait_for(Duration::from_secs(10), "a new leader", || {
                let l = info(&mut c, "ha")[part].leader;
                (l >= 0 && l != old).then_some(l)
            })
        });
        failovers.push(killed.elapsed());
        eprintln!(
            "partition {part}: leader {old} killed, {new} leads after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| c.restart(old));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    assert!(acked.len() > 1000, "too few acknowledged: {}", acked.len());
    // The killed leaders catch up and rejoin every ISR.
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(20),
            "every ISR back to 3 members",
            || {
                info(&mut c, "ha")
                    .iter()
                    .all(|p| p.isr.len() == 3)
                    .then_some(())
            },
        )
    });
    let b = bootstrap.clone();
    let log = tokio::task::spawn_blocking(move || read_all(&b, "ha", 3))
        .await
        .unwrap();
    assert_all_present(&acked, &log);
    let addrs: Vec<SocketAddr> = c.brokers.iter().map(|b| b.addr).collect();
    tokio::task::block_in_place(|| assert_replicas_agree(&addrs, "ha", 3));
    // kcat -L shows the leaders and the ISRs.
    require_program("kcat", "kcat");
    let out = std::process::Command::new("kcat")
        .args(["-L", "-b", &bootstrap, "-t", "ha"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 brokers:"), "{text}");
    assert_eq!(text.matches("replicas: ").count(), 3, "{text}");
    assert_eq!(text.matches(", isrs: ").count(), 3, "{text}");
    eprintln!("failover times: {failovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_loses_acknowledged_messages_when_the_leader_dies() {
    // Kafka's acks=1: the leader answers after its own append. Pause both
    // followers (briefly: they stay in the ISR), let the leader acknowledge
    // writes only it has, kill it, resume the followers: one of them is
    // elected cleanly and those acknowledged writes are gone. acks=all in
    // the same window acknowledges nothing.
    let mut c = Cluster::start(3, &["--flush", "ms:60000"]);
    let bootstrap = c.bootstrap();
    create(&bootstrap, "weak", 1, 3, "1").await;
    let early = produce(
        &cluster_producer(&bootstrap, "1", false),
        "weak",
        0,
        1000,
        1,
    )
    .await;
    assert_eq!(early.len(), 1000);
    let old = info(&mut c, "weak")[0].leader;
    let leader_addr = c.broker(old).bootstrap();
    let fast = |acks: &str, timeout: &str| {
        ClientConfig::new()
            .set("bootstrap.servers", &leader_addr)
            .set("acks", acks)
            .set("message.timeout.ms", timeout)
            .set("linger.ms", "2")
            .create::<FutureProducer>()
            .unwrap()
    };
    let (p1, pall) = (fast("1", "5000"), fast("all", "400"));
    // Connect both before the pause.
    assert_eq!(produce(&p1, "weak", 1, 10, 1).await.len(), 10);
    assert_eq!(produce(&pall, "weak", 2, 10, 1).await.len(), 10);
    let followers: Vec<i32> = (1..=3).filter(|&i| i != old).collect();
    for &f in &followers {
        c.broker(f).signal(nix::sys::signal::Signal::SIGSTOP);
    }
    let paused = Instant::now();
    let weak = produce(&p1, "weak", 3, 2000, 1).await;
    let strong = produce(&pall, "weak", 4, 50, 1).await;
    c.broker(old).kill();
    for &f in &followers {
        c.broker(f).signal(nix::sys::signal::Signal::SIGCONT);
    }
    eprintln!(
        "followers paused {:?}: acks=1 acknowledged {}, acks=all {}",
        paused.elapsed(),
        weak.len(),
        strong.len()
    );
    assert!(
        !weak.is_empty(),
        "acks=1 acknowledged nothing from the lone leader"
    );
    assert!(
        strong.is_empty(),
        "acks=all acknowledged without the ISR: {strong:?}"
    );
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(10), "a new leader", || {
            let l = info(&mut c, "weak")[0].leader;
            (l >= 0 && l != old).then_some(())
        })
    });
    tokio::task::block_in_place(|| c.restart(old));
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(20), "ISR back to 3", || {
            (info(&mut c, "weak")[0].isr.len() == 3).then_some(())
        })
    });
    let b = bootstrap.clone();
    let log = tokio::task::spawn_blocking(move || read_all(&b, "weak", 1))
        .await
        .unwrap();
    assert_all_present(&early, &log);
    let present: HashSet<(i64, &String)> = log[&0].iter().map(|(o, v)| (*o, v)).collect();
    let lost = weak
        .iter()
        .filter(|a| !present.contains(&(a.offset, &a.value)))
        .count();
    eprintln!(
        "acks=1: {} acknowledged while alone, {lost} lost",
        weak.len()
    );
    assert!(
        lost > 0,
        "acks=1 lost nothing when its leader died alone: the broker does not behave like Kafka"
    );
    assert!(
        c.broker(old)
            .log_text()
            .contains("truncated log to match the leader"),
        "the old leader did not truncate its unreplicated tail"
    );
    let addrs: Vec<SocketAddr> = c.brokers.iter().map(|b| b.addr).collect();
    tokio::task::block_in_place(|| assert_replicas_agree(&addrs, "weak", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_insync_replicas_refuses_writes_with_two_of_three_brokers_gone() {
    // Five voters, so the controller keeps its majority with two down.
    let mut c = Cluster::start(5, &["--flush", "always"]);
    let bootstrap = c.bootstrap();
    create(&bootstrap, "min", 1, 3, "2").await;
    let p = cluster_producer(&bootstrap, "all", false);
    let before = produce(&p, "min", 0, 500, 1).await;
    assert_eq!(before.len(), 500, "all acknowledged while the ISR is full");
    let PartitionInfo {
        leader, replicas, ..
    } = info(&mut c, "min")[0].clone();
    let followers: Vec<i32> = replicas.iter().copied().filter(|&i| i != leader).collect();
    for &id in &followers {
        c.broker(id).kill();
    }
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(10), "ISR down to the leader", || {
            (info(&mut c, "min")[0].isr == vec![leader]).then_some(())
        })
    });
    // A raw produce gets NOT_ENOUGH_REPLICAS (19) before anything is written.
    let addr = c.broker(leader).addr;
    let mut conn = KafkaConn::connect(addr);
    let batch = unlost_broker::storage::batch::build(0, &[b"x"], 1);
    let req = kafka_protocol::messages::ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(2000)
        .with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("min"),
                ))
                .with_partition_data(vec![
                    kafka_protocol::messages::produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from(batch))),
                ]),
        ]);
    let r: kafka_protocol::messages::ProduceResponse = conn
        .call(kafka_protocol::messages::ApiKey::Produce, 7, &req)
        .unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 19);
    // librdkafka retries and finally gives up: nothing is acknowledged.
    let p = ClientConfig::new()
        .set("bootstrap.servers", c.broker(leader).bootstrap())
        .set("acks", "all")
        .set("message.timeout.ms", "3000")
        .create::<FutureProducer>()
        .unwrap();
    let during = produce(&p, "min", 1, 200, 1).await;
    assert!(
        during.is_empty(),
        "acknowledged without the ISR: {during:?}"
    );
    for &id in &followers {
        tokio::task::block_in_place(|| c.restart(id));
    }
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(20), "ISR back to 3", || {
            (info(&mut c, "min")[0].isr.len() == 3).then_some(())
        })
    });
    let b = bootstrap.clone();
    let log = tokio::task::spawn_blocking(move || read_all(&b, "min", 1))
        .await
        .unwrap();
    assert_all_present(&before, &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergent_replica_truncates_to_the_new_leader_after_an_unclean_election() {
    // Five voters: the controller keeps its majority with two replicas down.
    let mut c = Cluster::start(5, &["--flush", "always", "--unclean-leader-election"]);
    let bootstrap = c.bootstrap();
    create(&bootstrap, "div", 1, 3, "1").await;
    let strong = produce(
        &cluster_producer(&bootstrap, "all", false),
        "div",
        0,
        100,
        1,
    )
    .await;
    assert_eq!(strong.len(), 100);
    let PartitionInfo {
        leader: old,
        replicas,
        ..
    } = info(&mut c, "div")[0].clone();
    let followers: Vec<i32> = replicas.iter().copied().filter(|&i| i != old).collect();
    for &f in &followers {
        c.broker(f).kill();
    }
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(10), "ISR down to the leader", || {
            (info(&mut c, "div")[0].isr == vec![old]).then_some(())
        })
    });
    // Only the old leader gets these: its log grows past the others'.
    let solo = produce(
        &cluster_producer(&c.broker(old).bootstrap(), "1", false),
        "div",
        1,
        200,
        1,
    )
    .await;
    assert_eq!(solo.len(), 200);
    c.broker(old).kill();
    for &f in &followers {
        tokio::task::block_in_place(|| c.restart(f));
    }
    let new = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(10), "an unclean leader", || {
            let l = info(&mut c, "div")[0].leader;
            followers.contains(&l).then_some(l)
        })
    });
    let b = c.broker(new).bootstrap();
    let fresh = produce(&cluster_producer(&b, "1", false), "div", 2, 50, 1).await;
    assert_eq!(fresh.len(), 50);
    // The old leader comes back with a longer, divergent log.
    tokio::task::block_in_place(|| c.restart(old));
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(20), "ISR back to 3", || {
            (info(&mut c, "div")[0].isr.len() == 3).then_some(())
        })
    });
    let addrs: Vec<SocketAddr> = replicas.iter().map(|&r| c.broker(r).addr).collect();
    tokio::task::block_in_place(|| assert_replicas_agree(&addrs, "div", 1));
    let contents = replica_contents(c.broker(old).addr, "div", 0);
    assert_eq!(
        contents.len(),
        150,
        "100 replicated + 50 from the new leader"
    );
    for a in strong.iter().chain(&fresh) {
        assert_eq!(
            contents[a.offset as usize],
            (a.offset, a.value.clone()),
            "offset {} on the truncated replica",
            a.offset
        );
    }
    assert!(c
        .broker(old)
        .log_text()
        .contains("truncated log to match the leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotence_survives_a_paused_leader_losing_its_leadership() {
    let mut c = Cluster::start(3, &["--flush", "always"]);
    let bootstrap = c.bootstrap();
    create(&bootstrap, "idem", 1, 3, "2").await;
    let stop = Arc::new(AtomicBool::new(false));
    let task = produce_until(
        cluster_producer(&bootstrap, "all", true),
        "idem",
        1,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old = info(&mut c, "idem")[0].leader;
    c.broker(old).signal(nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(4000)).await;
    c.broker(old).signal(nix::sys::signal::Signal::SIGCONT);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    let now = info(&mut c, "idem")[0].leader;
    assert_ne!(
        now, old,
        "the paused leader should have lost its leadership"
    );
    let b = bootstrap.clone();
    let log = tokio::task::spawn_blocking(move || read_all(&b, "idem", 1))
        .await
        .unwrap();
    assert_all_present(&acked, &log);
    let mut seen = HashMap::new();
    for (_, v) in &log[&0] {
        *seen.entry(v.clone()).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates with idempotence on: {dups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_is_damaged_sets_the_damage_aside_and_rejoins_the_isr() {
    // Recovery finds a damaged batch followed by valid ones: corruption.
    // The log refuses writes (it must not overwrite or serve garbage), but
    // a follower has a leader holding the data: it moves the damage aside
    // (kept as *.damaged), copies the rest again and rejoins the ISR.
    // Before, such a replica stayed out of the ISR for good.
    let mut c = Cluster::start(3, &["--flush", "always"]);
    let bootstrap = c.bootstrap();
    create(&bootstrap, "dmg", 1, 3, "2").await;
    let p = cluster_producer(&bootstrap, "all", false);
    let mut acked = Vec::new();
    for round in 0..3 {
        acked.extend(produce(&p, "dmg", round, 300, 1).await);
    }
    let leader = info(&mut c, "dmg")[0].leader;
    let follower = (1..=3).find(|&b| b != leader).unwrap();
    c.broker(follower).kill();
    let segment = c
        .broker(follower)
        .data_dir
        .join("dmg-0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    tokio::task::block_in_place(|| c.restart(follower));
    assert!(
        c.broker(follower)
            .log_text()
            .contains("recovery found corruption"),
        "the flipped byte is found"
    );
    for round in 3..5 {
        acked.extend(produce(&p, "dmg", round, 300, 1).await);
    }
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(30),
            "the damaged follower back in the ISR",
            || (info(&mut c, "dmg")[0].isr.len() == 3).then_some(()),
        )
    });
    assert!(c
        .broker(follower)
        .log_text()
        .contains("corruption set aside"));
    let mut aside = segment.clone().into_os_string();
    aside.push(".damaged");
    let kept = std::fs::read(&aside).expect("the damaged bytes are kept");
    assert!(!kept.is_empty() && kept.len() < bytes.len());
    let b = bootstrap.clone();
    let log = tokio::task::spawn_blocking(move || read_all(&b, "dmg", 1))
        .await
        .unwrap();
    assert_all_present(&acked, &log);
    let addrs: Vec<SocketAddr> = c.brokers.iter().map(|b| b.addr).collect();
    tokio::task::block_in_place(|| assert_replicas_agree(&addrs, "dmg", 1));
}
