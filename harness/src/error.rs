//! The harness's top-level error and its exit code (DESIGN.md):
//! 2 bad plan or usage, 3 missing capability, 4 harness failure.
//! (0 and 1, expectations met or not, are outcomes, not errors.)

use crate::plan::PlanError;

pub use crate::exit;

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Usage(String),
    #[error("this machine lacks {what}: {hint}")]
    Capability { what: String, hint: String },
    #[error("cluster: {0}")]
    Node(#[from] crate::cluster::ClusterError),
    #[error("driver: {0}")]
    Driver(#[from] crate::driver::DriverError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("nemesis: {0}")]
    Nemesis(#[from] crate::nemesis::NemesisError),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    #[error("{0}")]
    Harness(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Plan(_) | Error::Usage(_) => exit::USAGE,
            Error::Capability { .. } => exit::CAPABILITY,
            Error::Node(e) => e.exit_code(),
            Error::Driver(e) => e.exit_code(),
            Error::Sandbox(e) => e.exit_code(),
            Error::Nemesis(e) => e.exit_code(),
            Error::History(_) | Error::Harness(_) => exit::HARNESS,
        }
    }
}
