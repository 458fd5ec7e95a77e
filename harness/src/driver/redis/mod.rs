//! The Redis Streams driver: redis-server (and, with more than one node,
//! redis-sentinel beside it on each host) from the installed release, the
//! stream (the plan's topic), where the primary is (the Sentinels' answer),
//! XADD with a WAIT for acks all, a consumer group read with XREADGROUP and
//! acknowledged with XACK, and the final drain with XRANGE.
//!
//! A stream is partition 0. An entry id `ms-seq` is the position
//! `ms * 1_000_000 + seq`: positions grow with ids, but are not dense.
//! Node 1 is the first primary; every other node is its replica. Each host
//! runs a Sentinel (on the peer port) that monitors the primary under the
//! name `unlost` with a majority quorum, so a killed or isolated primary is
//! replaced by a replica, as in a production Sentinel deployment.

mod client;
mod drain;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::Connection;

use super::{
    Drained, Driver, DriverError, Member, MemberSetup, NodeRecipe, Producer, ProducerSetup,
    Protocol, TopicLayout,
};
use crate::history::History;
use crate::plan::{ClusterSpec, Readiness, TopicSpec};

/// The name the Sentinels monitor the primary under.
const MASTER: &str = "unlost";

/// How soon a Sentinel calls an unanswering primary down, unless the plan
/// sets `down_after` (Redis's own default is 30 s, longer than most runs).
const DOWN_AFTER: Duration = Duration::from_secs(3);

/// A program of the installed Redis release, from PATH.
fn program(name: &str) -> Result<PathBuf, DriverError> {
    let hint = if name == "setpriv" {
        "apt-get install util-linux"
    } else {
        "apt-get install redis-server redis-sentinel (ci/test does)"
    };
    super::cache::on_path(name).ok_or_else(|| DriverError::Missing {
        what: format!("{name} for broker: redis"),
        hint: hint.into(),
    })
}

/// The server config, with the harness's placeholders.
pub fn config_template(spec: &ClusterSpec) -> String {
    let mut conf = String::from(
        "bind {host}\nport {port}\nprotected-mode no\ndaemonize no\ndir \"{data_dir}\"\n",
    );
    let s = &spec.settings;
    if let Some(v) = s.get("appendonly") {
        let on = v == "yes" || v == "true";
        conf.push_str(&format!("appendonly {}\n", if on { "yes" } else { "no" }));
    }
    if let Some(v) = s.get("appendfsync") {
        conf.push_str(&format!("appendfsync {v}\n"));
    }
    if let Some(v) = s.get("min_replicas_to_write") {
        conf.push_str(&format!("min-replicas-to-write {v}\n"));
    }
    conf
}

/// The replicas a WAIT must confirm for acks all: the plan's
/// `wait_replicas`, else enough for a majority of the nodes to hold the
/// entry (1 of 2 replicas with 3 nodes), so one node down does not stop
/// every acknowledgement.
pub fn wait_replicas(spec: &ClusterSpec) -> u32 {
    spec.settings
        .get("wait_replicas")
        .and_then(|v| v.parse().ok())
        .unwrap_or(spec.nodes / 2)
}

/// The Sentinel config lines, with the harness's placeholders.
fn sentinel_lines(spec: &ClusterSpec) -> Vec<String> {
    let down_after = spec
        .settings
        .get("down_after")
        .and_then(|v| crate::plan::value::duration(v).ok())
        .unwrap_or(DOWN_AFTER);
    let quorum = spec.nodes / 2 + 1;
    vec![
        "bind {host}".into(),
        "port {peer_port}".into(),
        "protected-mode no".into(),
        "daemonize no".into(),
        format!("sentinel monitor {MASTER} {{primary}} {quorum}"),
        format!(
            "sentinel down-after-milliseconds {MASTER} {}",
            down_after.as_millis()
        ),
        format!("sentinel failover-timeout {MASTER} 10000"),
        format!("sentinel parallel-syncs {MASTER} 1"),
    ]
}

