//! unlost: a chaos and durability test harness for message brokers.
//!
//! Pipeline (DESIGN.md): `plan` (YAML -> Plan) -> `cluster` (node
//! processes) -> `nemesis` (faults) + `workload` (producers, consumers) ->
//! `history` (JSONL) -> `checker` (Outcome) -> `report` (results, summary).
//! `run` wires the stages; `cli` is the command line.

pub mod checker;
pub mod history;
pub mod plan;
