//! Storage errors: what failed (subject), how (verb), and why.

use std::path::PathBuf;

/// A storage failure, naming the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{verb} {}: {source}", path.display())]
    Io {
        verb: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt batch in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("partition is offline past offset {offset}: {reason}")]
    Offline { offset: i64, reason: String },
    #[error("producer {producer_id}: sequence {got} does not follow {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer_id}: epoch {got} is older than {current}")]
    FencedEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OutOfRange { offset: i64, start: i64, end: i64 },
}

impl StorageError {
    /// Wraps an io error with its subject and verb.
    pub fn io(verb: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { verb, path, source }
    }
}
