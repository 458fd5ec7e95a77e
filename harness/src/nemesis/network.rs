//! Network faults: partitions and packet loss as nftables rules in the
//! switch namespace (the harness's own, where every packet between node
//! hosts is forwarded).
//!
//! A fault is data first: `Cut` (which directed node pairs lose packets,
//! which nodes the clients lose) computed from a `Shape` by pure code; then
//! one nft table per fault (`inet unlost_f<id>`) holds its rules, so heal
//! removes exactly what the fault added. Symmetric cuts drop every packet
//! between two nodes; a one-way cut drops packets A sends on connections A
//! opens (`ct direction original`), so A cannot reach B while B still
//! reaches A.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

pub use crate::plan::value::{parse_shape, Shape};

use super::NemesisError;
use crate::draw::Draw;
use crate::sandbox::node_addr;

/// Which packets a fault drops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    /// (from, to): packets from `from` to `to` are dropped.
    pub pairs: BTreeSet<(u32, u32)>,
    /// Drop only packets on connections `from` opened (one-way).
    pub one_way: bool,
    /// Nodes the harness's clients cannot reach.
    pub clients: Vec<u32>,
    /// Percent of packets dropped (100: all).
    pub percent: u32,
    /// The groups of nodes that still see each other, for the record.
    pub groups: Vec<Vec<u32>>,
}

impl Cut {
    /// Whether `a` can open a TCP connection to `b` under this cut.
    pub fn reachable(&self, a: u32, b: u32) -> bool {
        a == b || !self.pairs.contains(&(a, b))
    }

    /// A short description: groups, or A>B for one-way.
    pub fn describe(&self) -> String {
        let mut d = if self.one_way {
            self.pairs
                .iter()
                .map(|(a, b)| format!("{a}>{b}"))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            format!("{:?}", self.groups)
        };
        if !self.clients.is_empty() {
            d += &format!(" clients cut from {:?}", self.clients);
        }
        if self.percent < 100 {
            d += &format!(" {}% of packets", self.percent);
        }
        d
    }
}

fn shuffled(nodes: &[u32], draw: &mut Draw) -> Vec<u32> {
    let mut pool = nodes.to_vec();
    let mut out = Vec::new();
    while !pool.is_empty() {
        out.push(pool.remove(draw.value(0..pool.len())));
    }
    out
}

/// Cuts between groups: nodes in different groups lose each other; a node
/// in several groups (a bridge) sees all of them.
fn between(groups: Vec<Vec<u32>>, nodes: &[u32]) -> Cut {
    let mut pairs = BTreeSet::new();
    for &a in nodes {
        for &b in nodes {
            let together = groups.iter().any(|g| g.contains(&a) && g.contains(&b));
            if a != b && !together {
                pairs.insert((a, b));
            }
        }
    }
    let groups = groups.into_iter().map(|mut g| {
        g.sort_unstable();
        g
    });
    Cut {
        pairs,
        one_way: false,
        clients: Vec::new(),
        percent: 100,
        groups: groups.collect(),
    }
}

