//! Broker configuration: command-line flags over an optional YAML file over
//! defaults. Input: `Args` (clap) and the file it names. Output: `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::storage::LogConfig;

/// When appended data is fsynced, and so when acks=1/all are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Answer a produce only after its batch is fsynced (group commit).
    Always,
    /// Answer after the write; fsync once this many messages are unsynced.
    Messages(u64),
    /// Answer after the write; fsync every interval.
    Interval(Duration),
}

impl FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid flush policy {s:?}: expected always, messages:N or ms:N (N > 0)");
        if s == "always" {
            return Ok(FlushPolicy::Always);
        }
        let (kind, n) = s.split_once(':').ok_or_else(bad)?;
        let n: u64 = n.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        match kind {
            "messages" => Ok(FlushPolicy::Messages(n)),
            "ms" => Ok(FlushPolicy::Interval(Duration::from_millis(n))),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushPolicy::Always => write!(f, "always"),
            FlushPolicy::Messages(n) => write!(f, "messages:{n}"),
            FlushPolicy::Interval(d) => write!(f, "ms:{}", d.as_millis()),
        }
    }
}

/// Command-line flags; each overrides the same key of `--config`.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "unlost-broker",
    version,
    about = "A small Kafka-compatible broker under test for unlost"
)]
pub struct Args {
    /// YAML file with any of the keys below (kebab-case); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Broker id (node id in Metadata).
    #[arg(long)]
    pub id: Option<i32>,
    /// Address to listen on for Kafka clients.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// host:port given to clients in Metadata (default: the listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory for partition logs and committed offsets.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// always | messages:N | ms:N (default always).
    #[arg(long)]
    pub flush: Option<FlushPolicy>,
    /// Roll segments at this size in bytes (default 64 MiB).
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Largest request frame accepted, in bytes (default 100 MiB).
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Create unknown topics on Metadata requests (default true).
    #[arg(long)]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics and CreateTopics with -1 (default 1).
    #[arg(long)]
    pub default_partitions: Option<i32>,
    /// Address the controller (Raft) listens on; needed with --voters.
    #[arg(long)]
    pub controller_listen: Option<SocketAddr>,
    /// The controller voters: ID@HOST:PORT,... (this broker among them).
    /// Without it the broker is a cluster of one.
    #[arg(long)]
    pub voters: Option<String>,
    /// Replication factor of auto-created topics and CreateTopics with -1
    /// (default: 3 if the cluster has 3 voters or more, else 1).
    #[arg(long)]
    pub default_replication_factor: Option<i16>,
    /// A follower not caught up for this long leaves the ISR (default 2000).
    #[arg(long)]
    pub replica_lag_ms: Option<u64>,
    /// A broker that has not heartbeated the controller for this long is
    /// fenced and loses its leaderships (default 1500).
    #[arg(long)]
    pub broker_lease_ms: Option<u64>,
    /// Allow electing a replica outside the ISR when no ISR member is alive
    /// (default false; data loss when used). Applies to topics created
    /// through this broker.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub unclean_leader_election: Option<bool>,
    /// Run with this deliberate bug (`list` prints them); only in a build
    /// with the `bugs` feature, for the harness's negative controls.
    #[arg(long)]
    pub bug: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    id: Option<i32>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    flush: Option<String>,
    segment_bytes: Option<u64>,
    max_request_bytes: Option<usize>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    controller_listen: Option<SocketAddr>,
    voters: Option<String>,
    default_replication_factor: Option<i16>,
    replica_lag_ms: Option<u64>,
    broker_lease_ms: Option<u64>,
    unclean_leader_election: Option<bool>,
}

/// A configuration problem, naming the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("{0} is required (flag --{0} or key in --config)")]
    Missing(&'static str),
}

/// The broker's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: i32,
    pub listen: SocketAddr,
    pub advertise_host: String,
    pub advertise_port: i32,
    pub data_dir: PathBuf,
    pub flush: FlushPolicy,
    pub log: LogConfig,
    pub max_request_bytes: usize,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub controller_listen: Option<SocketAddr>,
    /// Voter id -> controller address (just this broker when alone).
    pub voters: std::collections::BTreeMap<u64, String>,
    pub default_replication_factor: i16,
    pub replica_lag: Duration,
    pub broker_lease: Duration,
    pub unclean_leader_election: bool,
}

