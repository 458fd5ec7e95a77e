//! The RabbitMQ driver: rabbitmq-server from the installed release (3.10 in
//! Debian 12), one node per namespaced host, clustered at start; the plan's
//! topic is one durable queue (classic, or quorum: replicated by Raft);
//! producers publish persistent messages with publisher confirms, group
//! members consume with manual acknowledgements (or auto-ack), and the
//! final drain reads the queue whole without taking anything out of it.
//!
//! A queue has no positions: completions, deliveries and drained messages
//! carry position -1, and consumers remove what they acknowledge. The
//! checker's queue model (see `checker`) takes it from there.
//!
//! Erlang nodes find each other through epmd, one per host on port 4369:
//! the recipe runs it in the node's process group (a kill, pause or power
//! loss hits it too) and tells Erlang not to start a daemon of its own,
//! which would outlive the run. That is why RabbitMQ needs the sandbox: a
//! host per node. Leaders and members of a queue come from the management
//! plugin's HTTP API on port 15672 of each host.

mod client;
mod drain;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};

use super::{
    Drained, Driver, DriverError, Member, MemberSetup, NodeRecipe, Producer, ProducerSetup,
    Protocol, TopicLayout,
};
use crate::history::History;
use crate::plan::{ClusterSpec, Readiness, TopicSpec};

/// The management plugin's HTTP port on every host.
pub const ADMIN_PORT: u16 = 15672;

/// The consumers' prefetch unless the plan sets `prefetch`.
pub const PREFETCH: u16 = 100;

/// The installed release's server script (not /usr/sbin's wrapper, which
/// switches to the rabbitmq user).
fn server_script() -> Result<PathBuf, DriverError> {
    let lib = std::path::Path::new("/usr/lib/rabbitmq/lib");
    std::fs::read_dir(lib)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("sbin/rabbitmq-server"))
        .filter(|p| p.is_file())
        .max()
        .ok_or_else(|| DriverError::Missing {
            what: "rabbitmq-server for broker: rabbitmq".into(),
            hint: "apt-get install rabbitmq-server (ci/test does)".into(),
        })
}

/// A program from PATH.
fn program(name: &str, hint: &str) -> Result<PathBuf, DriverError> {
    super::cache::on_path(name).ok_or_else(|| DriverError::Missing {
        what: format!("{name} for broker: rabbitmq"),
        hint: hint.into(),
    })
}

/// The node name of the node on `host`.
pub fn node_name(host: &str) -> String {
    format!("rabbit@{host}")
}

/// The node id of a node name (`rabbit@10.77.2.2` -> 2), -1 when unknown.
pub fn node_id(name: &str) -> i32 {
    let host = name.rsplit('@').next().unwrap_or_default();
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        ["10", "77", id, "2"] => id.parse().unwrap_or(-1),
        _ => -1,
    }
}

/// Whether the plan asks for quorum queues.
pub fn quorum(spec: &ClusterSpec) -> bool {
    spec.settings
        .get("queue_type")
        .is_some_and(|t| t == "quorum")
}

/// rabbitmq.conf, with the harness's placeholders. Every node of the
/// cluster is listed for classic peer discovery.
pub fn config_template(spec: &ClusterSpec) -> String {
    let mut conf = String::from(
        "listeners.tcp.1 = {host}:{port}\n\
         loopback_users = none\n\
         management.tcp.ip = {host}\n",
    );
    conf.push_str(&format!("management.tcp.port = {ADMIN_PORT}\n"));
    // Fresher queue leaders in the management API (the default is 5 s).
    conf.push_str("collect_statistics_interval = 1000\n");
    conf.push_str("log.console = true\nlog.console.level = info\nlog.file = false\n");
    conf.push_str("cluster_formation.peer_discovery_backend = classic_config\n");
    for id in 1..=spec.nodes {
        conf.push_str(&format!(
            "cluster_formation.classic_config.nodes.{id} = {}\n",
            node_name(&crate::sandbox::node_addr(id))
        ));
    }
    if let Some(h) = spec.settings.get("partition_handling") {
        conf.push_str(&format!("cluster_partition_handling = {h}\n"));
    }
    conf
}

