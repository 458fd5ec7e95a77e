//! Checker tests: small histories that produce each anomaly exactly, and a
//! property test over generated histories with injected anomalies.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::history::{Event, EventKind};

#[derive(Default)]
struct H {
    events: Vec<Event>,
    t: u64,
}

impl H {
    fn new(max_in_flight: u32) -> Self {
        let mut h = H::default();
        h.ev(
            "harness",
            EventKind::Run {
                plan: "t".into(),
                seed: 1,
                partitions: 3,
                max_in_flight,
                retries: 2,
                consumers: 0,
                queue: false,
            },
        );
        h
    }
    /// A history of a queue: no positions, consumers take what they ack.
    fn queue() -> Self {
        let mut h = H::new(5);
        h.events[0].kind = one_partition_run(1, true);
        h
    }
    fn ack(&mut self, c: &str, v: &str) -> &mut Self {
        self.ev(
            c,
            EventKind::Ack {
                partition: 0,
                offset: -1,
                value: Some(v.into()),
            },
        )
    }
    fn ev(&mut self, process: &str, kind: EventKind) -> &mut Self {
        self.t += 1000;
        self.events.push(Event {
            t: self.t,
            process: process.into(),
            kind,
        });
        self
    }
    fn invoke(&mut self, v: &str, attempt: u32) -> &mut Self {
        let p = v.split('-').next().unwrap().to_string();
        self.ev(
            &p,
            EventKind::Invoke {
                value: v.into(),
                attempt,
            },
        )
    }
    fn ok(&mut self, v: &str, partition: i32, offset: i64) -> &mut Self {
        self.invoke(v, 1);
        let p = v.split('-').next().unwrap().to_string();
        self.ev(
            &p,
            EventKind::Ok {
                value: v.into(),
                attempt: 1,
                partition,
                offset,
            },
        )
    }
    fn drain(&mut self, v: &str, partition: i32, offset: i64) -> &mut Self {
        self.ev(
            "drain",
            EventKind::Drain {
                partition,
                offset,
                value: v.into(),
            },
        )
    }
    fn deliver(&mut self, c: &str, v: &str, partition: i32, offset: i64) -> &mut Self {
        self.ev(
            c,
            EventKind::Deliver {
                partition,
                offset,
                value: v.into(),
            },
        )
    }
    fn done(&mut self) -> Outcome {
        self.ev(
            "drain",
            EventKind::DrainEnd {
                complete: true,
                high_watermarks: BTreeMap::new(),
                error: None,
                unreadable: Vec::new(),
            },
        );
        self.check()
    }
    /// Checks through both paths (events in memory, and the JSONL fast
    /// path of stored histories) and requires the same outcome.
    fn check(&self) -> Outcome {
        let direct = check(self.events.iter().cloned().map(Ok), &defaults()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let text: String = self
            .events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        std::fs::write(&path, text).unwrap();
        let folded = evaluate(&fold(&path).unwrap(), &defaults());
        assert_eq!(direct.counts, folded.counts);
        assert_eq!(direct.examples, folded.examples);
        assert_eq!(direct.stats, folded.stats);
        assert_eq!(direct.verdict, folded.verdict);
        direct
    }
}

/// The first line of a one-partition run with `consumers` consumers.
fn one_partition_run(consumers: u32, queue: bool) -> EventKind {
    EventKind::Run {
        plan: "t".into(),
        seed: 1,
        partitions: 1,
        max_in_flight: 5,
        retries: 2,
        consumers,
        queue,
    }
}

fn defaults() -> BTreeMap<Anomaly, Expect> {
    Expect::defaults()
}

fn only(o: &Outcome, a: Anomaly, n: u64) {
    for (k, v) in &o.counts {
        let want = if *k == a { n } else { 0 };
        assert_eq!(*v, want, "{k}: {:?}", o.examples[k]);
    }
}

#[test]
fn clean_history_is_valid() {
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0).ok("p0-1", 1, 0).ok("p1-0", 0, 1);
    h.drain("p0-0", 0, 0)
        .drain("p1-0", 0, 1)
        .drain("p0-1", 1, 0);
    let o = h.done();
    assert_eq!(o.verdict, Verdict::Valid);
    assert!(o.expectations_met);
    assert_eq!((o.stats.sent, o.stats.acked, o.stats.drained), (3, 3, 3));
    for n in o.counts.values() {
        assert_eq!(*n, 0);
    }
}

