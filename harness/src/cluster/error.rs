//! What the cluster stage could not do: which node, and how.

use std::path::PathBuf;
use std::time::Duration;

/// A node operation that failed (start, readiness, a fault on its files).
#[derive(Debug, thiserror::Error)]
pub struct ClusterError {
    /// The node, when the error is about one.
    pub node: Option<u32>,
    pub kind: ClusterErrorKind,
}

/// How a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterErrorKind {
    #[error("{verb} {}: {source}", path.display())]
    Io {
        verb: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start ({program}): {reason}")]
    Start { program: String, reason: String },
    #[error("exited during start ({status}); last lines of {}:\n{tail}", log.display())]
    ExitedDuringStart {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("not ready after {after:?}; last lines of {}:\n{tail}", log.display())]
    NotReady {
        after: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("no such node in this cluster")]
    NoNode,
    #[error("has no lazy filesystem (storage.lazyfs is off)")]
    NoLazyFs,
    #[error("lazy filesystem: {0}")]
    LazyFs(String),
    #[error("no data file to corrupt in {}", .0.display())]
    NoDataFile(PathBuf),
    #[error("pick a free port: {0}")]
    Port(std::io::Error),
    /// This machine lacks what a node needs (exit 3).
    #[error("this machine lacks {what}: {hint}")]
    Missing { what: String, hint: String },
    /// The node's host could not be made.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The broker's recipe could not be made.
    #[error(transparent)]
    Driver(#[from] crate::driver::DriverError),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.node {
            Some(id) => write!(f, "node {id}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl<E: Into<ClusterErrorKind>> From<E> for ClusterError {
    fn from(e: E) -> Self {
        ClusterError {
            node: None,
            kind: e.into(),
        }
    }
}

impl ClusterError {
    /// An error about node `id`.
    pub fn node(id: u32, kind: ClusterErrorKind) -> ClusterError {
        ClusterError {
            node: Some(id),
            kind,
        }
    }

    /// A file operation on node `id`'s data that failed.
    pub fn io(id: u32, verb: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        ClusterError::node(
            id,
            ClusterErrorKind::Io {
                verb,
                path: path.to_path_buf(),
                source,
            },
        )
    }

    /// The process exit code: 3 for what the machine lacks, the stage's
    /// own code for sandbox and driver errors, else 4 (the harness could
    /// not run the cluster).
    pub fn exit_code(&self) -> i32 {
        match &self.kind {
            ClusterErrorKind::Missing { .. } => crate::exit::CAPABILITY,
            ClusterErrorKind::Sandbox(e) => e.exit_code(),
            ClusterErrorKind::Driver(e) => e.exit_code(),
            _ => crate::exit::HARNESS,
        }
    }
}
