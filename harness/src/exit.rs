//! The process exit codes, as documented (DESIGN.md): 0 expectations met,
//! 1 not met (or undecidable), 2 bad plan or usage, 3 a missing
//! capability, 4 the harness failed. Every stage's error says which of
//! them it is.

/// Expectations met.
pub const MET: i32 = 0;
/// Expectations not met (or not decidable).
pub const NOT_MET: i32 = 1;
/// Bad plan or usage.
pub const USAGE: i32 = 2;
/// The machine lacks a capability the plan needs.
pub const CAPABILITY: i32 = 3;
/// The harness itself failed.
pub const HARNESS: i32 = 4;
