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
}

impl Config {
    /// Merges flags over the config file over defaults and validates.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
        };
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
        let (advertise_host, advertise_port) = match args.advertise.or(file.advertise) {
            None => (listen.ip().to_string(), i32::from(listen.port())),
            Some(a) => {
                let (h, p) = a.rsplit_once(':').ok_or_else(|| ConfigError::Invalid {
                    key: "advertise",
                    message: format!("{a:?} is not host:port"),
                })?;
                let port = p.parse::<u16>().map_err(|_| ConfigError::Invalid {
                    key: "advertise",
                    message: format!("{p:?} is not a port"),
                })?;
                (h.to_string(), i32::from(port))
            }
        };
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
