//! What a run tells the outside while it goes: typed events (`RunEvent {
//! at, kind }`), fanned out to reporters. The runner never formats text;
//! the status line (`report::status`), the summary, results.json, JUnit and
//! report.html are reporters of these events and of the checked results.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The phases of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Start every node and wait until each is ready.
    ClusterUp,
    /// Create the topic and wait for a leader of every partition.
    Topic,
    /// Producers, consumers and the nemesis, for the plan's duration.
    Workload,
    /// Heal every fault, stop the consumers, wait for leaders.
    Heal,
    /// The final read.
    Drain,
    /// Every replica read on its own (where the driver can).
    ReplicaReads,
    /// History -> Outcome.
    Check,
    /// Outcome -> results.json, summary, report.html.
    Report,
}

/// Live counts of the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub indeterminate: u64,
    pub delivered: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEventKind {
    Started {
        plan: String,
        seed: u64,
        dir: PathBuf,
        duration: Duration,
    },
    PhaseStarted(Phase),
    PhaseFinished {
        phase: Phase,
        took: Duration,
    },
    /// Once a second during the workload phase.
    Progress {
        elapsed: Duration,
        total: Duration,
        counts: Counts,
        /// The faults in effect now, as the nemesis names them.
        faults: Vec<String>,
    },
}

/// One event, `at` since the run started.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    pub at: Duration,
    pub kind: RunEventKind,
}

/// Consumes events; called from the runner's tasks, so it must be cheap
/// and never block for long.
pub trait Reporter: Send + Sync {
    fn event(&self, e: &RunEvent);
}

/// The runner's outlet: stamps events, forwards them to every reporter,
/// and keeps all but progress for the results (phase timings).
pub struct Events {
    start: Instant,
    reporters: Vec<Arc<dyn Reporter>>,
    kept: Mutex<Vec<RunEvent>>,
}

impl Events {
    pub fn new(reporters: Vec<Arc<dyn Reporter>>) -> Events {
        Events {
            start: Instant::now(),
            reporters,
            kept: Mutex::new(Vec::new()),
        }
    }

    /// Sends an event to every reporter.
    pub fn emit(&self, kind: RunEventKind) {
        let e = RunEvent {
            at: self.start.elapsed(),
            kind,
        };
        for r in &self.reporters {
            r.event(&e);
        }
        if !matches!(e.kind, RunEventKind::Progress { .. }) {
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        }
    }

    /// Runs one phase between its start and finish events.
    pub async fn phase<T>(&self, phase: Phase, f: impl std::future::Future<Output = T>) -> T {
        self.emit(RunEventKind::PhaseStarted(phase));
        let started = Instant::now();
        let out = f.await;
        self.emit(RunEventKind::PhaseFinished {
            phase,
            took: started.elapsed(),
        });
        out
    }

    /// Every event but progress, in order.
    pub fn kept(&self) -> Vec<RunEvent> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// How long the phases took, from their finish events.
pub fn took(events: &[RunEvent], phases: &[Phase]) -> Duration {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            RunEventKind::PhaseFinished { phase, took } if phases.contains(phase) => Some(*took),
            _ => None,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Mutex<Vec<RunEvent>>);
    impl Reporter for Collect {
        fn event(&self, e: &RunEvent) {
            self.0.lock().unwrap().push(e.clone());
        }
    }

    #[test]
    fn reporters_see_every_event_and_timings_come_from_phases() {
        let seen = Arc::new(Collect(Mutex::new(Vec::new())));
        let events = Events::new(vec![seen.clone()]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let n = rt.block_on(events.phase(Phase::Drain, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        }));
        assert_eq!(n, 7);
        events.emit(RunEventKind::Progress {
            elapsed: Duration::ZERO,
            total: Duration::from_secs(1),
            counts: Counts::default(),
            faults: Vec::new(),
        });
        assert_eq!(seen.0.lock().unwrap().len(), 3);
        let kept = events.kept();
        assert_eq!(kept.len(), 2, "progress is not kept: {kept:?}");
        assert!(took(&kept, &[Phase::Drain]) >= Duration::from_millis(20));
        assert_eq!(took(&kept, &[Phase::Check]), Duration::ZERO);
    }
}
