//! End-to-end runs of `runnel dev`: real nodes (supervisor, dataplane and control processes,
//! peering over libp2p) on loopback, a real publisher and subscribers, the final JSON read back.

use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One `runnel dev` at a time: each is a whole network (nodes, anvil, clients), and two at
/// once on a 2-core machine starve each other's meshing.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The last lines of each node log in `dir`, for a failure's message.
fn log_tails(dir: &std::path::Path) -> String {
    let mut tails = String::new();
    for index in 0.. {
        let Ok(log) = std::fs::read_to_string(dir.join(format!("node{index}.log"))) else { break };
        let lines: Vec<&str> = log.lines().collect();
        tails += &format!("--- node{index}.log (last 15 lines)\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    tails
}

/// Runs `runnel dev ARGS --json` to completion in a work folder of its own; its summary.
fn run_dev(name: &str, args: &[&str]) -> serde_json::Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = std::env::temp_dir().join(format!("runnel-dev-test-{name}-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("dev")
        .args(args)
        .arg("--json")
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("runnel dev starts");
    let logs = if output.status.success() { String::new() } else { log_tails(&dir) };
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "runnel dev failed ({}): {stderr}\n{logs}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no JSON line; stderr: {stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {line}"))
}

fn number(summary: &serde_json::Value, key: &str) -> u64 {
    summary[key].as_u64().unwrap_or_else(|| panic!("no {key} in {summary}"))
}

// Goal: the summary keeps every documented key, and its loss accounting adds up exactly:
// each published message reaches each subscriber once (first delivery) or is counted lost;
// every other delivery is a duplicate or a late one.
#[test]
fn summary_accounts_for_every_message() {
    let summary = run_dev("summary", &["--nodes", "3", "--rate", "2000", "--duration", "3"]);
    for key in ["nodes", "subscribers", "duration_s", "published_per_s", "delivered_per_s", "node_counters"] {
        assert!(summary.get(key).is_some(), "no {key} in {summary}");
    }
    let published = number(&summary, "published");
    let subscribers = number(&summary, "subscribers");
    let delivered = number(&summary, "delivered");
    let duplicates = number(&summary, "duplicates_delivered");
    let late = number(&summary, "late_delivered");
    let untracked = number(&summary, "untracked_delivered");
    let lost = number(&summary, "lost");
    let (p50_us, p99_us) = (number(&summary, "latency_us_p50"), number(&summary, "latency_us_p99"));
    assert_eq!(subscribers, 2, "{summary}");
    // The three nodes found each other over libp2p: each has the other two as neighbors.
    assert_eq!(summary["neighbors"], serde_json::json!([2, 2, 2]), "{summary}");
    assert!(summary["seconds_to_mesh"].as_f64().is_some_and(|s| s > 0.0), "{summary}");
    let counters = &summary["node_counters"];
    assert!(counters["commands_succeeded"].as_u64().is_some_and(|n| n >= 3 * 3), "joins and links came as IPC commands: {summary}");
    assert!(published > 1000, "the publisher ran: {summary}");
    assert_eq!(untracked, 0, "only our own publisher: {summary}");
    assert_eq!(delivered + lost, published * subscribers + duplicates + late, "{summary}");
    assert!(lost * 100 <= published * subscribers, "NAK repair keeps loopback loss under 1 %: {summary}");
    assert!(0 < p50_us && p50_us <= p99_us, "{summary}");
    // The local chain: deployed, the dev stream created on it, and every node followed the
    // registry past the setup (so the publisher's link and frames were checked against it).
    let chain = &summary["chain"];
    for key in ["endpoint", "registry", "token", "settlement", "settlement_operator"] {
        assert!(chain[key].as_str().is_some_and(|v| v.starts_with("http://127.0.0.1:") || v.len() == 42), "chain.{key}: {summary}");
    }
    assert_eq!(chain["stream"], "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/runnel-dev", "{summary}");
    let ready = chain["ready_block"].as_u64().unwrap_or_else(|| panic!("no ready_block: {summary}"));
    let synced = chain["node_synced_blocks"].as_array().unwrap_or_else(|| panic!("no node_synced_blocks: {summary}"));
    assert!(synced.len() == 3 && synced.iter().all(|b| b.as_u64().is_some_and(|b| b >= ready)), "{summary}");
}

// Goal: `--no-chain` runs the same network without anvil: the stream is public, nothing
// is read from a chain, and the messages still flow.
#[test]
fn runs_without_a_chain() {
    let summary = run_dev("nochain", &["--nodes", "2", "--rate", "1000", "--duration", "2", "--no-chain"]);
    assert!(summary["chain"].is_null(), "{summary}");
    assert!(number(&summary, "published") > 500 && number(&summary, "delivered") > 0, "{summary}");
    assert_eq!(number(&summary, "lost"), 0, "{summary}");
}
