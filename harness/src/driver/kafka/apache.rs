//! Apache Kafka as a broker under test: KRaft nodes that are broker and
//! controller at once, one per host, from the release's jars.
//!
//! The jars come from Maven Central (`org.apache.kafka:kafka_2.13` and its
//! runtime dependencies, through `mvn dependency:copy-dependencies`) into
//! the per-version release cache (`driver::cache`), once; no tarball. Each node gets a
//! server.properties from the plan (listeners on its own address, its
//! data dir as `log.dirs`, a static controller quorum of every node) and
//! its storage is formatted with the run's cluster id before its first
//! start (Kafka's StorageTool); a restart finds it formatted. The client
//! side is the Kafka driver every Kafka-API broker uses.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::super::{cache, DriverError, NodeRecipe, Protocol};
use crate::plan::{kafka as names, ClusterSpec, Readiness};

/// The release a plan gets when it names none.
pub const DEFAULT_VERSION: &str = "4.1.1";

/// Every run's cluster id (base64 of 16 bytes): runs never share nodes.
const CLUSTER_ID: &str = "dW5sb3N0LWtyYWZ0LWlkIQ";

/// The JVM's options: a small heap, so that three nodes and the harness
/// fit beside each other on a small machine.
const JVM: &[&str] = &[
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
];

/// The java launcher: $JAVA_HOME/bin/java, else java on PATH.
pub fn java() -> Result<PathBuf, DriverError> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let p = PathBuf::from(home).join("bin").join("java");
        if p.is_file() {
            return Ok(p);
        }
    }
    cache::on_path("java").ok_or_else(|| DriverError::Missing {
        what: "java (Kafka 4 needs Java 17 or later) for broker: kafka".into(),
        hint: "apt-get install openjdk-17-jre-headless (ci/test does), or set JAVA_HOME".into(),
    })
}

