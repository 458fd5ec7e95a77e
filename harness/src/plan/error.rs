//! Plan errors: the file, the line and column, the key path, and what is wrong.

use std::path::PathBuf;

/// A plan that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {path}{}{message}", file.display(), location(*line, *column), if path.is_empty() { "" } else { ": " })]
pub struct PlanError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Key path, e.g. `producers.rate` or `faults[2].at`.
    pub path: String,
    pub message: String,
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}