#[test]
fn lost_is_listed_with_the_faults_around_its_ack() {
    let mut h = H::new(5);
    h.ev(
        "nemesis",
        EventKind::FaultStart {
            id: 1,
            fault: "kill".into(),
            targets: vec![2],
            detail: "leader".into(),
            line: Some(0),
        },
    );
    h.ok("p0-0", 0, 0).ok("p0-1", 0, 1);
    h.ev(
        "nemesis",
        EventKind::FaultEnd {
            id: 1,
            fault: "kill".into(),
            targets: vec![2],
        },
    );
    h.drain("p0-0", 0, 0);
    let o = h.done();
    only(&o, Anomaly::Lost, 1);
    assert_eq!(o.verdict, Verdict::Invalid);
    assert!(!o.expectations_met);
    assert_eq!(o.lost[0].value, "p0-1");
    assert_eq!((o.lost[0].partition, o.lost[0].offset), (0, 1));
    assert_eq!(o.lost[0].faults, vec!["kill#1 [2] leader".to_string()]);
}

#[test]
fn unexpected_values() {
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0);
    h.invoke("p0-1", 1).ev(
        "p0",
        EventKind::Fail {
            value: "p0-1".into(),
            attempt: 1,
            error: "refused".into(),
        },
    );
    h.drain("p0-0", 0, 0)
        .drain("p0-1", 0, 1)
        .drain("p9-9", 0, 2)
        .drain("garbage", 0, 3);
    only(&h.done(), Anomaly::Unexpected, 3);
}

#[test]
fn inconsistent_offset_between_ack_and_drain() {
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0).ok("p1-0", 1, 0);
    h.drain("p1-0", 0, 0);
    let o = h.done();
    assert_eq!(o.counts[&Anomaly::InconsistentOffset], 1);
    assert_eq!(
        o.examples[&Anomaly::InconsistentOffset][0],
        "0/0: p0-0 then p1-0 (in drain)"
    );
    assert_eq!(o.counts[&Anomaly::Lost], 1);
}

#[test]
fn duplicates_are_traced_to_retries() {
    let mut h = H::new(5);
    h.invoke("p0-0", 1).ev(
        "p0",
        EventKind::Info {
            value: "p0-0".into(),
            attempt: 1,
            error: "timeout".into(),
        },
    );
    h.invoke("p0-0", 2).ev(
        "p0",
        EventKind::Ok {
            value: "p0-0".into(),
            attempt: 2,
            partition: 0,
            offset: 1,
        },
    );
    h.ok("p0-1", 0, 2);
    h.drain("p0-0", 0, 0)
        .drain("p0-0", 0, 1)
        .drain("p0-1", 0, 2)
        .drain("p0-1", 0, 3);
    let o = h.done();
    only(&o, Anomaly::Duplicated, 2);
    assert_eq!(o.duplicates_by_cause.get("producer-retry"), Some(&1));
    assert_eq!(o.duplicates_by_cause.get("unexplained"), Some(&1));
    assert_eq!(
        o.verdict,
        Verdict::Valid,
        "duplicates do not fail by default"
    );
}

#[test]
fn redelivered_and_recovered() {
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0);
    h.invoke("p0-1", 1).ev(
        "p0",
        EventKind::Info {
            value: "p0-1".into(),
            attempt: 1,
            error: "timeout".into(),
        },
    );
    h.deliver("c0#1", "p0-0", 0, 0)
        .ev("c0#2", EventKind::ConsumerStart)
        .deliver("c0#2", "p0-0", 0, 0);
    h.drain("p0-0", 0, 0).drain("p0-1", 0, 1);
    let o = h.done();
    assert_eq!(o.counts[&Anomaly::Redelivered], 1);
    assert_eq!(o.counts[&Anomaly::Recovered], 1);
    assert_eq!(o.stats.indeterminate, 1);
    assert_eq!(o.verdict, Verdict::Valid);
}

