//! Plan parsing and validation never panic: arbitrary bytes and arbitrary
//! plan-shaped YAML documents give a plan or an error that names the file
//! and where (a line, or at least a key path), in the plan's own words.

use std::path::Path;

use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

use super::Plan;

/// Parses `text`; fails the property on a panic, an unlocated error or
/// an error that shows Rust type names.
fn parses_or_fails_located(text: &str) -> Result<(), TestCaseError> {
    let outcome = std::panic::catch_unwind(|| Plan::parse(Path::new("fuzz.yaml"), text));
    let Ok(result) = outcome else {
        return Err(TestCaseError::fail(format!("panicked on {text:?}")));
    };
    if let Err(e) = result {
        let shown = e.to_string();
        prop_assert!(shown.starts_with("fuzz.yaml"), "{shown}");
        prop_assert!(
            e.line.is_some() || !e.path.is_empty(),
            "no location: {shown}\n{text}"
        );
        for internal in [
            "Raw",
            "Scalar",
            "untagged",
            "enum ",
            "struct ",
            "expected u",
            "expected i",
            "expected f",
        ] {
            prop_assert!(!shown.contains(internal), "Rust words in {shown:?}\n{text}");
        }
    }
    Ok(())
}

const KEYS: &[&str] = &[
    "name",
    "seed",
    "duration",
    "cluster",
    "topic",
    "producers",
    "consumers",
    "storage",
    "faults",
    "expect",
    "drain",
    "broker",
    "nodes",
    "settings",
    "recipe",
    "command",
    "ready",
    "ready_timeout",
    "partitions",
    "replication_factor",
    "min_insync_replicas",
    "count",
    "rate",
    "acks",
    "retries",
    "timeout",
    "idempotent",
    "max_in_flight",
    "size",
    "keys",
    "group",
    "commit",
    "lazyfs",
    "at",
    "every",
    "start",
    "random",
    "for",
    "kill",
    "pause",
    "restart",
    "consumer-crash",
    "partition",
    "packet-loss",
    "power-loss",
    "corrupt",
    "disk-error",
    "drop-kernel-caches",
    "torn",
    "how",
    "clients",
    "percent",
    "choose",
    "weight",
    "lost",
    "duplicated",
    "flush",
    "segment_bytes",
    "bogus",
];

const WORDS: &[&str] = &[
    "10s",
    "0s",
    "1e300s",
    "99999999999999999999h",
    "168h",
    "-1s",
    "250ms",
    "1000/s",
    "0.0000001/s",
    "1e12/s",
    "all",
    "1",
    "0",
    "-1",
    "leader",
    "leader:99",
    "follower",
    "minority",
    "majority",
    "random",
    "nodes:1,3",
    "isolate-leader",
    "leader-from-followers:0",
    "majorities-ring",
    "bridge",
    "halves",
    "one-way:1>1",
    "isolate:1,2,3",
    "any",
    ">0",
    ">=3",
    "many",
    "builtin",
    "nats",
    "redis",
    "everysec",
    "yes",
    "custom",
    "{id}",
    "{data_dir",
    "{nope}",
    "64..1024",
    "9..3",
    "5s..15s",
    "random:4",
    "after-process",
    "auto",
    "always",
    "ms:1000",
    "",
    "~",
    "\u{feff}",
];

fn scalar() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(|w| Value::String(w.into())),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        (-1e20f64..1e20).prop_map(|x| Value::Number(x.into())),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                let mut m = Mapping::new();
                for (k, v) in kv {
                    m.insert(Value::String(k.into()), v);
                }
                Value::Mapping(m)
            }),
        ]
    })
}

/// A top level that mostly looks like a plan, so validation runs deep.
fn plan_like() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((prop::sample::select(KEYS), document()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(kv, base)| {
            let mut m = Mapping::new();
            if base {
                m.insert("name".into(), "f".into());
                m.insert("duration".into(), "10s".into());
            }
            for (k, v) in kv {
                m.insert(Value::String(k.into()), v);
            }
            serde_yaml::to_string(&Value::Mapping(m)).unwrap_or_default()
        })
}

/// What a field holds in a real plan.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Number,
    Word,
    Flag,
}

