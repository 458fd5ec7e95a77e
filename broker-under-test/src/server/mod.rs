//! The Kafka-protocol server: accepts connections and hands each request to
//! its API handler. Input: TCP connections. Output: Kafka responses.

pub mod api;
pub mod connection;

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::storage::offsets::OffsetStore;
use crate::storage::StorageError;
use crate::topics::Topics;

/// Everything a request handler can reach.
#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    pub topics: Topics,
    pub offsets: Arc<Mutex<OffsetStore>>,
    /// Consumer-group membership.
    pub coordinator: Arc<crate::coordinator::Coordinator>,
    /// Producer ids for idempotent producers.
    pub producer_ids: Mutex<ProducerIds>,
    /// Bumped on every append to any partition; fetches long-poll on it.
    pub appended: Arc<watch::Sender<u64>>,
}

impl Broker {
    /// Opens the data dir: recovers every partition and the offsets store.
    pub fn open(config: Config) -> Result<Arc<Broker>, StorageError> {
        let appended = Arc::new(watch::channel(0u64).0);
        let topics = Topics::open(&config, appended.clone())?;
        let (offsets, dropped) = OffsetStore::open(&config.data_dir)?;
        if dropped > 0 {
            tracing::warn!(bytes = dropped, "committed offsets: truncated a torn tail");
        }
        let producer_ids = ProducerIds::open(&config.data_dir)?;
        Ok(Arc::new(Broker {
            config,
            topics,
            offsets: Arc::new(Mutex::new(offsets)),
            producer_ids: Mutex::new(producer_ids),
            coordinator: Arc::new(crate::coordinator::Coordinator::default()),
            appended,
        }))
    }

    /// Accepts connections until the listener fails; one task per connection.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                coordinator.tick();
            }
        });
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) if is_transient(&e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let _ = stream.set_nodelay(true);
            let broker = self.clone();
            tokio::spawn(async move {
                if let Err(reason) = connection::run(broker, stream).await {
                    tracing::info!(%peer, "closed connection: {reason}");
                }
            });
        }
    }

    /// fsyncs every partition (graceful shutdown).
    pub async fn flush_all(&self) {
        for topic in self.topics.all() {
            for p in &topic.partitions {
                if let Err(e) = p.flush().await {
                    tracing::error!(topic = %topic.name, partition = p.index, "final flush failed: {e}");
                }
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || e.raw_os_error() == Some(24) // EMFILE: too many open files
        || e.raw_os_error() == Some(23)
}

/// Hands out producer ids that are never reused, even across restarts: ids
/// are reserved in blocks, and the end of the reserved block is stored
/// durably (write, fsync, rename) before any id of it is given out.
#[derive(Debug)]
pub struct ProducerIds {
    dir: std::path::PathBuf,
    next: i64,
    limit: i64,
}

const ID_BLOCK: i64 = 1000;
const ID_FILE: &str = "producer-ids";

impl ProducerIds {
    /// Reads the reserved block end; the next id starts there.
    pub fn open(dir: &std::path::Path) -> Result<ProducerIds, StorageError> {
        let path = dir.join(ID_FILE);
        let next = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| StorageError::Corrupt {
                path: path.clone(),
                position: 0,
                reason: format!("not a number: {s:?}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(StorageError::Io {
                    verb: "read",
                    path,
                    source: e,
                })
            }
        };
        Ok(ProducerIds {
            dir: dir.to_path_buf(),
            next,
            limit: next,
        })
    }

    /// A new producer id.
    pub fn allocate(&mut self) -> Result<i64, StorageError> {
        if self.next >= self.limit {
            let limit = self.next + ID_BLOCK;
            crate::storage::log::write_atomically(
                &self.dir,
                ID_FILE,
                limit.to_string().as_bytes(),
            )?;
            self.limit = limit;
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}
