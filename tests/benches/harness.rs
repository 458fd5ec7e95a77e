//! Workload driver benchmark: the highest acknowledged msgs/s the harness
//! sustains against the builtin broker (acks=1, flush ms:1000), with every
//! attempt recorded in the history. Prints figures; asserts nothing.
//!
//! Run: `cargo bench -p unlost-tests --bench harness`
//! Env: DRIVER_RATE (offered msgs/s, default 200000), DRIVER_SECONDS (15).

use std::process::Command;

use unlost_tests::binary;

fn main() {
    let rate: u64 = std::env::var("DRIVER_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let secs: u64 = std::env::var("DRIVER_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("driver.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: driver-bench\nduration: {secs}s\ncluster: {{ broker: builtin, nodes: 1, settings: {{ flush: ms:1000 }} }}\ntopic: {{ partitions: 8, replication_factor: 1 }}\nproducers: {{ count: 4, rate: {rate}/s, acks: 1, size: 64..128 }}\n"
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
    let history = std::fs::metadata(run.join("history.jsonl")).unwrap().len();
    println!("unlost driver benchmark: 1 builtin node (own network namespace), 4 producers, 8 partitions, acks=1, flush ms:1000");
    println!(
        "offered {rate} msgs/s for {secs}s: acked {acked:.0} in {phase:.1}s = {:.0} acked msgs/s; history {:.0} MiB; exit {}; check took {:.2}s",
        acked / phase,
        history as f64 / 1048576.0,
        o.status.code().unwrap_or(-1),
        r["timings"]["check_s"].as_f64().unwrap()
    );
}
