//! The vocabulary shared by plans, the checker and reports: the anomalies
//! (DESIGN.md, "Checker vocabulary") and what a plan expects of their
//! counts.

use std::collections::BTreeMap;

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
    /// Below the group's committed offset, or acknowledged by a member on
    /// its own (per-message acknowledgement), and never processed by the
    /// group.
    Skipped,
    /// A consumer's offsets go backwards without a restart or rebalance.
    NonmonotonicPoll,
    /// A commit the broker acknowledged is no longer in effect at the end:
    /// the group's committed offset is below it.
    LostCommit,
}

impl Anomaly {
    /// Every anomaly, in report order.
    pub const ALL: [Anomaly; 11] = [
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
        Anomaly::LostCommit,
    ];

    /// Whether the anomaly fails a run unless the plan says otherwise.
    pub fn fails_by_default(self) -> bool {
        !matches!(
            self,
            Anomaly::Duplicated | Anomaly::Redelivered | Anomaly::Recovered
        )
    }

    /// Whether the anomaly rests on positions (offsets growing within a
    /// partition); for a queue, whose messages have none, it is not
    /// applicable.
    pub fn needs_positions(self) -> bool {
        matches!(
            self,
            Anomaly::Unreadable
                | Anomaly::InconsistentOffset
                | Anomaly::Reordered
                | Anomaly::NonmonotonicPoll
                | Anomaly::LostCommit
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
            Anomaly::LostCommit => "lost-commit",
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

/// An expectation on an anomaly count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Any count is fine.
    Any,
    /// At most this many (0: none).
    AtMost(u64),
    /// At least this many (a negative control: the harness must catch it).
    AtLeast(u64),
}

impl Expect {
    /// What a plan expects unless it says otherwise: none of the anomalies
    /// that fail by default, any number of the others.
    pub fn defaults() -> BTreeMap<Anomaly, Expect> {
        Anomaly::ALL
            .into_iter()
            .map(|a| {
                (
                    a,
                    if a.fails_by_default() {
                        Expect::AtMost(0)
                    } else {
                        Expect::Any
                    },
                )
            })
            .collect()
    }

    /// Whether `count` meets the expectation.
    pub fn met_by(self, count: u64) -> bool {
        match self {
            Expect::Any => true,
            Expect::AtMost(n) => count <= n,
            Expect::AtLeast(n) => count >= n,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Any => write!(f, "any"),
            Expect::AtMost(0) => write!(f, "0"),
            Expect::AtMost(n) => write!(f, "<={n}"),
            Expect::AtLeast(n) => write!(f, ">={n}"),
        }
    }
}
