//! unlost: a chaos and durability test harness for message brokers.
//!
//! Pipeline (DESIGN.md): `plan` (YAML -> Plan) -> `cluster` (node
//! processes) -> `nemesis` (faults) + `workload` (producers, consumers) ->
//! `history` (JSONL) -> `checker` (Outcome) -> `report` (results, summary).
//! `driver` is everything that knows a broker's client protocol.
//! `run` wires the stages; `cli` is the command line.

// No function over 120 lines outside tests (clippy.toml sets the limit).
#![warn(clippy::too_many_lines)]

pub mod checker;
pub mod cli;
pub mod cluster;
pub mod doctor;
pub mod draw;
pub mod driver;
pub mod error;
pub mod events;
pub mod exit;
pub mod explore;
pub mod history;
pub mod lazyfs;
pub mod matrix;
pub mod nemesis;
pub mod plan;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod suite;
pub mod vocabulary;
pub mod workload;

pub use error::Error;
