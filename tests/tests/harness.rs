//! End-to-end runs of the `unlost` binary: real broker processes, real
//! faults, checked histories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use unlost_tests::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unlost(args: &[&str]) -> Output {
    Command::new(binary("unlost"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run unlost")
}

fn results(run_dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run_dir.join("results.json")).expect("results.json"))
        .expect("json")
}

/// The one run dir made under `out`.
fn run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Writes `yaml` as a plan and runs it into a temporary out dir (kept
/// alive by the returned guard).
fn run_inline(yaml: &str) -> (Output, PathBuf, serde_json::Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let plan = out.path().join("plan.yaml");
    std::fs::write(&plan, yaml).unwrap();
    let runs = out.path().join("runs");
    let o = unlost(&[
        "run",
        plan.to_str().unwrap(),
        "--out",
        runs.to_str().unwrap(),
    ]);
    let dir = run_dir(&runs);
    let r = if dir.join("results.json").exists() {
        results(&dir)
    } else {
        serde_json::Value::Null
    };
    (o, dir, r, out)
}

/// Runs a plan into a temporary out dir (kept alive by the returned guard).
fn run_plan(plan: &str, duration: &str) -> (Output, PathBuf, serde_json::Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let o = unlost(&[
        "run",
        plan,
        "--duration",
        duration,
        "--seed",
        "7",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let dir = run_dir(out.path());
    let r = results(&dir);
    (o, dir, r, out)
}

fn count(r: &serde_json::Value, name: &str) -> u64 {
    r["counts"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {name} in {r}"))
}

fn show(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn quickstart_loses_nothing_under_kills_and_pauses() {
    let (o, dir, r, _out) = run_plan("plans/quickstart.yaml", "12s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(r["verdict"], "valid");
    assert!(count(&r, "acked") > 5000, "{r}");
    assert_eq!(count(&r, "lost"), 0);
    assert!(
        r["faults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "kill"),
        "a leader was killed: {r}"
    );
    for f in [
        "plan.yaml",
        "history.jsonl.zst",
        "summary.txt",
        "lost.jsonl",
        "nodes/1.log",
    ] {
        assert!(dir.join(f).exists(), "run dir has {f}");
    }
    let plan = std::fs::read_to_string(dir.join("plan.yaml")).unwrap();
    assert!(
        plan.contains("seed: 7"),
        "resolved plan records the seed:\n{plan}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("verdict valid; expectations met"));
    // The stored plan stays valid though the run was shortened: re-check it.
    let o = unlost(&["check", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
}

#[test]
fn retries_without_idempotence_duplicate_and_lose_nothing() {
    let (o, _, r, _out) = run_plan("plans/seed/producer-retries-duplicate.yaml", "10s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(count(&r, "duplicated") > 0);
    assert_eq!(count(&r, "lost"), 0);
    assert!(
        r["duplicates_by_cause"]["producer-retry"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "duplicates traced to retries: {r}"
    );
}

#[test]
fn commit_before_process_skips_and_the_checker_says_so() {
    let (o, _, r, _out) = run_plan("plans/seed/consumer-commit-before-process.yaml", "10s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(count(&r, "skipped") > 0);
    assert_eq!(
        r["verdict"], "invalid",
        "skipped messages make the history invalid"
    );
}

#[test]
fn commit_after_process_redelivers_and_never_skips() {
    let (o, _, r, _out) = run_plan("plans/seed/consumer-commit-after-process.yaml", "10s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(count(&r, "redelivered") > 0);
    assert_eq!(count(&r, "skipped"), 0);
}

#[test]
fn check_rechecks_a_stored_history_and_finds_tampering() {
    let (o, dir, _, _out) = run_inline("name: small\nduration: 3s\ncluster: { nodes: 1 }\ntopic: { partitions: 2, replication_factor: 1 }\nproducers: { count: 1, rate: 200/s }\n");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = unlost(&["check", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // Remove one drained message: the acknowledged value is now lost. The
    // tampered history is written plain and the compressed one removed,
    // as in a run dir from before compression: `check` reads either.
    let history = unlost_tests::history_text(&dir);
    let victim = history
        .lines()
        .find(|l| l.contains(r#""type":"drain""#))
        .unwrap()
        .to_string();
    std::fs::write(
        dir.join("history.jsonl"),
        history.replacen(&format!("{victim}\n"), "", 1),
    )
    .unwrap();
    std::fs::remove_file(dir.join("history.jsonl.zst")).unwrap();
    let o = unlost(&["check", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let r = results(&dir);
    assert_eq!(count(&r, "lost"), 1);
    assert!(
        r["timings"]["fault_phase_s"].as_f64().unwrap() > 2.0,
        "a re-check keeps the run's own timings: {}",
        r["timings"]
    );
    let lost = std::fs::read_to_string(dir.join("lost.jsonl")).unwrap();
    assert_eq!(lost.lines().count(), 1);
    let value: serde_json::Value = serde_json::from_str(&victim).unwrap();
    assert!(lost.contains(value["value"].as_str().unwrap()), "{lost}");
}

#[test]
fn validate_and_doctor() {
    let o = unlost(&[
        "validate",
        "plans/quickstart.yaml",
        "plans/broken/08-rf-above-nodes.yaml",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("plans/broken/08-rf-above-nodes.yaml:5:25: topic.replication_factor: replication factor 3 needs"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok plans/quickstart.yaml"));
    let o = unlost(&["run", "plans/broken/01-unknown-top-key.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let o = unlost(&["doctor"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("unlost-broker binary"));
}

#[test]
fn a_custom_recipe_runs_a_users_broker_binary() {
    let broker = binary("unlost-broker");
    let (o, _, r, _out) = run_inline(&format!(
            "name: custom\nduration: 3s\ncluster:\n  broker: custom\n  nodes: 1\n  recipe:\n    command: [{:?}, --id, \"{{id}}\", --listen, \"{{host}}:{{port}}\", --data-dir, \"{{data_dir}}\", --flush, \"ms:100\"]\n    ready: tcp\ntopic: {{ partitions: 1, replication_factor: 1 }}\nproducers: {{ count: 1, rate: 100/s }}\n",
            broker.display().to_string()
        ));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(count(&r, "acked") > 100, "{r}");
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// The host's interfaces and, when nft is installed, its ruleset.
fn host_network() -> (String, String) {
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let rules = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    (links, rules)
}

#[test]
fn sigkill_of_the_harness_leaves_no_broker_behind() {
    let network_before = host_network();
    let out = tempfile::tempdir().unwrap();
    let runs = out.path().join("runs");
    let mut child = Command::new(binary("unlost"))
        .args([
            "run",
            "plans/quickstart.yaml",
            "--duration",
            "60s",
            "--out",
            runs.to_str().unwrap(),
        ])
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until all three nodes are up (they mention the run dir in
    // their flags), so the kill lands on a running cluster.
    let needle = runs.to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_mentioning(&format!("--data-dir {needle}")).len() < 3 {
        assert!(Instant::now() < deadline, "the three brokers did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_mentioning(&format!("--data-dir {needle}"));
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "brokers outlived the harness: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Node hosts lived in the harness's own namespaces: the host's
    // interfaces and firewall rules never changed.
    assert_eq!(host_network(), network_before);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&needle),
        "a mount under the run dir survived: {mounts}"
    );
}

#[test]
fn async_flush_loses_acknowledged_messages_on_power_loss() {
    let (o, _, r, _out) = run_plan("plans/seed/storage-async-flush-power-loss.yaml", "12s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        count(&r, "lost") > 0,
        "the negative control must lose data: {r}"
    );
    let lost = &r["lost"][0];
    assert!(
        lost["faults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("power-loss")),
        "loss attributed to the power loss: {lost}"
    );
}

#[test]
fn flush_always_loses_nothing_on_power_loss() {
    let (o, _, r, _out) = run_plan("plans/seed/storage-flush-always-power-loss.yaml", "20s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(count(&r, "lost"), 0);
    let kinds: Vec<&str> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["power-loss", "torn-power-loss"]);
}

#[test]
fn disk_errors_cache_drops_and_corruption_run_and_are_recorded() {
    let (o, dir, r, _out) = run_inline("name: disk\nduration: 9s\ncluster: { nodes: 1, settings: { flush: always } }\ntopic: { partitions: 1, replication_factor: 1 }\nproducers: { count: 1, rate: 300/s }\nstorage: { lazyfs: true }\nfaults:\n  - { at: 2s, for: 1s, disk-error: all }\n  - { at: 4s, drop-kernel-caches: all }\n  - { at: 6s, corrupt: all, how: truncate }\nexpect: { lost: any, unexpected: any, inconsistent-offset: any }\n");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let faults: Vec<(String, bool)> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_string(), f["end_s"].is_f64()))
        .collect();
    assert_eq!(
        faults,
        vec![
            ("disk-error".into(), true),
            ("drop-kernel-caches".into(), true),
            ("corrupt-truncate".into(), true)
        ]
    );
    let history = unlost_tests::history_text(&dir);
    assert!(
        history.contains("bytes from the end of"),
        "the corruption is described"
    );
    let log = std::fs::read_to_string(dir.join("nodes/1.log")).unwrap();
    assert!(
        (log.contains("append failed") || log.contains("fsync"))
            && log.contains("Input/output error"),
        "the broker saw the disk error: {}",
        &log[..log.len().min(2000)]
    );
}

#[test]
fn a_client_partition_is_applied_healed_and_loses_nothing() {
    let (o, _, r, _out) = run_inline("name: net\nduration: 8s\ncluster: { nodes: 1, settings: { flush: always } }\ntopic: { partitions: 2, replication_factor: 1 }\nproducers: { count: 2, rate: 400/s, timeout: 1s }\nfaults:\n  - { at: 2s, for: 2s, partition: \"isolate:1\", clients: true }\n  - { at: 5s, for: 1s, packet-loss: all, percent: 50, clients: true }\nexpect: { lost: 0, recovered: any, duplicated: any }\n");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let faults: Vec<(String, String)> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        faults[0],
        (
            "partition".to_string(),
            "[[1]] clients cut from [1]".to_string()
        ),
        "{faults:?}"
    );
    assert_eq!(faults[1].0, "packet-loss");
    assert!(
        count(&r, "attempts") > count(&r, "sent"),
        "the cut clients had to resend: {r}"
    );
}

#[test]
fn suite_runs_plans_writes_junit_and_exits_with_the_worst_code() {
    let out = tempfile::tempdir().unwrap();
    let plans = out.path().join("plans");
    std::fs::create_dir_all(plans.join("broken")).unwrap();
    let base = "duration: 3s\ncluster: { nodes: 1 }\ntopic: { partitions: 1, replication_factor: 1 }\nproducers: { count: 1, rate: 100/s }\n";
    std::fs::write(plans.join("a-pass.yaml"), format!("name: a-pass\n{base}")).unwrap();
    std::fs::write(
        plans.join("b-fail.yaml"),
        format!("name: b-fail\n{base}expect: {{ lost: \">0\" }}\n"),
    )
    .unwrap();
    std::fs::write(
        plans.join("c-bad.yaml"),
        "name: c-bad\nduration: 3s\nbogus: 1\n",
    )
    .unwrap();
    std::fs::write(plans.join("broken/skipped.yaml"), "not a plan").unwrap();
    let junit = out.path().join("junit.xml");
    let runs = out.path().join("runs");
    let o = unlost(&[
        "suite",
        plans.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--out",
        runs.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a bad plan outranks an unmet one: {}",
        show(&o)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("pass  a-pass")
            && stdout.contains("FAIL  b-fail")
            && stdout.contains("ERROR"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 2 failed"), "{stdout}");
    // Read the file back the way CI systems do.
    let report =
        quick_junit::Report::deserialize_from_str(&std::fs::read_to_string(&junit).unwrap())
            .expect("valid JUnit XML");
    assert_eq!((report.tests, report.failures, report.errors), (3, 1, 1));
    let cases = &report.test_suites[0].test_cases;
    let failed = cases.iter().find(|c| c.name.as_str() == "b-fail").unwrap();
    match &failed.status {
        quick_junit::TestCaseStatus::NonSuccess { message, .. } => {
            assert!(
                message
                    .as_ref()
                    .unwrap()
                    .as_str()
                    .contains("lost 0 (wanted >=1)"),
                "{message:?}"
            )
        }
        other => panic!("b-fail should fail: {other:?}"),
    }
    assert!(failed.properties.iter().any(|p| p.name.as_str() == "seed"));
    assert!(failed
        .system_out
        .as_ref()
        .unwrap()
        .as_str()
        .contains("verdict"));
    // Shard 2 of 3 runs only the second plan in sorted order.
    let o = unlost(&[
        "suite",
        plans.to_str().unwrap(),
        "--shard",
        "2/3",
        "--out",
        runs.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 passed, 1 failed"));
}

#[test]
fn report_html_shows_the_timeline_and_renders_in_chromium() {
    let (o, dir, r, _out) = run_plan("plans/ci/05-async-flush-power-loss.yaml", "10s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("class=\"fault\""),
        "timeline with fault windows"
    );
    assert!(
        html.contains("power-loss [1]"),
        "fault labelled by kind and target"
    );
    assert!(
        html.contains("class=\"restart\""),
        "the restart after the power loss is marked on the node lane"
    );
    assert!(
        html.matches("class=\"leader\"").count() >= 2,
        "leadership of each partition is marked"
    );
    let lost = count(&r, "lost") as usize;
    assert_eq!(
        html.matches("class=\"lost\"").count(),
        lost.min(2000),
        "every lost message is plotted"
    );
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("http://www.w3.org/2000/svg").count(),
        "no network references"
    );
    // `unlost report` regenerates the same page.
    std::fs::remove_file(dir.join("report.html")).unwrap();
    let o = unlost(&["report", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(dir.join("report.html").exists());
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        unlost_tests::prerequisite(
            false,
            "rendering report.html needs chromium (ci/test installs it; apt-get install chromium)",
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shot = dir.join("report.png");
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1000,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", dir.join("report.html").display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
}

#[test]
fn idempotent_producers_do_not_duplicate_under_the_same_pauses() {
    let (o, _, r, _out) = run_plan("plans/seed/producer-idempotent.yaml", "10s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(count(&r, "duplicated"), 0);
    assert_eq!(count(&r, "lost"), 0);
    assert!(count(&r, "acked") > 5000);
}

#[test]
fn a_kill_that_outlasts_the_run_is_healed_before_consumers_stop() {
    // Regression: consumers blocked committing to a killed node used to be
    // stopped before the heal that restarts it, and the run hung.
    let started = Instant::now();
    let (o, _, r, _out) = run_inline("name: late\nduration: 5s\ncluster: { nodes: 1 }\ntopic: { partitions: 2, replication_factor: 1 }\nproducers: { count: 1, rate: 200/s }\nconsumers: { count: 2, commit: after-process }\nfaults:\n  - { at: 4s, for: 10s, kill: all }\nexpect: { lost: 0, redelivered: any }\n");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the run finished"
    );
    let kill = &r["faults"][0];
    assert!(
        kill["end_s"].as_f64().unwrap() >= 5.0,
        "the kill was healed at the end of the run: {kill}"
    );
}

/// One plan, both brokers, end to end through `unlost run` (the driver
/// calls one by one are in tests/conformance.rs): start 3 nodes, create
/// the topic or stream, produce, consume as a group, kill the leader,
/// heal, drain; both drivers must find the leader through their own
/// protocol, record every attempt and lose nothing.
#[test]
fn both_drivers_run_the_same_leader_kill_plan() {
    for broker in ["builtin", "nats"] {
        let (o, dir, r, _out) = run_inline(&format!(
            "name: conform-{broker}\nduration: 12s\ncluster: {{ broker: {broker}, nodes: 3 }}\ntopic: {{ partitions: 1, replication_factor: 3 }}\nproducers: {{ count: 2, rate: 300/s, retries: 2, timeout: 2s }}\nconsumers: {{ count: 2, group: g, commit: after-process }}\nfaults:\n  - {{ every: 5s, start: 2s, for: 2s, kill: leader }}\nexpect: {{ lost: 0, duplicated: any, recovered: any, redelivered: any }}\n"
        ));
        assert_eq!(o.status.code(), Some(0), "{broker}: {}", show(&o));
        assert_eq!(count(&r, "lost"), 0, "{broker}");
        // Volumes vary with the machine's load and how long each leader
        // election takes; what matters is that both paths carried traffic.
        assert!(count(&r, "acked") > 200, "{broker}: {r}");
        assert!(
            count(&r, "delivered") > 100,
            "{broker}: the group consumed little: {r}"
        );
        let history = unlost_tests::history_text(&dir);
        let kills: Vec<&str> = history
            .lines()
            .filter(|l| l.contains("\"fault-start\"") && l.contains("\"kill\""))
            .collect();
        // A second kill finds no leader when the election is still going on.
        assert!(!kills.is_empty(), "{broker}: no leader kill");
        assert!(
            kills.iter().all(|k| k.contains("leader of partition 0")),
            "{broker}: the leader was not found: {kills:?}"
        );
        assert!(history.contains("\"type\":\"leader\""), "{broker}");
    }
}

/// The Jepsen NATS 2.12.1 finding, both halves, on a short run: with
/// sync_interval always a coordinated power loss loses nothing; with the
/// default (2 minutes) a young stream loses everything acknowledged.
#[test]
fn nats_power_loss_loses_acknowledged_messages_only_without_sync_always() {
    let (o, _, r, _out) = run_plan("plans/nats/power-loss-sync-always.yaml", "25s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(count(&r, "lost"), 0);
    assert!(count(&r, "acked") > 5000, "{r}");
    let (o, _, r, _out) = run_plan("plans/nats/power-loss-young-stream.yaml", "25s");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(count(&r, "lost") > 1000, "{r}");
}

/// A broker whose disk fails under its controller stops (fail-stop)
/// rather than lingering with a dead controller: consumer commits are
/// Raft entries, a follower's append gets EIO, openraft stops its core,
/// and the broker exits; when the fault ends (the disk works again) the
/// nemesis starts it again, as a supervisor would, and nothing is lost. (The first soak showed minutes of NOT_ENOUGH_REPLICAS from
/// such a half-alive broker.)
#[test]
fn a_broker_whose_controller_disk_fails_stops_and_starts_again_with_its_disk() {
    if !unlost_tests::prerequisite(
        std::path::Path::new("/dev/fuse").exists(),
        "disk errors need the lazy filesystem (/dev/fuse)",
    ) {
        return;
    }
    let (o, dir, r, _out) = run_inline("name: disk-fail-stop\nduration: 12s\ncluster: { nodes: 3 }\ntopic: { partitions: 1, replication_factor: 3, min_insync_replicas: 2 }\nproducers: { count: 1, rate: 100/s }\nconsumers: { count: 1, group: g, commit: after-process }\nstorage: { lazyfs: true }\nfaults:\n  - { at: 4s, for: 4s, disk-error: follower }\nexpect: { lost: 0, recovered: any, redelivered: any, duplicated: any }\n");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(count(&r, "acked") > 500, "{r}");
    let stopped: Vec<String> = (1..=3)
        .map(|n| std::fs::read_to_string(dir.join(format!("nodes/{n}.log"))).unwrap())
        .filter(|log| log.contains("controller stopped"))
        .collect();
    assert_eq!(
        stopped.len(),
        1,
        "exactly the node with the failing disk stopped"
    );
    assert!(
        stopped[0].matches("broker started").count() >= 2,
        "it was started again"
    );
    // When the disk works again (not only at the end-of-run heal).
    assert!(
        unlost_tests::history_text(&dir).contains("had stopped on its failing disk: started again"),
        "the disk-error fault's end restarts the stopped broker"
    );
}
