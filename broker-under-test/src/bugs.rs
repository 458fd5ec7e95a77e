//! Deliberate durability bugs, for proving that unlost catches them (the
//! harness's negative controls: plans/teeth/, `ci/teeth`).
//!
//! Each bug is a small wrong code path of the kind a broker developer
//! commits by mistake, at one site in the broker, selected at start with
//! `--bug NAME` (`--bug list` prints them). They exist only in a build
//! with the cargo feature `bugs`: in a default build, the one users run,
//! `on` is the constant `false` at every site and `--bug` is refused.

use std::sync::OnceLock;

/// One deliberate bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Produce: flush `always` answers after the write and fsyncs on a
    /// 1 s tick, as if it were an interval policy.
    AckBeforeFsync,
    /// Produce: acks=all accepted and answered with fewer in-sync replicas
    /// than min.insync.replicas.
    MinIsrNotEnforced,
    /// Storage: a segment is rolled without fsyncing the old one first, so
    /// the group commit's fsync of the new segment covers nothing of it.
    RollWithoutFsync,
    /// Storage recovery: a torn tail truncates the newest segment to its
    /// start instead of to its last whole batch.
    TornTailDropsSegment,
    /// Replication: the high watermark follows the leader's log end,
    /// ignoring the followers in the ISR (acks=all answered at once).
    HwIgnoresIsr,
    /// Replication: consumers are served up to the log end, above the high
    /// watermark (uncommitted data that a new leader may not have).
    FetchAboveHw,
    /// Election: a live replica outside the ISR may be elected although
    /// unclean leader election is off.
    ElectOutsideIsr,
    /// Idempotence: the broker trusts producers' sequence numbers; a retry
    /// of a stored batch is appended again.
    SequenceNotChecked,
    /// Group coordinator: of an OffsetCommit for several partitions, only
    /// the first partition's offset is stored (all are acknowledged).
    CommitFirstPartitionOnly,
    /// Group coordinator: OffsetFetch answers the committed offset plus
    /// one (the next member skips a message).
    OffsetFetchPlusOne,
}

/// Every bug: its flag name and what it does.
pub const ALL: &[(Bug, &str, &str)] = &[
    (
        Bug::AckBeforeFsync,
        "ack-before-fsync",
        "produce: flush always answers after the write and fsyncs once a second",
    ),
    (
        Bug::MinIsrNotEnforced,
        "min-isr-not-enforced",
        "produce: acks=all answered with fewer in-sync replicas than min.insync.replicas",
    ),
    (
        Bug::RollWithoutFsync,
        "roll-without-fsync",
        "storage: a segment rolled without fsyncing the old one",
    ),
    (
        Bug::TornTailDropsSegment,
        "torn-tail-drops-segment",
        "storage recovery: a torn tail truncates the newest segment to its start",
    ),
    (
        Bug::HwIgnoresIsr,
        "hw-ignores-isr",
        "replication: the high watermark is the leader's log end, whatever the ISR has",
    ),
    (
        Bug::FetchAboveHw,
        "fetch-above-hw",
        "replication: consumers read above the high watermark",
    ),
    (
        Bug::ElectOutsideIsr,
        "elect-outside-isr",
        "election: a replica outside the ISR is elected with unclean election off",
    ),
    (
        Bug::SequenceNotChecked,
        "sequence-not-checked",
        "idempotence: a retried batch is appended again",
    ),
    (
        Bug::CommitFirstPartitionOnly,
        "commit-first-partition-only",
        "group coordinator: only the first partition of an OffsetCommit is stored",
    ),
    (
        Bug::OffsetFetchPlusOne,
        "offset-fetch-plus-one",
        "group coordinator: OffsetFetch answers the committed offset plus one",
    ),
];

static ACTIVE: OnceLock<Bug> = OnceLock::new();

/// Whether this build has the bugs in it (the `bugs` feature).
pub const BUILT_IN: bool = cfg!(feature = "bugs");

/// Whether `bug` is the one this broker runs with.
#[inline]
pub fn on(bug: Bug) -> bool {
    BUILT_IN && ACTIVE.get() == Some(&bug)
}

/// Selects a bug by its name, once, at start.
pub fn select(name: &str) -> Result<Bug, String> {
    if !BUILT_IN {
        return Err(format!(
            "--bug {name}: this build has no deliberate bugs (build with --features bugs)"
        ));
    }
    let &(bug, _, _) = ALL.iter().find(|(_, n, _)| *n == name).ok_or_else(|| {
        format!(
            "--bug {name}: unknown bug (known: {})",
            ALL.iter()
                .map(|(_, n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    ACTIVE
        .set(bug)
        .map_err(|_| "--bug given twice".to_string())?;
    Ok(bug)
}

/// `--bug list`: one line per bug.
pub fn list() -> String {
    if !BUILT_IN {
        return "this build has no deliberate bugs (build with --features bugs)\n".into();
    }
    ALL.iter()
        .map(|(_, n, d)| format!("{n:28} {d}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_selection_matches_the_build() {
        let mut names: Vec<&str> = ALL.iter().map(|(_, n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.len() >= 10);
        let r = select("no-such-bug");
        assert!(r.is_err());
        if !BUILT_IN {
            assert!(select("ack-before-fsync")
                .unwrap_err()
                .contains("no deliberate bugs"));
            assert!(!on(Bug::AckBeforeFsync));
        }
    }
}
