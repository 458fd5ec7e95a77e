//! What the sandbox could not set up: a capability this machine lacks
//! (exit 3), or a step that failed (exit 4).

/// A sandbox step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The machine lacks something the sandbox needs.
    #[error("this machine lacks {what}: {hint}")]
    Missing { what: String, hint: String },
    /// A step failed although the machine has what it needs.
    #[error("sandbox: {step}: {reason}")]
    Failed { step: String, reason: String },
}

impl SandboxError {
    pub(super) fn failed(step: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        SandboxError::Failed {
            step: step.into(),
            reason: reason.to_string(),
        }
    }

    /// The process exit code: 3 for a missing capability, 4 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            SandboxError::Missing { .. } => crate::exit::CAPABILITY,
            SandboxError::Failed { .. } => crate::exit::HARNESS,
        }
    }
}
