//! Network faults for real: five node hosts in the sandbox, each running a
//! TCP listener; after each partition shape, every node tries to connect to
//! every other, and the measured matrix must mean what the shape says.
//! After heal, every connection works again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use unlost::cluster::Cluster;
use unlost::draw::Draw;
use unlost::nemesis::network::{self, Shape};
use unlost::plan::{BrokerKind, ClusterSpec, CustomRecipe, Readiness};

const LISTEN: &str = "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen(128)\nwhile True:\n  c,_=s.accept()\n  c.close()\n";
const CONNECT: &str =
    "import socket,sys\nsocket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1.5)\n";

/// reach[a] = the nodes a can open a TCP connection to (itself included).
fn measure(cluster: &mut Cluster) -> BTreeMap<u32, BTreeSet<u32>> {
    let ids = cluster.ids();
    let mut probes = Vec::new();
    for &a in &ids {
        for &b in &ids {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", CONNECT, &format!("10.77.{b}.2"), "9092"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            probes.push((a, b, cluster.spawn_in_node(a, cmd).unwrap()));
        }
    }
    let mut reach: BTreeMap<u32, BTreeSet<u32>> =
        ids.iter().map(|i| (*i, BTreeSet::new())).collect();
    for (a, b, mut child) in probes {
        if child.wait().unwrap().success() {
            reach.get_mut(&a).unwrap().insert(b);
        }
    }
    reach
}

fn clients_reach(ids: &[u32]) -> BTreeSet<u32> {
    ids.iter()
        .copied()
        .filter(|b| {
            std::net::TcpStream::connect_timeout(
                &format!("10.77.{b}.2:9092").parse().unwrap(),
                Duration::from_millis(1500),
            )
            .is_ok()
        })
        .collect()
}

/// The groups of nodes that reach exactly each other (cliques of equal reach sets).
fn cliques(reach: &BTreeMap<u32, BTreeSet<u32>>) -> BTreeSet<BTreeSet<u32>> {
    reach.values().cloned().collect()
}

