//! Network faults for real: five node hosts in the sandbox, each running a
//! TCP listener; after each partition shape, every node tries to connect to
//! every other, and the measured matrix must mean what the shape says.
//! After heal, every connection works again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: network fault tests need root (namespaces, nft)");
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
        settings: BTreeMap::new(),
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
            Shape::IsolateLeader(_) => unreachable!(),
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
