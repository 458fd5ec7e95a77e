//! Workload driver benchmark: the highest acknowledged msgs/s the harness
//! sustains against a builtin cluster at acks=1, with every attempt
//! recorded in the history, with and without the lazy filesystem.
//! Prints figures; asserts nothing about speed.
//!
//! Run: `cargo bench -p unlost-tests --bench harness`
//! Env: DRIVER_RATE (offered msgs/s, default 200000), DRIVER_SECONDS (15),
//! DRIVER_NODES (3; replication factor the same).

use std::process::Command;

use unlost_tests::binary;

/// One run: (acked msgs/s, acked, history MiB, check seconds).
fn run(nodes: u32, rate: u64, secs: u64, flush: &str, lazyfs: bool) -> (f64, f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("driver.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: driver-bench\nduration: {secs}s\ncluster: {{ broker: builtin, nodes: {nodes}, settings: {{ flush: \"{flush}\" }} }}\ntopic: {{ partitions: 8, replication_factor: {nodes} }}\nproducers: {{ count: 4, rate: {rate}/s, acks: 1, size: 64..128 }}\nstorage: {{ lazyfs: {lazyfs} }}\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("runs");
    let o = Command::new(binary("unlost"))
        .args([
            "run",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let run = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    let acked = r["counts"]["acked"].as_f64().unwrap();
    let phase = r["timings"]["fault_phase_s"].as_f64().unwrap();
    let history = std::fs::metadata(unlost::history::in_dir(&run))
        .unwrap()
        .len() as f64
        / 1048576.0;
    (
        acked / phase,
        acked,
        history,
        r["timings"]["check_s"].as_f64().unwrap(),
    )
}

fn main() {
    let rate: u64 = std::env::var("DRIVER_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let secs: u64 = std::env::var("DRIVER_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let nodes: u32 = std::env::var("DRIVER_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!("unlost driver benchmark: {nodes} builtin nodes (each in its own network namespace), replication factor {nodes}, 4 producers, 8 partitions, acks=1, offered {rate} msgs/s for {secs}s");
    println!(
        "{:<10}{:<9}{:>16}{:>12}{:>14}{:>10}",
        "flush", "lazyfs", "acked msgs/s", "acked", "history MiB", "check s"
    );
    for (flush, lazyfs) in [
        ("ms:1000", false),
        ("ms:1000", true),
        ("always", false),
        ("always", true),
    ] {
        let (per_s, acked, mib, check) = run(nodes, rate, secs, flush, lazyfs);
        println!(
            "{flush:<10}{:<9}{per_s:>16.0}{acked:>12.0}{mib:>14.0}{check:>10.2}",
            if lazyfs { "yes" } else { "no" }
        );
    }
}
