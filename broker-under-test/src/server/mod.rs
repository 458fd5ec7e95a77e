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
        Ok(Arc::new(Broker {
            config,
            topics,
            offsets: Arc::new(Mutex::new(offsets)),
            appended,
        }))
    }

    /// Accepts connections until the listener fails; one task per connection.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
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
