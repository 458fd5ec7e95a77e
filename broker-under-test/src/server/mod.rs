//! The Kafka-protocol server: accepts connections and hands each request to
//! its API handler. Input: TCP connections. Output: Kafka responses.

pub mod api;
pub mod connection;

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::controller::state::{Command, CommandError, Reply};
use crate::controller::{Controller, ControllerConfig};
use crate::storage::StorageError;
use crate::topics::{CreateError, TopicConfig, Topics};

/// Everything a request handler can reach.
#[derive(Debug)]
pub struct Broker {
    pub config: Arc<Config>,
    /// The local partition replicas.
    pub topics: Arc<Topics>,
    /// Cluster state: brokers, topics, leaders, ISRs, committed offsets.
    pub controller: Arc<Controller>,
    /// Consumer-group membership (on the coordinator, the Raft leader).
    pub coordinator: Arc<crate::coordinator::Coordinator>,
    /// Producer ids for idempotent producers.
    pub producer_ids: Mutex<ProducerIds>,
    /// Bumped on every append to any partition; fetches long-poll on it.
    pub appended: Arc<watch::Sender<u64>>,
}

/// Why the broker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Controller(String),
}

impl Broker {
    /// Opens the data dir and starts the controller; the replica manager
    /// opens (recovering) each partition this broker hosts.
    pub async fn open(config: Config) -> Result<Arc<Broker>, OpenError> {
        let appended = Arc::new(watch::channel(0u64).0);
        let topics = Topics::new(&config, appended.clone())?;
        let controller = Controller::start(ControllerConfig {
            id: config.id,
            voters: config.voters.clone(),
            listen: config.controller_listen,
            dir: config.data_dir.join("controller"),
            lease: config.broker_lease,
        })
        .await
        .map_err(OpenError::Controller)?;
        Ok(Arc::new(Broker {
            config: Arc::new(config),
            topics: Arc::new(topics),
            controller,
            producer_ids: Mutex::new(ProducerIds::default()),
            coordinator: Arc::new(crate::coordinator::Coordinator::default()),
            appended,
        }))
    }

    /// The narrow view the replica manager works with.
    pub fn replicas(&self) -> crate::replica::ReplicaContext {
        crate::replica::ReplicaContext {
            config: self.config.clone(),
            topics: self.topics.clone(),
            controller: self.controller.clone(),
        }
    }

    /// Starts the replica manager and registration, then accepts
    /// connections until the listener fails; one task per connection.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                coordinator.tick();
            }
        });
        tokio::spawn(crate::replica::run(self.replicas()));
        tokio::spawn(self.controller.clone().keep_registered(
            self.config.advertise_host.clone(),
            self.config.advertise_port,
        ));
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
        for p in self.topics.all() {
            if let Err(e) = p.flush().await {
                tracing::error!(topic = %p.topic, partition = p.index, "final flush failed: {e}");
            }
        }
    }

    /// Creates a topic through the controller (-1: the broker defaults) and
    /// waits until this broker's copy of the cluster state holds it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        min_insync_replicas: Option<i32>,
        validate_only: bool,
    ) -> Result<TopicConfig, CreateError> {
        let config = TopicConfig {
            partitions: if partitions == -1 {
                self.config.default_partitions
            } else {
                partitions
            },
            replication_factor: if replication_factor == -1 {
                self.config.default_replication_factor
            } else {
                replication_factor
            },
            min_insync_replicas: min_insync_replicas.unwrap_or(1),
            unclean_leader_election: self.config.unclean_leader_election,
        };
        let counts = |s: &crate::controller::state::ClusterState| {
            (
                s.topics.contains_key(name),
                s.brokers.values().filter(|b| !b.fenced).count(),
            )
        };
        // While the cluster starts, brokers are still registering: give them
        // a moment before refusing a replication factor.
        let mut version = self.controller.applied.version.subscribe();
        let deadline = tokio::time::Instant::now() + crate::controller::PROPOSE_TIMEOUT;
        let (exists, live) = loop {
            let (exists, live) = self.controller.applied.read(counts);
            if exists || live >= config.replication_factor.max(1) as usize {
                break (exists, live);
            }
            if tokio::time::timeout_at(deadline, version.changed())
                .await
                .is_err()
            {
                break (exists, live);
            }
        };
        crate::topics::check(name, &config, live)?;
        if exists {
            return Err(CreateError::Exists(name.to_string()));
        }
        if validate_only {
            return Ok(config);
        }
        let cmd = Command::CreateTopic {
            name: name.to_string(),
            config: config.clone(),
        };
        match self.controller.propose(cmd).await {
            Ok(Reply::Ok) => {}
            Ok(Reply::Error(CommandError::TopicExists(_))) => {
                return Err(CreateError::Exists(name.to_string()))
            }
            Ok(Reply::Error(CommandError::NotEnoughBrokers { factor, live })) => {
                return Err(CreateError::InvalidReplicationFactor { factor, live })
            }
            Ok(other) => return Err(CreateError::Controller(format!("{other:?}"))),
            Err(e) => return Err(CreateError::Controller(e)),
        }
        // Answer once this broker knows the topic and leads its share of it,
        // so a client that produces here next finds a leader.
        let deadline = tokio::time::Instant::now() + crate::controller::PROPOSE_TIMEOUT;
        let me = self.config.id;
        while tokio::time::Instant::now() < deadline {
            let leaders: Option<Vec<i32>> = self.controller.applied.read(|s| {
                s.topics.get(name).map(|t| {
                    (0..t.partitions.len() as i32)
                        .filter(|&i| t.partitions[i as usize].leader == me)
                        .collect()
                })
            });
            let ready = leaders.is_some_and(|mine| {
                mine.iter()
                    .all(|&i| self.topics.get(name, i).is_some_and(|p| p.is_leader()))
            });
            if ready {
                break;
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(10), version.changed()).await;
        }
        tracing::info!(
            topic = name,
            partitions = config.partitions,
            replication_factor = config.replication_factor,
            "created topic"
        );
        Ok(config)
    }

    /// A new producer id, unique in the cluster: ids come in blocks
    /// reserved through the controller.
    pub async fn allocate_producer_id(&self) -> Result<i64, String> {
        if let Some(id) = self
            .producer_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Ok(id);
        }
        match self
            .controller
            .propose(Command::AllocateProducerIds { count: ID_BLOCK })
            .await?
        {
            Reply::ProducerIds { first } => {
                let mut ids = self.producer_ids.lock().unwrap_or_else(|e| e.into_inner());
                ids.next = first + 1;
                ids.limit = first + ID_BLOCK;
                Ok(first)
            }
            other => Err(format!("unexpected controller reply {other:?}")),
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
        || e.raw_os_error() == Some(24) // EMFILE: too many open files
        || e.raw_os_error() == Some(23)
}

/// The block of producer ids this broker hands out; the controller
/// reserves blocks, so ids are never reused in the cluster, even across
/// restarts.
#[derive(Debug, Default)]
pub struct ProducerIds {
    next: i64,
    limit: i64,
}

const ID_BLOCK: i64 = 1000;

impl ProducerIds {
    fn take(&mut self) -> Option<i64> {
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
}