/// The recipe: a shell per node that keeps the node's live configs beside
/// its data (made from the harness's templates on the first start only, so
/// what Redis and Sentinel rewrite survives restarts, as on a real host),
/// starts the Sentinel in the background and redis-server in front. The
/// node's process group holds both: a kill or pause hits the host.
pub fn recipe(spec: &ClusterSpec) -> Result<NodeRecipe, DriverError> {
    let server = program("redis-server")?;
    // The shell dies with the harness (PR_SET_PDEATHSIG); `setpriv
    // --pdeathsig` passes that on to the servers it starts.
    let guard = format!("'{}' --pdeathsig KILL", program("setpriv")?.display());
    let mut script = String::from(
        "cd \"$(dirname '{config}')\" || exit 1\n\
         if [ ! -f redis.conf ]; then\n\
         \x20 cp '{config}' redis.conf || exit 1\n\
         \x20 [ {id} = 1 ] || echo 'replicaof {primary}' >> redis.conf\n\
         fi\n",
    );
    if spec.nodes > 1 {
        let sentinel = program("redis-sentinel")?;
        let lines = sentinel_lines(spec)
            .iter()
            .map(|l| format!("'{l}'"))
            .collect::<Vec<_>>()
            .join(" ");
        script.push_str(&format!(
            "[ -f sentinel.conf ] || printf '%s\\n' {lines} > sentinel.conf || exit 1\n\
             {guard} '{}' \"$PWD/sentinel.conf\" &\n\
             sentinel=$!\n",
            sentinel.display()
        ));
    }
    script.push_str(&format!(
        "{guard} '{}' \"$PWD/redis.conf\"\ncode=$?\n",
        server.display()
    ));
    if spec.nodes > 1 {
        script.push_str("kill -9 \"$sentinel\" 2>/dev/null\n");
    }
    script.push_str("exit $code\n");
    Ok(NodeRecipe {
        command: vec!["/bin/sh".into(), "-c".into(), script],
        config: Some(config_template(spec)),
        ready: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
        protocol: Protocol::Redis {
            wait: wait_replicas(spec),
        },
        replica_reads: false,
    })
}

/// An entry id (`ms-seq`) as a position.
pub fn position(id: &str) -> Option<i64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq) = (ms.parse::<i64>().ok()?, seq.parse::<i64>().ok()?);
    if !(0..1_000_000).contains(&seq) || !(0..9_000_000_000_000).contains(&ms) {
        return None;
    }
    Some(ms * 1_000_000 + seq)
}

/// A position as the entry id it came from.
pub fn entry_id(position: i64) -> String {
    format!("{}-{}", position / 1_000_000, position % 1_000_000)
}

/// A synchronous connection to `addr` (`host:port`).
fn open(addr: &str, timeout: Duration) -> Result<Connection, DriverError> {
    let connect = |e: redis::RedisError| DriverError::Connect {
        to: addr.to_string(),
        reason: e.to_string(),
    };
    let client = redis::Client::open(format!("redis://{addr}/")).map_err(connect)?;
    let con = client
        .get_connection_with_timeout(timeout)
        .map_err(connect)?;
    con.set_read_timeout(Some(timeout)).map_err(connect)?;
    con.set_write_timeout(Some(timeout)).map_err(connect)?;
    Ok(con)
}

/// Where the nodes and their Sentinels are.
#[derive(Debug, Clone)]
pub struct Nodes {
    /// `host:port` of node i + 1.
    servers: Vec<String>,
    /// `host:peer_port` of each node's Sentinel (none for one node).
    sentinels: Vec<String>,
}

impl Nodes {
    fn id_of(&self, addr: &str) -> i32 {
        self.servers
            .iter()
            .position(|s| s == addr)
            .map_or(-1, |i| i as i32 + 1)
    }

    /// What one Sentinel says the primary is (`host:port`).
    fn ask(&self, sentinel: &str) -> Result<String, DriverError> {
        let mut con = open(sentinel, Duration::from_secs(1))?;
        let (host, port): (String, String) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query(&mut con)
            .map_err(|e| DriverError::refused(format!("sentinel {sentinel}"), e))?;
        Ok(format!("{host}:{port}"))
    }

    /// The primary as a client finds it: the first Sentinel that answers
    /// (what Sentinel-aware clients do), or node 1 without Sentinels.
    pub fn primary(&self) -> Result<String, DriverError> {
        if self.sentinels.is_empty() {
            return Ok(self.servers[0].clone());
        }
        let mut last = None;
        for s in &self.sentinels {
            match self.ask(s) {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| DriverError::refused("sentinels", "none configured")))
    }