#[test]
fn partition_shapes_cut_exactly_the_connections_they_say() {
    if !unlost_tests::prerequisite(
        nix::unistd::geteuid().is_root(),
        "network fault tests need root (namespaces, nft)",
    ) {
        return;
    }
    assert!(
        Path::new("/usr/sbin/nft").exists()
            || Command::new("nft").arg("--version").output().is_ok(),
        "nft is not installed: run ci/test, or apt-get install -y nftables"
    );
    unlost::sandbox::enter().expect("sandbox");
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        broker: BrokerKind::Custom,
        nodes: 5,
        version: None,
        settings: BTreeMap::new(),
        properties: BTreeMap::new(),
        recipe: Some(CustomRecipe {
            command: vec![
                "python3".into(),
                "-c".into(),
                LISTEN.into(),
                "{host}".into(),
                "{port}".into(),
            ],
            ready: Readiness::Tcp,
            ready_timeout: Duration::from_secs(20),
        }),
    };
    let mut cluster = Cluster::start(&spec, false, dir.path()).expect("cluster");
    let ids = cluster.ids();
    let all: BTreeSet<u32> = ids.iter().copied().collect();
    let everyone = |reach: &BTreeMap<u32, BTreeSet<u32>>| reach.values().all(|r| *r == all);
    assert!(
        everyone(&measure(&mut cluster)),
        "before any fault every node reaches every node"
    );
    let mut draw = Draw::new(3, "test");
    let shapes = [
        Shape::Isolate(vec![2]),
        Shape::Halves,
        Shape::Bridge,
        Shape::MajoritiesRing,
        Shape::OneWay(Some((1, 2))),
        Shape::Apart(vec![1], vec![2, 3]),
    ];
    for (i, shape) in shapes.iter().enumerate() {
        let id = i as u32 + 1;
        let clients = matches!(shape, Shape::Isolate(_));
        let cut = network::cut(shape, &ids, clients, &mut draw);
        network::apply(id, &cut).unwrap();
        let reach = measure(&mut cluster);
        let what = format!("{shape:?} ({}): {reach:?}", cut.describe());
        match shape {
            Shape::Isolate(_) => {
                assert_eq!(reach[&2], BTreeSet::from([2]), "{what}");
                for n in [1, 3, 4, 5] {
                    assert_eq!(reach[&n], BTreeSet::from([1, 3, 4, 5]), "{what}");
                }
                assert_eq!(
                    clients_reach(&ids),
                    BTreeSet::from([1, 3, 4, 5]),
                    "clients lose the isolated node: {what}"
                );
            }
            Shape::Halves => {
                let sizes: BTreeSet<usize> = cliques(&reach).iter().map(BTreeSet::len).collect();
                assert_eq!(cliques(&reach).len(), 2, "{what}");
                assert_eq!(sizes, BTreeSet::from([2, 3]), "{what}");
                assert_eq!(clients_reach(&ids), all, "clients are not cut: {what}");
            }
            Shape::Bridge => {
                let bridges: Vec<u32> = ids.iter().copied().filter(|n| reach[n] == all).collect();
                assert_eq!(bridges.len(), 1, "{what}");
                let others: BTreeSet<BTreeSet<u32>> = ids
                    .iter()
                    .filter(|n| **n != bridges[0])
                    .map(|n| reach[n].clone())
                    .collect();
                assert_eq!(others.len(), 2, "two sides: {what}");
                for side in &others {
                    assert!(
                        side.contains(&bridges[0]),
                        "each side reaches the bridge: {what}"
                    );
                }
            }
            Shape::MajoritiesRing => {
                for n in &ids {
                    assert_eq!(reach[n].len(), 3, "node {n} reaches a majority: {what}");
                }
                assert_eq!(
                    cliques(&reach).len(),
                    5,
                    "no two nodes see the same majority: {what}"
                );
                for a in &ids {
                    for b in &reach[a] {
                        assert!(reach[b].contains(a), "symmetric: {what}");
                    }
                }
            }
            Shape::OneWay(_) => {
                assert!(!reach[&1].contains(&2), "1 cannot reach 2: {what}");
                assert!(reach[&2].contains(&1), "2 reaches 1: {what}");
                for n in [3, 4, 5] {
                    assert_eq!(reach[&n], all, "{what}");
                }
            }
            Shape::Apart(..) => {
                // A leader (1) cut from its followers (2, 3) only.
                assert_eq!(reach[&1], BTreeSet::from([1, 4, 5]), "{what}");
                for n in [2, 3] {
                    assert_eq!(reach[&n], BTreeSet::from([2, 3, 4, 5]), "{what}");
                }
                for n in [4, 5] {
                    assert_eq!(reach[&n], all, "the others keep every link: {what}");
                }
                assert_eq!(clients_reach(&ids), all, "clients are not cut: {what}");
            }
            Shape::IsolateLeader(_) | Shape::LeaderFromFollowers(_) => unreachable!(),
        }
        network::heal(id).unwrap();
        assert!(
            everyone(&measure(&mut cluster)),
            "after heal of {shape:?} every node reaches every node"
        );
        assert_eq!(clients_reach(&ids), all);
    }
    // Packet loss of 100% between two nodes is a cut; heal restores it.
    let lossy = network::loss(&[3, 4], 100);
    network::apply(9, &lossy).unwrap();
    let reach = measure(&mut cluster);
    assert!(
        !reach[&3].contains(&4) && !reach[&4].contains(&3) && reach[&3].contains(&5),
        "{reach:?}"
    );
    network::heal(9).unwrap();
    assert!(everyone(&measure(&mut cluster)));
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "heal left rules: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Produces `values` with acks=all through `bootstrap`; returns the offset
/// of each acknowledged one (None: not acknowledged within 3 s).
fn produce(bootstrap: &str, topic: &str, values: &[String]) -> Vec<Option<i64>> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("message.timeout.ms", "3000")
            .set("request.timeout.ms", "3000")
            .set("log_level", "0")
            .create()
            .unwrap();
        let sends: Vec<_> = values
            .iter()
            .map(|v| {
                p.send_result(FutureRecord::<(), _>::to(topic).payload(v).partition(0))
                    .ok()
            })
            .collect();
        let mut out = Vec::new();
        for s in sends {
            out.push(match s {
                Some(f) => f.await.ok().and_then(|r| r.ok()).map(|d| d.offset),
                None => None,
            });
        }
        out
    })
}

