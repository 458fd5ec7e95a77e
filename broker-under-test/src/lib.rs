//! unlost-broker: a small Kafka-compatible broker whose durability knobs
//! (acks, flush policy) behave as Kafka's do, so that unlost can show when
//! acknowledged messages are lost and when they are not.
//!
//! Layers: `storage` (segments, recovery, committed offsets) below
//! `partition` (log + group-commit flusher + progress watch) below `topics`
//! (registry) below `server` (connections and API handlers).

pub mod alloc;
pub mod config;
pub mod coordinator;
pub mod partition;
pub mod server;
pub mod storage;
pub mod topics;

pub use config::{Args, Config, FlushPolicy};
pub use server::Broker;