    /// The primary every answering Sentinel agrees on, which itself says
    /// it is a primary (for the drain, which must not read a stale one).
    fn agreed_primary(&self) -> Result<String, DriverError> {
        let mut named = std::collections::BTreeSet::new();
        for s in &self.sentinels {
            if let Ok(p) = self.ask(s) {
                named.insert(p);
            }
        }
        let primary = match named.len() {
            0 if self.sentinels.is_empty() => self.servers[0].clone(),
            1 => named.into_iter().next().unwrap_or_default(),
            0 => return Err(DriverError::refused("sentinels", "none answered")),
            _ => {
                return Err(DriverError::refused(
                    "sentinels",
                    format!("they name different primaries: {named:?}"),
                ))
            }
        };
        let mut con = open(&primary, Duration::from_secs(2))?;
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query(&mut con)
            .map_err(|e| DriverError::refused(format!("ROLE of {primary}"), e))?;
        match role.first() {
            Some(redis::Value::BulkString(b)) if b == b"master" => Ok(primary),
            _ => Err(DriverError::refused(
                format!("primary {primary}"),
                "it is not a primary (yet)",
            )),
        }
    }

    /// A connection to the primary.
    pub fn primary_connection(&self, timeout: Duration) -> Result<Connection, DriverError> {
        open(&self.primary()?, timeout)
    }
}

/// Whether the cluster is ready for a workload: the primary has every
/// replica attached, every Sentinel knows the others (so it can fail
/// over), and the stream exists on every node.
fn prepare(nodes: &Nodes, key: &str) -> Result<(), DriverError> {
    let replicas = nodes.servers.len() - 1;
    let primary = nodes.primary()?;
    let mut con = open(&primary, Duration::from_secs(2))?;
    let what = |w: &str| format!("{w} on {primary}");
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut con)
        .map_err(|e| DriverError::refused(what("INFO replication"), e))?;
    let attached = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if attached < replicas {
        return Err(DriverError::refused(
            "replication",
            format!("{attached} of {replicas} replicas attached to {primary}"),
        ));
    }
    for s in &nodes.sentinels {
        let mut sc = open(s, Duration::from_secs(1))?;
        let others: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("SENTINELS")
            .arg(MASTER)
            .query(&mut sc)
            .map_err(|e| DriverError::refused(format!("sentinel {s}"), e))?;
        if others.len() < nodes.sentinels.len() - 1 {
            return Err(DriverError::refused(
                format!("sentinel {s}"),
                format!(
                    "knows {} of {} other sentinels",
                    others.len(),
                    nodes.sentinels.len() - 1
                ),
            ));
        }
    }
    // The stream: made by a group made and dropped at once (an existing
    // stream is fine), then copied to every replica.
    let made: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("unlost-create")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut con);
    if let Err(e) = made {
        if e.code() != Some("BUSYGROUP") {
            return Err(DriverError::refused(
                what(&format!("create stream {key}")),
                e,
            ));
        }
    }
    let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(key)
        .arg("unlost-create")
        .query(&mut con);
    if replicas > 0 {
        let copied: i64 = redis::cmd("WAIT")
            .arg(replicas)
            .arg(5000)
            .query(&mut con)
            .map_err(|e| DriverError::refused(what("WAIT"), e))?;
        if (copied as usize) < replicas {
            return Err(DriverError::refused(
                format!("create stream {key}"),
                format!("{copied} of {replicas} replicas have it"),
            ));
        }
    }
    Ok(())
}

/// The stream's primary and nodes (as partition 0); none when the stream
/// does not exist.
fn layout(nodes: &Nodes, key: &str, timeout: Duration) -> Result<TopicLayout, DriverError> {
    let primary = nodes.primary()?;
    let mut con = open(&primary, timeout)?;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query(&mut con)
        .map_err(|e| DriverError::refused(format!("EXISTS {key} on {primary}"), e))?;
    let mut out = TopicLayout::default();
    if exists == 0 {
        return Ok(out);
    }
    let leader = nodes.id_of(&primary);
    let mut replicas = vec![leader];
    replicas.extend((1..=nodes.servers.len() as i32).filter(|&i| i != leader));
    out.leaders.insert(0, leader);
    out.replicas.insert(0, replicas);
    Ok(out)
}