/// Parses `ID@HOST:PORT,...`.
pub fn parse_voters(s: &str) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('@')
            .ok_or_else(|| format!("{part:?} is not ID@HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("{part:?}: {id:?} is not a broker id"))?;
        let (_, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{part:?}: {addr:?} is not HOST:PORT"))?;
        port.parse::<u16>()
            .map_err(|_| format!("{part:?}: {port:?} is not a port"))?;
        if out.insert(id, addr.to_string()).is_some() {
            return Err(format!("voter {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err("no voters given".into());
    }
    Ok(out)
}

impl FileConfig {
    /// The config file's settings (none without a file).
    fn read(path: Option<&std::path::Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The address clients are told (`host:port`), by default the listen one.
fn advertise(a: Option<&str>, listen: SocketAddr) -> Result<(String, i32), ConfigError> {
    let Some(a) = a else {
        return Ok((listen.ip().to_string(), i32::from(listen.port())));
    };
    let (h, p) = a.rsplit_once(':').ok_or_else(|| ConfigError::Invalid {
        key: "advertise",
        message: format!("{a:?} is not host:port"),
    })?;
    let port = p.parse::<u16>().map_err(|_| ConfigError::Invalid {
        key: "advertise",
        message: format!("{p:?} is not a port"),
    })?;
    Ok((h.to_string(), i32::from(port)))
}

/// The controller's voters (this broker alone by default).
fn voters(
    v: Option<&str>,
    id: i32,
    listen: &SocketAddr,
    controller_listen: Option<SocketAddr>,
) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
    let Some(v) = v else {
        let mut one = std::collections::BTreeMap::new();
        one.insert(id as u64, format!("{listen}"));
        return Ok(one);
    };
    let voters = parse_voters(v).map_err(|message| ConfigError::Invalid {
        key: "voters",
        message,
    })?;
    if !voters.contains_key(&(id as u64)) {
        return Err(ConfigError::Invalid {
            key: "voters",
            message: format!("this broker (id {id}) is not among the voters {v:?}"),
        });
    }
    if voters.len() > 1 && controller_listen.is_none() {
        return Err(ConfigError::Missing("controller-listen"));
    }
    Ok(voters)
}

impl Config {
    /// Merges flags over the config file over defaults and validates.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = FileConfig::read(args.config.as_deref())?;
        let flush = match (args.flush, file.flush) {
            (Some(f), _) => f,
            (None, Some(s)) => s.parse().map_err(|message| ConfigError::Invalid {
                key: "flush",
                message,
            })?,
            (None, None) => FlushPolicy::Always,
        };
        let id = args.id.or(file.id).ok_or(ConfigError::Missing("id"))?;
        let listen = args
            .listen
            .or(file.listen)
            .ok_or(ConfigError::Missing("listen"))?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::Missing("data-dir"))?;
        let (advertise_host, advertise_port) =
            advertise(args.advertise.or(file.advertise).as_deref(), listen)?;
        let segment_bytes = args
            .segment_bytes
            .or(file.segment_bytes)
            .unwrap_or(64 << 20);
        if segment_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "segment-bytes",
                message: format!("{segment_bytes} is below the minimum of 1024"),
            });
        }
        let max_request_bytes = args
            .max_request_bytes
            .or(file.max_request_bytes)
            .unwrap_or(100 << 20);
        if max_request_bytes < 1024 || max_request_bytes > i32::MAX as usize {
            return Err(ConfigError::Invalid {
                key: "max-request-bytes",
                message: format!("{max_request_bytes} is outside 1024..={}", i32::MAX),
            });
        }
        let default_partitions = args
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(1);
        if !(1..=10_000).contains(&default_partitions) {
            return Err(ConfigError::Invalid {
                key: "default-partitions",
                message: format!("{default_partitions} is outside 1..=10000"),
            });
        }
        let controller_listen = args.controller_listen.or(file.controller_listen);
        let voters = voters(
            args.voters.or(file.voters).as_deref(),
            id,
            &listen,
            controller_listen,
        )?;
        if id < 0 {
            return Err(ConfigError::Invalid {
                key: "id",
                message: format!("{id} is negative"),
            });
        }
        let default_replication_factor = args
            .default_replication_factor
            .or(file.default_replication_factor)
            .unwrap_or(if voters.len() >= 3 { 3 } else { 1 });
        if default_replication_factor < 1 {
            return Err(ConfigError::Invalid {
                key: "default-replication-factor",
                message: format!("{default_replication_factor} is below 1"),
            });
        }
        let replica_lag_ms = args.replica_lag_ms.or(file.replica_lag_ms).unwrap_or(2000);
        let broker_lease_ms = args
            .broker_lease_ms
            .or(file.broker_lease_ms)
            .unwrap_or(1500);
        for (key, v) in [
            ("replica-lag-ms", replica_lag_ms),
            ("broker-lease-ms", broker_lease_ms),
        ] {
            if v < 100 {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{v} is below the minimum of 100"),
                });
            }
        }
        Ok(Config {
            id,
            listen,
            advertise_host,
            advertise_port,
            data_dir,
            flush,
            log: LogConfig {
                segment_bytes,
                ..LogConfig::default()
            },
            max_request_bytes,
            auto_create_topics: args
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            default_partitions,
            controller_listen,
            voters,
            default_replication_factor,
            replica_lag: Duration::from_millis(replica_lag_ms),
            broker_lease: Duration::from_millis(broker_lease_ms),
            unclean_leader_election: args
                .unclean_leader_election
                .or(file.unclean_leader_election)
                .unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses_and_rejects() {
        assert_eq!("always".parse(), Ok(FlushPolicy::Always));
        assert_eq!("messages:10".parse(), Ok(FlushPolicy::Messages(10)));
        assert_eq!(
            "ms:250".parse(),
            Ok(FlushPolicy::Interval(Duration::from_millis(250)))
        );
        for bad in ["", "sometimes", "ms:0", "ms:-1", "messages:", "bytes:10"] {
            let err = bad.parse::<FlushPolicy>().unwrap_err();
            assert!(err.contains("invalid flush policy"), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.yaml");
        std::fs::write(
            &path,
            "id: 3\nlisten: 127.0.0.1:9000\ndata-dir: /tmp/x\nflush: ms:100\n",
        )
        .unwrap();
        let args = Args {
            config: Some(path.clone()),
            id: Some(5),
            ..Args::default()
        };
        let c = Config::from_args(args).unwrap();
        assert_eq!(
            (c.id, c.flush),
            (5, FlushPolicy::Interval(Duration::from_millis(100)))
        );
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("127.0.0.1", 9000)
        );
        std::fs::write(&path, "id: 3\nlisten: 127.0.0.1:9000\nbogus: 1\n").unwrap();
        let err = Config::from_args(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = Config::from_args(Args::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "id is required (flag --id or key in --config)"
        );
    }
}