#[test]
fn reordered_only_with_one_in_flight() {
    for (in_flight, want) in [(1, 1), (5, 0)] {
        let mut h = H::new(in_flight);
        h.ok("p0-0", 0, 5).ok("p0-1", 0, 3);
        h.drain("p0-1", 0, 3).drain("p0-0", 0, 5);
        only(&h.done(), Anomaly::Reordered, want);
    }
}

#[test]
fn skipped_when_acknowledged_one_by_one_but_never_processed() {
    // Per-message acknowledgement (JetStream, Redis): no committed offset;
    // a message a member acknowledged and nobody processed is skipped, one
    // acknowledged after processing, or never acknowledged, is not.
    let mut h = H::new(5);
    for i in 0..4 {
        h.ok(&format!("p0-{i}"), 0, 100 + i);
    }
    h.deliver("c0#1", "p0-0", 0, 100);
    for o in [100, 101] {
        h.ev(
            "c0#1",
            EventKind::Ack {
                partition: 0,
                offset: o,
                value: None,
            },
        );
    }
    for i in 0..4 {
        h.drain(&format!("p0-{i}"), 0, 100 + i);
    }
    let o = h.done();
    only(&o, Anomaly::Skipped, 1);
    assert_eq!(o.examples[&Anomaly::Skipped][0], "0/101 p0-1");
}

#[test]
fn a_queue_accounts_for_what_the_group_took_and_names_what_it_lost() {
    // p0-0: processed then acked (taken out of the queue): fine.
    // p0-1: acked before processing, never processed: skipped.
    // p0-2: still in the queue at the drain: fine.
    // p0-3: acknowledged by the broker, neither taken nor drained: lost.
    // p0-4: delivered twice (a redelivery after a crash), then acked.
    // p0-5: the drain finds it twice: duplicated.
    // p9-0: never sent, given to a member: unexpected.
    // p1-0: its send timed out, yet a member was given it: recovered.
    let mut h = H::queue();
    for i in 0..6 {
        h.ok(&format!("p0-{i}"), 0, -1);
    }
    h.invoke("p1-0", 1).ev(
        "p1",
        EventKind::Info {
            value: "p1-0".into(),
            attempt: 1,
            error: "no confirm".into(),
        },
    );
    h.deliver("c0#1", "p1-0", 0, -1).ack("c0#1", "p1-0");
    h.deliver("c0#1", "p0-0", 0, -1).ack("c0#1", "p0-0");
    h.ack("c0#1", "p0-1");
    h.deliver("c0#1", "p0-4", 0, -1);
    h.ev("c0#1", EventKind::ConsumerCrash);
    h.deliver("c0#2", "p0-4", 0, -1).ack("c0#2", "p0-4");
    h.deliver("c0#2", "p9-0", 0, -1).ack("c0#2", "p9-0");
    h.drain("p0-2", 0, -1)
        .drain("p0-5", 0, -1)
        .drain("p0-5", 0, -1);
    let o = h.done();
    let count = |a: Anomaly| o.counts[&a];
    assert_eq!(count(Anomaly::Lost), 1, "{:?}", o.examples[&Anomaly::Lost]);
    assert!(o.examples[&Anomaly::Lost][0].starts_with("p0-3 "));
    assert_eq!(o.examples[&Anomaly::Skipped], vec!["p0-1".to_string()]);
    assert_eq!(
        o.examples[&Anomaly::Redelivered],
        vec!["p0-4 x2".to_string()]
    );
    assert_eq!(o.examples[&Anomaly::Duplicated].len(), 1);
    assert_eq!(o.examples[&Anomaly::Unexpected], vec!["p9-0".to_string()]);
    assert_eq!(o.examples[&Anomaly::Recovered], vec!["p1-0".to_string()]);
    // Positions say nothing here: those anomalies are not applicable, and
    // no expectation is held against them.
    assert_eq!(
        o.not_applicable,
        vec![
            Anomaly::Unreadable,
            Anomaly::InconsistentOffset,
            Anomaly::Reordered,
            Anomaly::NonmonotonicPoll,
            Anomaly::LostCommit
        ]
    );
    assert!(o.expectations.iter().all(|e| !e.anomaly.needs_positions()));
    assert_eq!(o.verdict, Verdict::Invalid);
    // The same history as a log would call every taken message lost.
    let mut log = H::new(5);
    log.events = h.events.clone();
    if let EventKind::Run { queue, .. } = &mut log.events[0].kind {
        *queue = false;
    }
    let o = log.check();
    assert_eq!(o.counts[&Anomaly::Lost], 4);
    assert!(o.not_applicable.is_empty());
}

