//! Plan faults + seed -> a timeline of fault instances (pure, testable).

use std::time::Duration;

use crate::draw::Draw;
use crate::plan::{FaultAction, FaultSpec, Schedule};

/// One fault to inject.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Offset from the start of the fault phase.
    pub at: Duration,
    pub action: FaultAction,
    /// How long until the inverse; None: until the end-of-run heal.
    pub hold: Option<Duration>,
    /// The plan fault it comes from (index in `faults:`).
    pub line: u32,
}

fn between(d: &mut Draw, (a, b): (Duration, Duration)) -> Duration {
    if a == b {
        return a;
    }
    Duration::from_micros(d.value(a.as_micros() as u64..=b.as_micros() as u64))
}

fn pick(d: &mut Draw, actions: &[(FaultAction, u32)]) -> FaultAction {
    let total: u32 = actions.iter().map(|(_, w)| w).sum();
    let mut n = d.value(0..total);
    for (a, w) in actions {
        if n < *w {
            return a.clone();
        }
        n -= w;
    }
    actions[0].0.clone()
}

/// Every fault instance before `duration`, in time order.
pub fn timeline(faults: &[FaultSpec], duration: Duration, seed: u64) -> Vec<Planned> {
    let mut d = Draw::new(seed, "nemesis");
    let mut out = Vec::new();
    for (line, f) in faults.iter().enumerate() {
        let mut times = Vec::new();
        match f.schedule {
            Schedule::At(at) => times.push(at),
            Schedule::Every { every, start } => {
                let mut t = start;
                while t < duration {
                    times.push(t);
                    t += every;
                }
            }
            Schedule::Random { interval } => {
                let mut t = between(&mut d, interval);
                while t < duration {
                    times.push(t);
                    t += between(&mut d, interval);
                }
            }
        }
        for at in times.into_iter().filter(|t| *t < duration) {
            let action = pick(&mut d, &f.actions);
            let hold = f.hold.map(|h| between(&mut d, h));
            out.push(Planned {
                at,
                action,
                hold,
                line: line as u32,
            });
        }
    }
    out.sort_by_key(|p| p.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FaultKind, Target};

    fn action(kind: FaultKind) -> FaultAction {
        FaultAction {
            kind,
            target: Target::Random,
            consumers: 0,
        }
    }

    #[test]
    fn every_and_random_schedules_are_reproducible() {
        let faults = vec![
            FaultSpec {
                schedule: Schedule::Every {
                    every: Duration::from_secs(10),
                    start: Duration::from_secs(5),
                },
                hold: Some((Duration::from_secs(2), Duration::from_secs(2))),
                actions: vec![(action(FaultKind::Pause), 1)],
            },
            FaultSpec {
                schedule: Schedule::Random {
                    interval: (Duration::from_secs(3), Duration::from_secs(6)),
                },
                hold: Some((Duration::from_secs(1), Duration::from_secs(2))),
                actions: vec![(action(FaultKind::Kill), 3), (action(FaultKind::Pause), 1)],
            },
        ];
        let a = timeline(&faults, Duration::from_secs(30), 42);
        assert_eq!(a, timeline(&faults, Duration::from_secs(30), 42));
        assert_ne!(a, timeline(&faults, Duration::from_secs(30), 43));
        let periodic: Vec<_> = a
            .iter()
            .filter(|p| {
                p.hold == Some(Duration::from_secs(2))
                    && p.at.as_secs() % 10 == 5
                    && p.at.subsec_nanos() == 0
            })
            .map(|p| p.at.as_secs())
            .collect();
        assert_eq!(periodic, vec![5, 15, 25]);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|p| p.at < Duration::from_secs(30)));
        let random = a.len() - 3;
        assert!(
            (4..=10).contains(&random),
            "random faults every 3-6 s in 30 s: {random}"
        );
    }
}