fn typed(kind: Kind) -> BoxedStrategy<Value> {
    let word = prop::sample::select(WORDS).prop_map(|w| Value::String(w.into()));
    match kind {
        // Mostly the right type, sometimes anything.
        Kind::Number => prop_oneof![
            4 => (0u64..12).prop_map(|n| Value::Number(n.into())),
            2 => any::<u32>().prop_map(|n| Value::Number(n.into())),
            1 => scalar(),
        ]
        .boxed(),
        Kind::Word => prop_oneof![6 => word, 1 => scalar()].boxed(),
        Kind::Flag => prop_oneof![6 => any::<bool>().prop_map(Value::Bool), 1 => scalar()].boxed(),
    }
}

/// A mapping of some of `fields`, each with a value of (mostly) its kind.
fn section(fields: &'static [(&'static str, Kind)]) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        prop::sample::select(fields).prop_flat_map(|(k, kind)| (Just(k), typed(kind))),
        0..fields.len() + 1,
    )
    .prop_map(|kv| {
        let mut m = Mapping::new();
        for (k, v) in kv {
            m.insert(Value::String(k.into()), v);
        }
        Value::Mapping(m)
    })
}

/// A plan with the real sections and keys and odd values: validation
/// runs through every field.
fn structured() -> impl Strategy<Value = String> {
    use Kind::*;
    const FAULT: &[(&str, Kind)] = &[
        ("at", Word),
        ("every", Word),
        ("start", Word),
        ("random", Word),
        ("for", Word),
        ("kill", Word),
        ("pause", Word),
        ("restart", Word),
        ("consumer-crash", Number),
        ("partition", Word),
        ("packet-loss", Word),
        ("power-loss", Word),
        ("corrupt", Word),
        ("disk-error", Word),
        ("torn", Flag),
        ("how", Word),
        ("clients", Flag),
        ("percent", Number),
    ];
    const PRODUCERS: &[(&str, Kind)] = &[
        ("count", Number),
        ("rate", Word),
        ("acks", Word),
        ("retries", Number),
        ("timeout", Word),
        ("idempotent", Flag),
        ("max_in_flight", Number),
        ("size", Word),
        ("keys", Word),
    ];
    (
        typed(Word),
        section(&[("broker", Word), ("nodes", Number)]),
        section(&[
            ("flush", Word),
            ("segment_bytes", Number),
            ("sync_interval", Word),
            ("appendonly", Word),
            ("appendfsync", Word),
            ("wait_replicas", Number),
        ]),
        section(&[
            ("partitions", Number),
            ("replication_factor", Number),
            ("min_insync_replicas", Number),
        ]),
        section(PRODUCERS),
        section(&[("count", Number), ("group", Word), ("commit", Word)]),
        prop::collection::vec(section(FAULT), 0..3),
        section(&[("lost", Word), ("duplicated", Word), ("skipped", Number)]),
        section(&[("timeout", Word)]),
        section(&[("lazyfs", Flag)]),
    )
        .prop_map(
            |(
                duration,
                mut cluster,
                settings,
                topic,
                producers,
                consumers,
                faults,
                expect,
                drain,
                storage,
            )| {
                if let Value::Mapping(c) = &mut cluster {
                    c.insert("settings".into(), settings);
                }
                let mut m = Mapping::new();
                m.insert("name".into(), "f".into());
                m.insert("duration".into(), duration);
                for (k, v) in [
                    ("cluster", cluster),
                    ("topic", topic),
                    ("producers", producers),
                    ("consumers", consumers),
                    ("faults", Value::Sequence(faults)),
                    ("expect", expect),
                    ("drain", drain),
                    ("storage", storage),
                ] {
                    m.insert(k.into(), v);
                }
                serde_yaml::to_string(&Value::Mapping(m)).unwrap_or_default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        parses_or_fails_located(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn arbitrary_plan_documents_never_panic(text in plan_like()) {
        parses_or_fails_located(&text)?;
    }

    #[test]
    fn structured_plans_with_odd_values_never_panic(text in structured()) {
        parses_or_fails_located(&text)?;
    }

    #[test]
    fn mutated_shipped_plans_never_panic(
        pick in 0usize..64,
        at in any::<prop::sample::Index>(),
        insert in prop::sample::select(WORDS),
    ) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans/ci");
        let mut files: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let text = std::fs::read_to_string(&files[pick % files.len()]).unwrap();
        let cut = at.index(text.len() + 1);
        let cut = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        parses_or_fails_located(&format!("{}{insert}{}", &text[..cut], &text[cut..]))?;
    }
}