/// The recipe: a shell per node that starts the host's epmd in the node's
/// process group, waits until it answers, and runs rabbitmq-server in
/// front with every directory beside the node's data. Needs the sandbox.
pub fn recipe(spec: &ClusterSpec) -> Result<NodeRecipe, DriverError> {
    let server = server_script()?;
    let epmd = program("epmd", "apt-get install rabbitmq-server (it brings Erlang)")?;
    let setpriv = program("setpriv", "apt-get install util-linux")?;
    if !crate::sandbox::entered() {
        return Err(DriverError::Missing {
            what: "a host per node for broker: rabbitmq".into(),
            hint: "Erlang's epmd needs each node on a host of its own: run it through \
                   `unlost run`, which makes one per node (as root or with user namespaces)"
                .into(),
        });
    }
    let (epmd, setpriv) = (epmd.display(), setpriv.display());
    // The shell is the node's process: the harness's death kills it
    // (PR_SET_PDEATHSIG), and `setpriv --pdeathsig` passes that on to epmd
    // and the Erlang VM (the server script execs erl, which execs the VM,
    // when RUNNING_UNDER_SYSTEMD is set), so nothing outlives a killed
    // harness.
    let script = format!(
        "cd \"$(dirname '{{config}}')\" || exit 1\n\
         [ -f enabled_plugins ] || echo '[rabbitmq_management].' > enabled_plugins\n\
         export HOME=\"$PWD\" RABBITMQ_NODENAME='rabbit@{{host}}' RABBITMQ_USE_LONGNAME=true \\\n\
         \x20 RABBITMQ_MNESIA_BASE='{{data_dir}}' RABBITMQ_LOG_BASE=\"$PWD/log\" RABBITMQ_LOGS=- \\\n\
         \x20 RABBITMQ_CONFIG_FILE='{{config}}' RABBITMQ_ENABLED_PLUGINS_FILE=\"$PWD/enabled_plugins\" \\\n\
         \x20 RABBITMQ_CONF_ENV_FILE=\"$PWD/rabbitmq-env.conf\" \\\n\
         \x20 RABBITMQ_ADVANCED_CONFIG_FILE=\"$PWD/advanced.config\" \\\n\
         \x20 RABBITMQ_DIST_PORT={{peer_port}} RABBITMQ_PID_FILE=\"$PWD/rabbit.pid\" \\\n\
         \x20 RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-setcookie unlost -start_epmd false +S 2:2' \\\n\
         \x20 RUNNING_UNDER_SYSTEMD=true\n\
         '{setpriv}' --pdeathsig KILL '{epmd}' &\n\
         epmd=$!\n\
         tries=0\n\
         until '{epmd}' -names >/dev/null 2>&1; do\n\
         \x20 tries=$((tries + 1)); [ $tries -gt 100 ] && {{ echo 'epmd did not start'; exit 1; }}\n\
         \x20 sleep 0.05\n\
         done\n\
         '{setpriv}' --pdeathsig KILL '{}'\n\
         code=$?\n\
         kill -9 \"$epmd\" 2>/dev/null\n\
         exit $code\n",
        server.display()
    );
    Ok(NodeRecipe {
        command: vec!["/bin/sh".into(), "-c".into(), script],
        config: Some(config_template(spec)),
        ready: Readiness::Tcp,
        ready_timeout: Duration::from_secs(120),
        protocol: Protocol::Rabbitmq {
            quorum: quorum(spec),
            prefetch: spec
                .settings
                .get("prefetch")
                .and_then(|p| p.parse().ok())
                .unwrap_or(PREFETCH),
        },
        replica_reads: false,
    })
}

/// The AMQP URI of a node (`host:port`), with a 5 s heartbeat so a
/// connection to a paused or cut-off node is given up soon.
fn uri(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f?heartbeat=5&connection_timeout=2000")
}