#[test]
fn skipped_below_the_committed_offset() {
    let mut h = H::new(5);
    for i in 0..4 {
        h.ok(&format!("p0-{i}"), 0, i);
    }
    h.deliver("c0#1", "p0-0", 0, 0)
        .deliver("c0#1", "p0-2", 0, 2);
    h.ev(
        "c0#1",
        EventKind::Commit {
            partition: 0,
            offset: 3,
        },
    );
    for i in 0..4 {
        h.drain(&format!("p0-{i}"), 0, i);
    }
    let o = h.done();
    only(&o, Anomaly::Skipped, 1);
    assert_eq!(o.examples[&Anomaly::Skipped][0], "0/1 p0-1");
}

#[test]
fn lost_commit_when_the_group_ends_below_an_acknowledged_commit() {
    let commit = |partition, offset| EventKind::Commit { partition, offset };
    let end = |partition, offset| EventKind::GroupCommitted { partition, offset };
    let run = |finals: &[(i32, i64)]| {
        let mut h = H::new(5);
        for i in 0..4 {
            h.ok(&format!("p0-{i}"), 0, i).ok(&format!("p1-{i}"), 1, i);
        }
        for i in 0..4 {
            h.deliver("c0#1", &format!("p0-{i}"), 0, i)
                .deliver("c0#1", &format!("p1-{i}"), 1, i);
        }
        h.ev("c0#1", commit(0, 2)).ev("c0#1", commit(0, 4));
        h.ev("c0#1", commit(1, 4));
        for &(p, o) in finals {
            h.ev("group", end(p, o));
        }
        for i in 0..4 {
            h.drain(&format!("p0-{i}"), 0, i)
                .drain(&format!("p1-{i}"), 1, i);
        }
        h.done()
    };
    // The broker kept both commits (and the later, higher one counts).
    only(&run(&[(0, 4), (1, 4)]), Anomaly::LostCommit, 0);
    // Partition 0 went back to an older commit; partition 1 has none.
    let o = run(&[(0, 2)]);
    only(&o, Anomaly::LostCommit, 2);
    assert_eq!(
        o.examples[&Anomaly::LostCommit][0],
        "partition 0: a commit at offset 4 was acknowledged; the group's committed offset at the end is 2"
    );
    assert!(o.examples[&Anomaly::LostCommit][1].contains("no committed offset"));
    assert_eq!(o.verdict, Verdict::Invalid);
    // Not read at the end: not checked.
    only(&run(&[]), Anomaly::LostCommit, 0);
}

#[test]
fn nonmonotonic_poll_unless_reassigned() {
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0).ok("p0-1", 0, 1);
    h.deliver("c0#1", "p0-1", 0, 1)
        .deliver("c0#1", "p0-0", 0, 0);
    h.ev(
        "c0#1",
        EventKind::Assign {
            partitions: vec![0],
        },
    )
    .deliver("c0#1", "p0-0", 0, 0);
    h.drain("p0-0", 0, 0).drain("p0-1", 0, 1);
    let o = h.done();
    assert_eq!(o.counts[&Anomaly::NonmonotonicPoll], 1);
    assert_eq!(o.counts[&Anomaly::Redelivered], 1);
}

#[test]
fn unfinished_drain_makes_the_verdict_unknown() {
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0);
    h.ev(
        "drain",
        EventKind::DrainEnd {
            complete: false,
            high_watermarks: BTreeMap::new(),
            error: Some("timed out".into()),
            unreadable: Vec::new(),
        },
    );
    let o = h.check();
    assert_eq!(o.verdict, Verdict::Unknown);
    assert!(!o.expectations_met);
    assert!(o.expectations.iter().all(|e| e.met.is_none()));
    assert_eq!(o.drain_error.as_deref(), Some("timed out"));
}