/// A Redis deployment's client side.
pub struct RedisDriver {
    nodes: Nodes,
    /// Replicas a WAIT must confirm for acks all.
    wait: u32,
}

impl RedisDriver {
    /// A driver for the servers at `servers` (`host:port`, node 1 first)
    /// with Sentinels at `sentinels` (`host:peer_port`) when there is more
    /// than one node; acks all waits for `wait` replicas.
    pub fn new(servers: Vec<String>, sentinels: Vec<String>, wait: u32) -> RedisDriver {
        let sentinels = if servers.len() > 1 {
            sentinels
        } else {
            Vec::new()
        };
        RedisDriver {
            nodes: Nodes { servers, sentinels },
            wait,
        }
    }
}

impl Driver for RedisDriver {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn create_topic<'a>(&'a self, spec: &'a TopicSpec) -> BoxFuture<'a, Result<(), DriverError>> {
        let (nodes, key) = (self.nodes.clone(), spec.name.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match prepare(&nodes, &key) {
                        Ok(()) => return Ok(()),
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => std::thread::sleep(Duration::from_millis(300)),
                    }
                }
            })
            .await
            .map_err(|e| DriverError::refused("create stream", e))?
        })
    }

    fn layout(&self, topic: &str, timeout: Duration) -> Result<TopicLayout, DriverError> {
        layout(&self.nodes, topic, timeout)
    }

    fn producer<'a>(
        &'a self,
        setup: &'a ProducerSetup,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>, DriverError>> {
        Box::pin(async move {
            let p = client::RedisProducer::new(self.nodes.clone(), setup, self.wait);
            Ok(Box::new(p) as Box<dyn Producer>)
        })
    }

    fn member(&self, setup: MemberSetup) -> Result<Box<dyn Member>, DriverError> {
        Ok(Box::new(client::RedisMember::new(&self.nodes, setup)?))
    }

    fn drain(
        &self,
        topic: &str,
        _partitions: i32,
        timeout: Duration,
        history: &History,
    ) -> Option<Drained> {
        let result = drain::drain(&self.nodes, topic, timeout, history);
        super::end_drain(history, result.map(|high| (high, Vec::new())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_and_positions_map_both_ways_in_order() {
        let ids = [
            "0-1",
            "1764500000123-0",
            "1764500000123-7",
            "1764500000124-0",
        ];
        let positions: Vec<i64> = ids.iter().map(|i| position(i).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        for (id, p) in ids.iter().zip(&positions) {
            assert_eq!(&entry_id(*p), id);
        }
        for bad in ["", "12", "a-1", "1-1000000", "-1-0", "9000000000000-0"] {
            assert_eq!(position(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_recipe_keeps_live_configs_and_runs_a_sentinel_per_host() {
        let mut spec = ClusterSpec {
            broker: crate::plan::BrokerKind::Redis,
            nodes: 3,
            version: None,
            settings: Default::default(),
            properties: Default::default(),
            recipe: None,
        };
        spec.settings.insert("appendonly".into(), "yes".into());
        spec.settings.insert("appendfsync".into(), "always".into());
        spec.settings.insert("down_after".into(), "2s".into());
        let conf = config_template(&spec);
        assert!(
            conf.contains("appendonly yes\nappendfsync always\n"),
            "{conf}"
        );
        let lines = sentinel_lines(&spec).join("\n");
        assert!(
            lines.contains("sentinel monitor unlost {primary} 2"),
            "{lines}"
        );
        assert!(
            lines.contains("down-after-milliseconds unlost 2000"),
            "{lines}"
        );
        // Needs redis-server and redis-sentinel on PATH (ci/test installs them).
        let r = recipe(&spec).expect("redis-server and redis-sentinel are installed");
        let script = &r.command[2];
        assert!(script.contains("[ ! -f redis.conf ]"), "{script}");
        assert!(script.contains("sentinel.conf"), "{script}");
        spec.nodes = 1;
        let r = recipe(&spec).expect("redis-server is installed");
        assert!(!r.command[2].contains("sentinel"), "{}", r.command[2]);
    }
}