/// A connection to the first node of `addrs` (from `first` on, round the
/// list) that answers.
pub async fn connect(addrs: &[String], first: usize) -> Result<Connection, DriverError> {
    let mut last = None;
    for i in 0..addrs.len() {
        let addr = &addrs[(first + i) % addrs.len()];
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            Connection::connect(&uri(addr), ConnectionProperties::default()),
        )
        .await;
        match attempt {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => {
                last = Some(DriverError::Connect {
                    to: addr.clone(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                last = Some(DriverError::Timeout {
                    what: format!("connect to {addr}"),
                    after: Duration::from_secs(3),
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| DriverError::refused("connect", "no nodes")))
}

/// A GET of the management API on `addr` (`host:port`); the JSON body.
/// Blocking. (A few lines of HTTP/1.0 rather than an HTTP client crate:
/// one request kind, on loopback-like links, with basic auth.)
pub fn admin_get(addr: &str, path: &str, timeout: Duration) -> Result<serde_json::Value, String> {
    let to = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    // guest:guest
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} on {addr}: no HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!(
            "GET {path} on {addr}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("GET {path} on {addr}: {e}"))
}

/// Where the nodes are.
#[derive(Debug, Clone)]
pub struct Nodes {
    /// AMQP `host:port` of node i + 1.
    pub amqp: Vec<String>,
}

impl Nodes {
    /// The management API's `host:port` of node i + 1.
    fn admin(&self) -> Vec<String> {
        self.amqp
            .iter()
            .map(|a| {
                let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                format!("{host}:{ADMIN_PORT}")
            })
            .collect()
    }

    /// The first management API answer to `path`. Blocking.
    pub fn admin_get(&self, path: &str, timeout: Duration) -> Result<serde_json::Value, String> {
        let mut last = String::from("no nodes");
        for a in self.admin() {
            match admin_get(&a, path, timeout) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The queue's arguments: its type and, for a quorum queue, how many
/// replicas it starts with.
fn arguments(quorum: bool, replicas: i16) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args.insert(
            ShortString::from("x-quorum-initial-group-size"),
            AMQPValue::LongInt(i32::from(replicas)),
        );
    }
    args
}

/// Whether every node runs and is clustered (the management API's view).
fn clustered(nodes: &Nodes) -> Result<(), DriverError> {
    let all = nodes
        .admin_get("/api/nodes", Duration::from_secs(2))
        .map_err(|e| DriverError::refused("cluster nodes", e))?;
    let running = all
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["running"].as_bool() == Some(true))
                .count()
        })
        .unwrap_or(0);
    if running < nodes.amqp.len() {
        return Err(DriverError::refused(
            "cluster",
            format!(
                "{running} of {} nodes running and clustered",
                nodes.amqp.len()
            ),
        ));
    }
    Ok(())
}

/// Declares the queue (durable; an existing one is fine) once the cluster
/// has formed, through node 1 (a classic queue lives on the node that
/// declares it).
async fn declare(nodes: &Nodes, spec: &TopicSpec, quorum: bool) -> Result<(), DriverError> {
    let n = nodes.clone();
    tokio::task::spawn_blocking(move || clustered(&n))
        .await
        .map_err(|e| DriverError::refused("cluster", e))??;
    let conn = connect(&nodes.amqp, 0).await?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| DriverError::refused("open a channel", e))?;
    let declared = ch
        .queue_declare(
            &spec.name,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments(quorum, spec.replication_factor),
        )
        .await
        .map_err(|e| DriverError::refused(format!("declare queue {}", spec.name), e));
    let _ = conn.close(200, "done").await;
    declared.map(|_| ())
}

/// The queue's leader and members as the management API reports them.
fn layout(nodes: &Nodes, queue: &str, timeout: Duration) -> Result<TopicLayout, DriverError> {
    let path = format!("/api/queues/%2F/{queue}");
    let q = match nodes.admin_get(&path, timeout) {
        Ok(q) => q,
        Err(e) if e.contains(" 404 ") => return Ok(TopicLayout::default()),
        Err(e) => return Err(DriverError::refused(format!("queue {queue}"), e)),
    };
    let mut out = TopicLayout::default();
    // A quorum queue names its leader and members; a classic one its node.
    let leader = q["leader"]
        .as_str()
        .or_else(|| q["node"].as_str())
        .map_or(-1, node_id);
    let mut replicas: Vec<i32> = q["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|n| n.as_str()).map(node_id).collect())
        .unwrap_or_default();
    if replicas.is_empty() && leader > 0 {
        replicas.push(leader);
    }
    out.leaders.insert(0, leader);
    out.replicas.insert(0, replicas);
    Ok(out)
}

/// A RabbitMQ cluster's client side.
pub struct RabbitDriver {
    nodes: Nodes,
    quorum: bool,
    prefetch: u16,
}

impl RabbitDriver {
    /// A driver for the nodes at `amqp` (`host:port`, node 1 first).
    pub fn new(amqp: Vec<String>, quorum: bool, prefetch: u16) -> RabbitDriver {
        RabbitDriver {
            nodes: Nodes { amqp },
            quorum,
            prefetch,
        }
    }
}

impl Driver for RabbitDriver {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn create_topic<'a>(&'a self, spec: &'a TopicSpec) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                match declare(&self.nodes, spec, self.quorum).await {
                    Ok(()) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
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
            let p = client::RabbitProducer::new(self.nodes.clone(), setup);
            Ok(Box::new(p) as Box<dyn Producer>)
        })
    }

    fn member(&self, setup: MemberSetup) -> Result<Box<dyn Member>, DriverError> {
        Ok(Box::new(client::RabbitMember::new(
            &self.nodes,
            setup,
            self.prefetch,
        )?))
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
    fn node_names_map_to_node_ids() {
        assert_eq!(node_id(&node_name(&crate::sandbox::node_addr(2))), 2);
        assert_eq!(node_id("rabbit@10.77.7.2"), 7);
        for bad in [
            "",
            "rabbit@localhost",
            "rabbit@10.77.x.2",
            "rabbit@127.0.0.1",
        ] {
            assert_eq!(node_id(bad), -1, "{bad}");
        }
    }

    #[test]
    fn the_config_lists_every_node_and_the_partition_handling() {
        let mut spec = ClusterSpec {
            broker: crate::plan::BrokerKind::Rabbitmq,
            nodes: 3,
            version: None,
            settings: Default::default(),
            properties: Default::default(),
            recipe: None,
        };
        spec.settings
            .insert("partition_handling".into(), "pause_minority".into());
        spec.settings.insert("queue_type".into(), "quorum".into());
        let conf = config_template(&spec);
        for id in 1..=3 {
            assert!(
                conf.contains(&format!(
                    "classic_config.nodes.{id} = rabbit@10.77.{id}.2\n"
                )),
                "{conf}"
            );
        }
        assert!(
            conf.contains("cluster_partition_handling = pause_minority\n"),
            "{conf}"
        );
        assert!(quorum(&spec));
        let args = arguments(true, 3);
        assert_eq!(args.inner().len(), 2);
        assert!(arguments(false, 1).inner().is_empty());
    }
}