#[test]
fn a_run_below_the_floor_is_unknown_with_its_reasons() {
    // Nothing acknowledged, consumers that processed nothing, and a plan
    // fault that was due twice and never had anything to act on.
    let mut h = H::new(5);
    h.events[0].kind = one_partition_run(2, false);
    h.invoke("p0-0", 1);
    for _ in 0..2 {
        h.ev(
            "nemesis",
            EventKind::FaultSkipped {
                fault: "kill".into(),
                line: 1,
                reason: "no follower of partition 0".into(),
            },
        );
    }
    let o = h.done();
    assert_eq!(o.verdict, Verdict::Unknown);
    assert!(!o.expectations_met);
    assert!(o.expectations.iter().all(|e| e.met.is_none()));
    assert_eq!(o.floor.len(), 3, "{:?}", o.floor);
    assert!(o.floor[0].contains("none acknowledged"), "{:?}", o.floor);
    assert!(
        o.floor[1].contains("2 consumers processed no message"),
        "{:?}",
        o.floor
    );
    assert!(
        o.floor[2].contains("faults[1] (kill) never acted: due 2 times")
            && o.floor[2].contains("no follower"),
        "{:?}",
        o.floor
    );

    // The same run with real work, and the fault acting once: valid.
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0);
    h.ev(
        "nemesis",
        EventKind::FaultSkipped {
            fault: "kill".into(),
            line: 1,
            reason: "no follower of partition 0".into(),
        },
    );
    h.ev(
        "nemesis",
        EventKind::FaultStart {
            id: 2,
            fault: "kill".into(),
            targets: vec![3],
            detail: "follower".into(),
            line: Some(1),
        },
    );
    h.drain("p0-0", 0, 0);
    let o = h.done();
    assert!(o.floor.is_empty(), "{:?}", o.floor);
    assert_eq!(o.verdict, Verdict::Valid);
}

#[test]
fn a_range_reported_but_not_served_is_unreadable_not_lost() {
    let mut h = H::new(5);
    // Acked at 0/0..0/3; the drain reads 0/0, the broker reports up to 4
    // but serves nothing from 2; p0-1 (acked at 0/1) is simply gone.
    h.ok("p0-0", 0, 0)
        .ok("p0-1", 0, 1)
        .ok("p0-2", 0, 2)
        .ok("p0-3", 0, 3);
    h.drain("p0-0", 0, 0);
    let range = crate::history::Unreadable {
        partition: 0,
        from: 2,
        to: 4,
        waited_ms: 20_000,
        reason: "no records".into(),
    };
    let empty = crate::history::Unreadable {
        partition: 1,
        from: 0,
        to: 7,
        ..range.clone()
    };
    h.ev(
        "drain",
        EventKind::DrainEnd {
            complete: true,
            high_watermarks: BTreeMap::from([("0".into(), 4), ("1".into(), 7)]),
            error: None,
            unreadable: vec![range, empty],
        },
    );
    let o = h.check();
    assert!(
        o.drain_complete,
        "an unreadable range is a finding, not an unfinished drain"
    );
    assert_eq!(o.counts[&Anomaly::Lost], 1, "{:?}", o.examples);
    assert_eq!(o.lost[0].value, "p0-1");
    // p0-2 and p0-3, and the range of partition 1 that holds no ack.
    assert_eq!(o.counts[&Anomaly::Unreadable], 3, "{:?}", o.examples);
    let ex = &o.examples[&Anomaly::Unreadable];
    assert!(
        ex[0].starts_with("p0-2 at 0/2") && ex[0].contains("positions 2..4"),
        "{ex:?}"
    );
    assert!(ex[2].contains("partition 1 positions 0..7"), "{ex:?}");
    assert_eq!(o.verdict, Verdict::Invalid);
    assert_eq!(o.unreadable.len(), 2);
}

