//! Durable storage of a broker replica: partition logs made of segments of
//! RecordBatches, the leader-epoch cache, idempotent producer state.

pub mod batch;
pub mod epochs;
pub mod error;
pub mod log;
pub mod offsets;
pub mod producers;
pub mod segment;

#[cfg(test)]
mod log_tests;

pub use error::StorageError;
pub use log::{LogConfig, PartitionLog, Recovery};
