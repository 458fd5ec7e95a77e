//! unlost-broker: a small Kafka-compatible broker whose durability knobs
//! (acks, flush policy) behave as Kafka's do, so that unlost can show when
//! acknowledged messages are lost and when they are not.
//!
//! Layers: `storage` (segments, recovery, epoch cache) below `partition`
//! (log + group-commit flusher + role + progress watch) below `topics`
//! (local replicas) below `server` (connections and API handlers);
//! `controller` (Raft group: cluster state) and `replica` (roles, follower
//! fetching, ISR changes) beside them.

// No function over 120 lines outside tests (clippy.toml sets the limit).
#![warn(clippy::too_many_lines)]

pub mod alloc;
pub mod bugs;
pub mod config;
pub mod controller;
pub mod coordinator;
pub mod partition;
pub mod replica;
pub mod server;
pub mod storage;
pub mod topics;

pub use config::{Args, Config, FlushPolicy};
pub use server::Broker;