/// Issue 15: a leader cut off from its peers (clients still reach it) keeps
/// naming itself leader at its old leader epoch and serving its old, lower
/// high watermark, and it holds an uncommitted suffix. Just after the heal
/// it still does, until the controller reaches it. A final read that asked
/// it (as rdkafka may) reported committed messages as lost; a replica read
/// of it compared its uncommitted suffix (inconsistent-offset). The drain
/// must wait for agreement, and replica reads compare committed data only.
#[test]
fn the_final_read_ignores_a_deposed_leader_and_its_uncommitted_suffix() {
    use unlost::checker::{self, Anomaly};
    use unlost::driver::kafka::wire::{self as kafka_wire, Conn, CONSUMER};
    use unlost::driver::kafka::{drain, replicas};
    use unlost::history::{EventKind, History};
    if !unlost_tests::prerequisite(
        nix::unistd::geteuid().is_root(),
        "network fault tests need root (namespaces, nft)",
    ) {
        return;
    }
    std::env::set_var("UNLOST_BROKER_BIN", unlost_tests::binary("unlost-broker"));
    unlost::sandbox::enter().expect("sandbox");
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        broker: BrokerKind::Builtin,
        nodes: 3,
        version: None,
        settings: BTreeMap::from([("flush".into(), "always".into())]),
        properties: BTreeMap::new(),
        recipe: None,
    };
    let cluster = Cluster::start(&spec, false, dir.path()).expect("cluster");
    let ids = cluster.ids();
    let addr = |id: u32| format!("10.77.{id}.2:9092");
    let nodes: Vec<String> = ids.iter().map(|i| addr(*i)).collect();
    let topic = "t";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cluster.driver().create_topic(&unlost::plan::TopicSpec {
        name: topic.into(),
        partitions: 1,
        replication_factor: 3,
        min_insync_replicas: 2,
    }))
    .expect("create topic");
    let long = || Instant::now() + Duration::from_secs(60);
    let before = drain::wait_for_agreement(&nodes, topic, 1, long()).expect("a leader");
    let old = before.partitions[&0].clone();
    let value = |p: u32, i: u32| format!("p{p}-{i}");
    let committed: Vec<String> = (0..100).map(|i| value(0, i)).collect();
    let acked = produce(&nodes.join(","), topic, &committed);
    assert!(acked.iter().all(Option::is_some), "{acked:?}");

    // Cut the leader off from its peers, not from clients; write to it.
    let l = old.leader as u32;
    let mut draw = Draw::new(1, "test");
    network::apply(
        1,
        &network::cut(&Shape::Isolate(vec![l]), &ids, false, &mut draw),
    )
    .unwrap();
    let stale: Vec<String> = (0..20).map(|i| value(1, i)).collect();
    let on_old = produce(&addr(l), topic, &stale);
    assert!(
        on_old.iter().all(Option::is_none),
        "min ISR 2: the isolated leader acks nothing: {on_old:?}"
    );
    let others: Vec<String> = ids.iter().filter(|i| **i != l).map(|i| addr(*i)).collect();
    let new = drain::wait_for_agreement(&others, topic, 1, long()).expect("a new leader");
    let new = new.partitions[&0].clone();
    assert!(
        new.leader != old.leader && new.leader_epoch > old.leader_epoch,
        "{new:?}"
    );
    let fresh: Vec<String> = (100..150).map(|i| value(0, i)).collect();
    let acked_fresh = produce(&others.join(","), topic, &fresh);
    assert!(acked_fresh.iter().all(Option::is_some), "{acked_fresh:?}");

    // The mechanism, deterministically while the cut holds.
    let own = kafka_wire::metadata(&addr(l), topic, Duration::from_secs(3)).unwrap();
    assert_eq!(
        (own.partitions[&0].leader, own.partitions[&0].leader_epoch),
        (old.leader, old.leader_epoch),
        "the deposed leader still names itself"
    );
    let mut conn = Conn::connect(&addr(l), Duration::from_secs(3)).unwrap();
    let short = kafka_wire::fetch(&mut conn, topic, 0, 0, CONSUMER, -1).unwrap();
    assert_eq!(
        short.high_watermark, 100,
        "it serves its old high watermark, not 150"
    );
    let (suffix, _) = replicas::read_replica(&addr(l), topic, 0, 150, long()).unwrap();
    assert!(
        suffix
            .iter()
            .any(|(o, v)| *o >= 100 && v.starts_with("p1-")),
        "it holds an uncommitted suffix where the new leader has p0-100..: {:?}",
        &suffix[100.min(suffix.len())..]
    );
    let early = dir.path().join("early.jsonl");
    let history = History::create(&early).unwrap();
    assert!(
        drain::drain(&nodes, topic, 1, Duration::from_secs(3), &history).is_none(),
        "no drain while the nodes disagree"
    );
    history.flush().unwrap();
    let text = std::fs::read_to_string(&early).unwrap();
    assert!(text.contains("nodes disagree on partition 0"), "{text}");

    // Heal and read at once, as the run does.
    network::heal(1).unwrap();
    let history = History::create(&dir.path().join("history.jsonl")).unwrap();
    for (v, o) in committed
        .iter()
        .chain(&fresh)
        .zip(acked.iter().chain(&acked_fresh))
    {
        history.record(
            "p0",
            EventKind::Invoke {
                value: v.clone(),
                attempt: 1,
            },
        );
        history.record(
            "p0",
            EventKind::Ok {
                value: v.clone(),
                attempt: 1,
                partition: 0,
                offset: o.unwrap(),
            },
        );
    }
    let drained = drain::drain(&nodes, topic, 1, Duration::from_secs(60), &history)
        .expect("the drain finishes after the heal");
    assert_eq!(drained.high[&0], 150);
    let read = replicas::read_replicas(
        &ids.iter().map(|i| (*i, addr(*i))).collect(),
        topic,
        &drained,
        Duration::from_secs(60),
        &history,
    );
    assert_eq!(read, 3, "every replica read");
    history.flush().unwrap();
    let facts = checker::fold(&dir.path().join("history.jsonl")).unwrap();
    let o = checker::evaluate(&facts, &unlost::plan::Expect::defaults());
    assert_eq!(o.stats.acked, 150);
    for a in [
        Anomaly::Lost,
        Anomaly::InconsistentOffset,
        Anomaly::Unexpected,
        Anomaly::Unreadable,
    ] {
        assert_eq!(o.counts[&a], 0, "{a}: {:?}", o.examples[&a]);
    }
    assert_eq!(o.stats.drained, 150);
}
