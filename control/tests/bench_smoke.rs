//! End-to-end runs of the benchmark programs with real child processes: Runnel nodes
//! (`runnel node --config FILE`) and `nats-server`.

use runnel_bench::{FanoutOptions, RelayChainOptions, SignatureMode};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// One benchmark at a time: the leftover-process check counts every child of this test
/// process, and two benchmarks sharing 2 cores would also distort each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn node_binary() -> Option<PathBuf> {
    Some(PathBuf::from(env!("CARGO_BIN_EXE_runnel")))
}

/// Processes whose command line names this test process's benchmark work directories.
fn leftover_children() -> Vec<String> {
    let marker = format!("-{}-", std::process::id());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains("runnel-bench-") && text.contains(&marker) {
            found.push(text);
        }
    }
    found
}

// Goal: a short fan-out run against both systems delivers messages through each, reports
// every JSON field the CLI promises, measures both servers, and leaves no process behind.
#[test]
fn fanout_runnel_and_nats() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let options = FanoutOptions {
        subscribers: 2,
        payload_length: 64,
        duration: Duration::from_millis(500),
        latency_duration: Duration::from_millis(500),
        latency_rate_per_s: 1000,
        signatures: SignatureMode::Batch,
        runnel_binary: node_binary(),
        ..FanoutOptions::default()
    };
    let report = runnel_bench::fanout(options).expect("fanout runs (needs nats-server installed)");
    print!("{}", report.table());
    let json = report.to_json();
    for system in ["runnel", "nats"] {
        let delivered = json[system]["delivered_per_s"].as_f64().unwrap();
        assert!(delivered > 1000.0, "{system} delivered only {delivered} msgs/s");
        assert!(json[system]["latency_us_p99"].as_f64().unwrap() > 0.0);
        assert!(json[system]["cpu_percent"].as_f64().unwrap() > 0.0);
        assert!(json[system]["rss_kib"].as_u64().unwrap() > 0);
        // At 1000 msgs/s nothing should be lost.
        let fraction = json[system]["latency_delivered_fraction"].as_f64().unwrap();
        assert!(fraction > 0.99, "{system} delivered {fraction} of the paced messages");
    }
    assert!(json["ratio_delivered"].as_f64().unwrap() > 0.0);
    assert_eq!(leftover_children(), Vec::<String>::new());
}

// Goal: the relay chain carries messages through three node processes and reports them as a
// fraction of the UDP ceiling measured in the same run.
#[test]
fn relay_chain_through_three_nodes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let options = RelayChainOptions {
        payload_length: 1024,
        duration: Duration::from_millis(500),
        latency_duration: Duration::from_millis(300),
        latency_rate_per_s: 1000,
        runnel_binary: node_binary(),
        ..RelayChainOptions::default()
    };
    let report = runnel_bench::relay_chain(options).expect("relay chain runs");
    print!("{}", report.table());
    assert!(report.runnel.delivered_per_s > 1000.0, "{}", report.runnel.delivered_per_s);
    assert!(report.runnel.latency_delivered_fraction > 0.99);
    let fraction = report.fraction_of_ceiling();
    assert!(fraction > 0.0 && fraction < 1.5, "fraction of ceiling {fraction}");
    assert_eq!(leftover_children(), Vec::<String>::new());
}