/// The jar directory of Kafka `version`, fetched from Maven Central when
/// it is not cached yet (`driver::cache`).
pub fn jars(version: &str) -> Result<PathBuf, DriverError> {
    let release = cache::release("kafka", version, |dir| {
        let mvn = cache::on_path("mvn").ok_or_else(|| DriverError::Missing {
            what: format!("Apache Kafka {version}'s jars and Maven (mvn) to fetch them"),
            hint: "apt-get install maven (ci/test does); the jars are then fetched once into \
                   $UNLOST_CACHE (default ~/.cache/unlost)"
                .into(),
        })?;
        let pom = dir.join("pom.xml");
        std::fs::write(&pom, pom_xml(version))
            .map_err(|e| DriverError::Recipe(format!("write {}: {e}", pom.display())))?;
        let out = Command::new(mvn)
            .args(["-q", "-B", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", dir.join("libs").display()))
            .arg("-DincludeScope=runtime")
            .output()
            .map_err(|e| DriverError::Recipe(format!("run mvn: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DriverError::Recipe(format!(
                "fetching Apache Kafka {version} from Maven Central failed (is {version} a \
                 released version? is Maven Central reachable?): {}",
                maven_error(&String::from_utf8_lossy(&out.stdout))
            )))
        }
    })?;
    Ok(release.join("libs"))
}

/// The first error line of Maven's output, without colours and boilerplate.
fn maven_error(output: &str) -> String {
    let plain: String = {
        let mut out = String::new();
        let mut chars = output.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // An ANSI colour sequence: ESC [ ... m
                for d in chars.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    plain
        .lines()
        .map(|l| l.trim_start_matches("[ERROR]").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("mvn failed without a message")
        .to_string()
}

/// A pom whose runtime dependencies are one Kafka release (and a logger).
fn pom_xml(version: &str) -> String {
    format!(
        r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>unlost</groupId>
  <artifactId>kafka-{version}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
"#
    )
}

/// server.properties for every node, with the harness's placeholders.
pub fn server_properties(spec: &ClusterSpec) -> String {
    let internal_rf = spec.nodes.min(3);
    let mut lines = vec![
        "process.roles=broker,controller".to_string(),
        "node.id={id}".into(),
        "controller.quorum.voters={peer_addrs}".into(),
        "listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{peer_port}".into(),
        "advertised.listeners=PLAINTEXT://{host}:{port}".into(),
        "controller.listener.names=CONTROLLER".into(),
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".into(),
        "inter.broker.listener.name=PLAINTEXT".into(),
        "log.dirs={data_dir}".into(),
        // Groups start at once, and the internal topics are small.
        "group.initial.rebalance.delay.ms=0".into(),
        "offsets.topic.num.partitions=3".into(),
        format!("offsets.topic.replication.factor={internal_rf}"),
        format!("transaction.state.log.replication.factor={internal_rf}"),
        format!("transaction.state.log.min.isr={}", internal_rf.min(2)),
        "transaction.state.log.num.partitions=3".into(),
        "auto.create.topics.enable=false".into(),
    ];
    for s in names::SETTINGS {
        if let (Some(property), Some(v)) = (s.property, spec.settings.get(s.name)) {
            lines.push(format!("{property}={v}"));
        }
    }
    for (k, v) in &spec.properties {
        lines.push(format!("{k}={v}"));
    }
    lines.join("\n") + "\n"
}

/// Quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The recipe: format the node's storage once, then run the broker.
pub fn recipe(spec: &ClusterSpec) -> Result<NodeRecipe, DriverError> {
    let version = spec.version.as_deref().unwrap_or(DEFAULT_VERSION);
    let java = quote(&java()?.display().to_string());
    let classpath = quote(&format!("{}/*", jars(version)?.display()));
    let feature = match spec
        .settings
        .get("eligible_leader_replicas")
        .map(String::as_str)
    {
        Some("true") => " --feature eligible.leader.replicas.version=1",
        Some(_) => " --feature eligible.leader.replicas.version=0",
        None => "",
    };
    let jvm = JVM.join(" ");
    // The formatted storage is made durable before the first start, as a
    // provisioning step that ended long before any failure would be:
    // Kafka's StorageTool writes bootstrap.checkpoint without fsync (found
    // by a power loss 20 s after the format: the node could not start
    // again; docs/kafka.md), and that is not what the plans are about.
    let script = format!(
        "if [ ! -f '{{data_dir}}/meta.properties' ]; then \
         {java} -Xmx256m -cp {classpath} kafka.tools.StorageTool format \
         --cluster-id {CLUSTER_ID} --config '{{config}}'{feature} || exit 1; \
         find '{{data_dir}}' -type f -exec sync -- {{}} + || exit 1; fi; \
         exec {java} {jvm} -cp {classpath} kafka.Kafka '{{config}}'"
    );
    Ok(NodeRecipe {
        command: vec!["/bin/sh".into(), "-c".into(), script],
        config: Some(server_properties(spec)),
        ready: Readiness::KafkaMetadata,
        // A JVM per node on a small machine: give it time.
        ready_timeout: Duration::from_secs(90),
        protocol: Protocol::Kafka,
        replica_reads: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::BrokerKind;

    fn spec(settings: &[(&str, &str)], properties: &[(&str, &str)]) -> ClusterSpec {
        ClusterSpec {
            broker: BrokerKind::Kafka,
            nodes: 3,
            version: None,
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            recipe: None,
        }
    }

    #[test]
    fn settings_become_kafka_properties_and_raw_properties_pass_through() {
        let p = server_properties(&spec(
            &[
                ("flush_messages", "1"),
                ("unclean_leader_election", "true"),
                ("eligible_leader_replicas", "false"),
            ],
            &[("log.segment.bytes", "1048576")],
        ));
        assert!(p.contains("\nlog.flush.interval.messages=1\n"), "{p}");
        assert!(p.contains("\nunclean.leader.election.enable=true\n"), "{p}");
        assert!(p.contains("\nlog.segment.bytes=1048576\n"), "{p}");
        assert!(!p.contains("eligible"), "a format-time feature: {p}");
        assert!(p.contains("controller.quorum.voters={peer_addrs}"), "{p}");
        // Kafka's defaults stay Kafka's: no flush unless the plan asks.
        assert!(!server_properties(&spec(&[], &[])).contains("flush"));
    }

    #[test]
    fn a_maven_failure_is_told_by_its_first_error_line() {
        let out = "\u{1b}[0m\u{1b}[0m[ERROR] Failed to execute goal on project kafka-4.9.9: \
                   Could not resolve dependencies\n[ERROR] \n[ERROR] To see the full stack trace";
        assert_eq!(
            maven_error(out),
            "Failed to execute goal on project kafka-4.9.9: Could not resolve dependencies"
        );
        assert_eq!(maven_error(""), "mvn failed without a message");
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