/// A correct run: producers append to partitions in order; a group
/// processes a prefix of each partition and commits it; the drain reads
/// everything. Then `lose` acked messages vanish from the drain, `dup`
/// values are stored twice, and `skip` processed messages are forgotten.
fn generated(sends: &[(u32, i32)], lose: usize, dup: usize, skip: usize) -> Outcome {
    let mut h = H::new(5);
    let mut log: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut seq = BTreeMap::new();
    for &(producer, partition) in sends {
        let s = seq.entry(producer).or_insert(0u64);
        let v = format!("p{producer}-{s}");
        *s += 1;
        let entries = log.entry(partition).or_default();
        h.ok(&v, partition, entries.len() as i64);
        entries.push(v);
    }
    // The group processes the first half of each partition and commits it.
    let mut skipped = 0;
    for (p, entries) in &log {
        let half = entries.len() / 2;
        for (o, v) in entries.iter().enumerate().take(half) {
            if skipped < skip {
                skipped += 1;
                continue;
            }
            h.deliver("c0#1", v, *p, o as i64);
        }
        if half > 0 {
            h.ev(
                "c0#1",
                EventKind::Commit {
                    partition: *p,
                    offset: half as i64,
                },
            );
        }
    }
    let mut lost = 0;
    let mut dups = 0;
    for (p, entries) in &log {
        let mut next = entries.len() as i64;
        for (o, v) in entries.iter().enumerate() {
            // Lose only messages above the committed half (a skipped or
            // processed one would count twice).
            if o >= entries.len() / 2 && lost < lose {
                lost += 1;
                continue;
            }
            h.drain(v, *p, o as i64);
            if dups < dup {
                dups += 1;
                h.drain(v, *p, next);
                next += 1;
            }
        }
    }
    assert_eq!(
        (lost, dups, skipped),
        (lose, dup, skip),
        "generator could not inject all"
    );
    h.done()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn generated_histories_have_exactly_the_injected_anomalies(
        sends in prop::collection::vec((0u32..4, 0i32..3), 40..200),
        lose in 0usize..5,
        dup in 0usize..5,
        skip in 0usize..5,
    ) {
        let o = generated(&sends, lose, dup, skip);
        prop_assert_eq!(o.counts[&Anomaly::Lost], lose as u64);
        prop_assert_eq!(o.counts[&Anomaly::Duplicated], dup as u64);
        prop_assert_eq!(o.counts[&Anomaly::Skipped], skip as u64);
        for a in [Anomaly::Unexpected, Anomaly::InconsistentOffset, Anomaly::Redelivered, Anomaly::Recovered, Anomaly::Reordered, Anomaly::NonmonotonicPoll] {
            prop_assert_eq!(o.counts[&a], 0, "{}: {:?}", a, o.examples[&a]);
        }
        prop_assert_eq!(o.verdict == Verdict::Valid, lose == 0 && skip == 0);
        prop_assert_eq!(o.stats.acked, sends.len() as u64);
    }
}

#[test]
fn replica_reads_are_compared_but_never_make_a_value_present() {
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0).ok("p0-1", 0, 1);
    h.drain("p0-0", 0, 0);
    let replica = |h: &mut H, node: i32, v: &str, offset: i64| {
        h.ev(
            "replicas",
            EventKind::ReplicaRead {
                node,
                partition: 0,
                offset,
                value: v.into(),
            },
        );
    };
    replica(&mut h, 2, "p0-0", 0);
    // A follower holding the lost value does not rescue it...
    replica(&mut h, 3, "p0-1", 1);
    let o = h.done();
    only(&o, Anomaly::Lost, 1);
    // ...and a follower that disagrees with the drain is caught.
    let mut h = H::new(5);
    h.ok("p0-0", 0, 0).ok("p0-1", 0, 1);
    h.drain("p0-0", 0, 0).drain("p0-1", 0, 1);
    replica(&mut h, 2, "p0-0", 0);
    replica(&mut h, 3, "p0-0", 1);
    let o = h.done();
    only(&o, Anomaly::InconsistentOffset, 1);
    assert_eq!(
        o.examples[&Anomaly::InconsistentOffset][0],
        "0/1: p0-1 then p0-0 (in replica read)"
    );
}
