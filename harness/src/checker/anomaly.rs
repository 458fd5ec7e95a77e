//! The anomaly vocabulary shared by plans, the checker and reports.

use serde::{Deserialize, Serialize};

/// A kind of anomaly the checker reports (DESIGN.md, "Checker vocabulary").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Anomaly {
    /// Acknowledged, absent from the final drain.
    Lost,
    /// Acknowledged at a position the broker reports but would not serve
    /// to the final drain while the cluster was stable.
    Unreadable,
    /// Present, but never sent or its send definitely failed.
    Unexpected,
    /// One offset read with different values.
    InconsistentOffset,
    /// One value at more than one offset.
    Duplicated,
    /// One value delivered to the same group more than once.
    Redelivered,
    /// An indeterminate send that is present.
    Recovered,
    /// One producer, one partition, in-flight 1: a later ack at a lower offset.
    Reordered,
    /// Below the group's committed offset, never processed by the group.
    Skipped,
    /// A consumer's offsets go backwards without a restart or rebalance.
    NonmonotonicPoll,
}

impl Anomaly {
    /// Every anomaly, in report order.
    pub const ALL: [Anomaly; 10] = [
        Anomaly::Lost,
        Anomaly::Unreadable,
        Anomaly::Unexpected,
        Anomaly::InconsistentOffset,
        Anomaly::Duplicated,
        Anomaly::Redelivered,
        Anomaly::Recovered,
        Anomaly::Reordered,
        Anomaly::Skipped,
        Anomaly::NonmonotonicPoll,
    ];

    /// Whether the anomaly fails a run unless the plan says otherwise.
    pub fn fails_by_default(self) -> bool {
        !matches!(
            self,
            Anomaly::Duplicated | Anomaly::Redelivered | Anomaly::Recovered
        )
    }

    /// The name used in plans, results and reports.
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::Lost => "lost",
            Anomaly::Unreadable => "unreadable",
            Anomaly::Unexpected => "unexpected",
            Anomaly::InconsistentOffset => "inconsistent-offset",
            Anomaly::Duplicated => "duplicated",
            Anomaly::Redelivered => "redelivered",
            Anomaly::Recovered => "recovered",
            Anomaly::Reordered => "reordered",
            Anomaly::Skipped => "skipped",
            Anomaly::NonmonotonicPoll => "nonmonotonic-poll",
        }
    }

    /// Looks an anomaly up by its name.
    pub fn from_name(s: &str) -> Option<Anomaly> {
        Anomaly::ALL.into_iter().find(|a| a.name() == s)
    }
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