/// The cut a shape makes among `nodes` (a leader already resolved into
/// `Isolate`). `clients`: the clients lose the smaller side too.
pub fn cut(shape: &Shape, nodes: &[u32], clients: bool, draw: &mut Draw) -> Cut {
    let n = nodes.len();
    let mut c = match shape {
        // Resolved at run time (into Isolate and Apart); nothing to cut
        // without the leader.
        Shape::IsolateLeader(_) | Shape::LeaderFromFollowers(_) => {
            between(vec![nodes.to_vec()], nodes)
        }
        Shape::Apart(a, b) => {
            let rest: Vec<u32> = nodes
                .iter()
                .copied()
                .filter(|x| !a.contains(x) && !b.contains(x))
                .collect();
            let side = |s: &[u32]| [s, &rest[..]].concat();
            between(vec![side(a), side(b)], nodes)
        }
        Shape::Isolate(ids) => {
            let rest: Vec<u32> = nodes.iter().copied().filter(|x| !ids.contains(x)).collect();
            between(vec![ids.clone(), rest], nodes)
        }
        Shape::Halves => {
            let s = shuffled(nodes, draw);
            let (a, b) = s.split_at(n / 2);
            between(vec![a.to_vec(), b.to_vec()], nodes)
        }
        Shape::Bridge => {
            let s = shuffled(nodes, draw);
            let mid = n / 2;
            between(
                vec![s[..=mid.min(n - 1)].to_vec(), s[mid.min(n - 1)..].to_vec()],
                nodes,
            )
        }
        Shape::MajoritiesRing => {
            let s = shuffled(nodes, draw);
            let reach = n / 2 / 2 + (n / 2) % 2;
            let mut pairs = BTreeSet::new();
            let mut groups = Vec::new();
            for i in 0..n {
                let mut g = Vec::new();
                for j in 0..n {
                    let d = (i as i64 - j as i64)
                        .rem_euclid(n as i64)
                        .min((j as i64 - i as i64).rem_euclid(n as i64))
                        as usize;
                    if d <= reach {
                        g.push(s[j]);
                    } else {
                        pairs.insert((s[i], s[j]));
                    }
                }
                g.sort_unstable();
                groups.push(g);
            }
            Cut {
                pairs,
                one_way: false,
                clients: Vec::new(),
                percent: 100,
                groups,
            }
        }
        Shape::OneWay(given) => {
            let (a, b) = given.unwrap_or_else(|| {
                let s = shuffled(nodes, draw);
                (s[0], s[1 % n])
            });
            let mut pairs = BTreeSet::new();
            if a != b {
                pairs.insert((a, b));
            }
            Cut {
                pairs,
                one_way: true,
                clients: Vec::new(),
                percent: 100,
                groups: vec![nodes.to_vec()],
            }
        }
    };
    c.groups.retain(|g| !g.is_empty());
    if clients {
        // The clients lose the isolated nodes, or else the smaller side.
        c.clients = match shape {
            Shape::Isolate(ids) | Shape::Apart(ids, _) => ids.clone(),
            _ if c.groups.len() >= 2 => c
                .groups
                .iter()
                .min_by_key(|g| g.len())
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
    }
    c
}

/// Packet loss of `percent` between every pair of `nodes`.
pub fn loss(nodes: &[u32], percent: u32) -> Cut {
    let mut c = between(nodes.iter().map(|n| vec![*n]).collect(), nodes);
    c.percent = percent;
    c.groups = vec![nodes.to_vec()];
    c
}

/// The nft script of fault `id`.
pub fn script(id: u32, c: &Cut) -> String {
    let sample = if c.percent < 100 {
        format!("numgen random mod 100 < {} ", c.percent)
    } else {
        String::new()
    };
    let ct = if c.one_way {
        "ct direction original "
    } else {
        ""
    };
    let mut s = format!("table inet unlost_f{id} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n");
    for (a, b) in &c.pairs {
        s += &format!(
            "    ip saddr {} ip daddr {} {ct}{sample}drop\n",
            node_addr(*a),
            node_addr(*b)
        );
    }
    s += "  }\n";
    if !c.clients.is_empty() {
        s += "  chain output {\n    type filter hook output priority 0; policy accept;\n";
        for n in &c.clients {
            s += &format!("    ip daddr {} {sample}drop\n", node_addr(*n));
        }
        s += "  }\n  chain input {\n    type filter hook input priority 0; policy accept;\n";
        for n in &c.clients {
            s += &format!("    ip saddr {} {sample}drop\n", node_addr(*n));
        }
        s += "  }\n";
    }
    s + "}\n"
}

fn nft(stdin: Option<&str>, args: &[&str]) -> Result<(), NemesisError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NemesisError::NoNft(e.to_string()))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(|e| NemesisError::Nft {
                command: args.join(" "),
                reason: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| NemesisError::Nft {
        command: args.join(" "),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NemesisError::Nft {
            command: args.join(" "),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The network half of node placement (`cluster::Placement`): cutting
/// and healing the links between nodes, and between nodes and clients.
/// Where nodes run on other machines, this is where iptables over SSH or
/// Chaos Mesh's NetworkChaos plug in (docs/scale-out.md).
pub trait Links: Send + Sync {
    /// Drops what `cut` says, as fault `fault`. Blocking.
    fn cut(&self, fault: u32, cut: &Cut) -> Result<(), NemesisError>;
    /// Removes fault `fault`'s drops (all of them, nothing else). Blocking.
    fn heal(&self, fault: u32) -> Result<(), NemesisError>;
}

/// nftables rules in the sandbox's switch namespace (the only `Links`
/// today): one table per fault, so healing one never touches another.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalNft;

impl Links for LocalNft {
    fn cut(&self, fault: u32, cut: &Cut) -> Result<(), NemesisError> {
        apply(fault, cut)
    }

    fn heal(&self, fault: u32) -> Result<(), NemesisError> {
        heal(fault)
    }
}

/// Installs fault `id`'s rules.
pub fn apply(id: u32, c: &Cut) -> Result<(), NemesisError> {
    nft(Some(&script(id, c)), &["-f", "-"])
}

/// Removes fault `id`'s rules (all of them, nothing else).
pub fn heal(id: u32) -> Result<(), NemesisError> {
    nft(None, &["delete", "table", "inet", &format!("unlost_f{id}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apart_cuts_only_the_links_between_its_two_sides() {
        let nodes = [1, 2, 3, 4, 5];
        let shape = Shape::Apart(vec![1], vec![2, 3]);
        let c = cut(&shape, &nodes, false, &mut Draw::new(1, "t"));
        let want: BTreeSet<(u32, u32)> = [(1, 2), (2, 1), (1, 3), (3, 1)].into();
        assert_eq!(c.pairs, want, "nodes 4 and 5 keep every link");
        let c = cut(&shape, &nodes, true, &mut Draw::new(1, "t"));
        assert_eq!(c.clients, vec![1], "with clients: the leader's side");
        assert!(Shape::Apart(vec![1], vec![])
            .cuts_nothing(5, false)
            .is_some());
        assert!(Shape::LeaderFromFollowers(None)
            .cuts_nothing(1, false)
            .is_some());
        assert!(Shape::LeaderFromFollowers(None)
            .cuts_nothing(3, false)
            .is_none());
    }

    const NODES: [u32; 5] = [1, 2, 3, 4, 5];

    /// Validation refuses a shape that cuts nothing (`Shape::cuts_nothing`):
    /// it must say so exactly when the cut is empty, on 1 to 9 nodes.
    #[test]
    fn validation_knows_which_shapes_cut_nothing() {
        for n in 1..=9u32 {
            let nodes: Vec<u32> = (1..=n).collect();
            let mut shapes = vec![
                Shape::Halves,
                Shape::Bridge,
                Shape::MajoritiesRing,
                Shape::OneWay(None),
                Shape::Isolate(nodes.clone()),
                Shape::Isolate(vec![1]),
                Shape::Isolate(vec![1, 1]),
                Shape::OneWay(Some((1, 1))),
            ];
            if n >= 2 {
                shapes.push(Shape::OneWay(Some((1, 2))));
            }
            for shape in shapes {
                for seed in 0..5 {
                    let mut d = Draw::new(seed, "t");
                    let c = cut(&shape, &nodes, false, &mut d);
                    assert_eq!(
                        c.pairs.is_empty(),
                        shape.cuts_nothing(n, false).is_some(),
                        "{shape:?} on {n} nodes: {:?}",
                        c.pairs
                    );
                }
            }
            // isolate-leader is resolved to the leader's node at run time.
            let c = cut(
                &Shape::Isolate(vec![n]),
                &nodes,
                false,
                &mut Draw::new(1, "t"),
            );
            assert_eq!(
                c.pairs.is_empty(),
                Shape::IsolateLeader(None).cuts_nothing(n, false).is_some()
            );
            // With clients, isolating cuts the clients off the isolated nodes.
            let c = cut(
                &Shape::Isolate(nodes.clone()),
                &nodes,
                true,
                &mut Draw::new(1, "t"),
            );
            assert!(!c.clients.is_empty());
            assert!(Shape::Isolate(nodes.clone())
                .cuts_nothing(n, true)
                .is_none());
        }
    }

    #[test]
    fn shapes_cut_what_they_say() {
        let mut d = Draw::new(1, "t");
        let c = cut(&Shape::Isolate(vec![2]), &NODES, true, &mut d);
        assert!(!c.reachable(2, 1) && !c.reachable(1, 2) && c.reachable(1, 3));
        assert_eq!(c.clients, vec![2]);
        let c = cut(&Shape::Halves, &NODES, false, &mut d);
        assert_eq!(
            c.groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let c = cut(&Shape::Bridge, &NODES, false, &mut d);
        let bridge: Vec<u32> = NODES
            .iter()
            .copied()
            .filter(|n| c.groups.iter().all(|g| g.contains(n)))
            .collect();
        assert_eq!(bridge.len(), 1);
        assert!(NODES
            .iter()
            .all(|n| c.reachable(bridge[0], *n) && c.reachable(*n, bridge[0])));
        let c = cut(&Shape::MajoritiesRing, &NODES, false, &mut d);
        for n in NODES {
            let sees = NODES.iter().filter(|m| c.reachable(n, **m)).count();
            assert_eq!(sees, 3, "node {n} sees a majority");
        }
        let distinct: BTreeSet<_> = c.groups.iter().collect();
        assert_eq!(distinct.len(), 5, "no two nodes see the same majority");
        let c = cut(&Shape::OneWay(Some((1, 2))), &NODES, false, &mut d);
        assert!(!c.reachable(1, 2) && c.reachable(2, 1));
        assert!(script(7, &c)
            .contains("ip saddr 10.77.1.2 ip daddr 10.77.2.2 ct direction original drop"));
        let l = loss(&[1, 2], 30);
        assert!(script(8, &l).contains("numgen random mod 100 < 30 drop"));
        assert_eq!(
            parse_shape("isolate:1,9", 5).unwrap_err(),
            "partition \"isolate:1,9\": node 9 does not exist (nodes are 1..=5)"
        );
    }
}
