//! Apache Kafka's names for the plan's settings, and the server
//! properties the harness sets itself (so a plan cannot override them by
//! accident). The recipe in `driver::kafka::apache` writes them.

/// A plan setting, the Kafka property it sets, and what it means.
pub struct Setting {
    pub name: &'static str,
    /// The server.properties name; None for a setting applied at storage
    /// format time (a feature level).
    pub property: Option<&'static str>,
}

/// The plan's Kafka settings.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "flush_messages",
        property: Some("log.flush.interval.messages"),
    },
    Setting {
        name: "flush_ms",
        property: Some("log.flush.interval.ms"),
    },
    Setting {
        name: "unclean_leader_election",
        property: Some("unclean.leader.election.enable"),
    },
    Setting {
        name: "min_insync_replicas",
        property: Some("min.insync.replicas"),
    },
    Setting {
        name: "replica_lag_ms",
        property: Some("replica.lag.time.max.ms"),
    },
    // KIP-966: the eligible.leader.replicas.version feature, set when the
    // storage is formatted (off by default in 4.0, on in 4.1).
    Setting {
        name: "eligible_leader_replicas",
        property: None,
    },
];

/// The settings' names, for messages.
pub fn setting_names() -> Vec<&'static str> {
    SETTINGS.iter().map(|s| s.name).collect()
}

/// Properties the recipe writes itself: the node's identity, addresses
/// and directories.
pub const OWNED: &[&str] = &[
    "process.roles",
    "node.id",
    "broker.id",
    "controller.quorum.voters",
    "controller.quorum.bootstrap.servers",
    "controller.listener.names",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "log.dirs",
    "log.dir",
    "metadata.log.dir",
];

/// Why a raw property may not be given (None: it may).
pub fn owner(key: &str) -> Option<String> {
    if OWNED.contains(&key) {
        return Some(format!(
            "{key} is set by the harness for each node (its id, addresses and data dir)"
        ));
    }
    SETTINGS
        .iter()
        .find(|s| s.property == Some(key))
        .map(|s| format!("use cluster.settings.{} for {key}", s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_and_mapped_properties_are_refused_with_the_way_to_set_them() {
        assert!(owner("log.dirs").unwrap().contains("set by the harness"));
        assert_eq!(
            owner("log.flush.interval.messages").unwrap(),
            "use cluster.settings.flush_messages for log.flush.interval.messages"
        );
        assert_eq!(owner("log.segment.bytes"), None);
    }
}
