//! End-to-end runs of the benchmark programs with real child processes: Runnel nodes
//! (`runnel node --config FILE`) and `nats-server`.

use runnel_bench::{FanoutOptions, RelayChainOptions, SignatureMode};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// One benchmark at a time: the leftover-process check counts every child of this test
/// process, and two benchmarks sharing 2 cores would also distort each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn node_binary() -> Option<PathBuf> {
    Some(PathBuf::from(env!("CARGO_BIN_EXE_runnel")))
}

/// Processes whose command line names benchmark work directories of process `pid`.
fn leftover_children_of(pid: u32) -> Vec<String> {
    let marker = format!("-{pid}-");
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

/// Processes whose command line names this test process's benchmark work directories.
fn leftover_children() -> Vec<String> {
    leftover_children_of(std::process::id())
}

/// Runs `runnel ARGS` to completion; returns its pid (to look for its leftovers) and output.
fn run_runnel(args: &[&str]) -> (u32, Output) {
    let child =
        Command::new(env!("CARGO_BIN_EXE_runnel")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("runnel starts");
    let pid = child.id();
    (pid, child.wait_with_output().expect("runnel runs"))
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

// Goal: `runnel bench latency` runs through the CLI as documented (against NATS too when
// nats-server is installed, as scripts/setup.sh does), prints one JSON object with every key
// the README promises, each a finite positive number (the targets booleans), and leaves no
// process behind.
#[test]
fn latency_cli_json() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let nats = runnel_bench::process::find_executable("nats-server", None).is_ok();
    let mut args = vec!["bench", "latency", "--duration", "1", "--rate", "1000", "--json"];
    if nats {
        args.extend(["--against", "nats"]);
    } else {
        eprintln!("nats-server is not installed (scripts/setup.sh installs it): checking the Runnel side only");
    }
    let (pid, output) = run_runnel(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "runnel {args:?} failed: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    println!("{json:#}");
    let mut keys =
        vec!["runnel.latency_us_p50", "runnel.latency_us_p99", "runnel.latency_samples", "sign_us", "verify_us", "rate_per_s", "size"];
    if nats {
        keys.extend(["nats.latency_us_p50", "nats.latency_us_p99", "nats.latency_samples", "target.p50_target_us"]);
    }
    for key in keys {
        let value = key.split('.').fold(&json, |value, part| &value[part]).as_f64();
        assert!(value.is_some_and(|v| v.is_finite() && v > 0.0), "{key} = {value:?} in {json}");
    }
    for key in ["p50_met", "p99_met"] {
        assert_eq!(json["target"][key].is_boolean(), nats, "target.{key} in {json}");
    }
    assert_eq!(json["signatures"], "single");
    // At 1000 msgs/s on loopback nothing should be lost.
    assert!(json["runnel"]["delivered_fraction"].as_f64().unwrap() > 0.99, "{json}");
    assert_eq!(leftover_children_of(pid), Vec::<String>::new());
}

// Goal: `runnel bench --help` lists every subcommand, and each subcommand's `--help` and `-h`
// exit 0 and name every flag it accepts with its default, through the real CLI (clap must
// pass them on, not answer them itself).
#[test]
fn every_bench_subcommand_has_help() {
    let names: Vec<&str> = runnel_bench::cli::COMMANDS.iter().map(|command| command.name()).collect();
    for expected in ["fanout", "relay-chain", "latency", "udp-ceiling", "xdp"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for help in ["--help", "-h"] {
        let (_, output) = run_runnel(&["bench", help]);
        assert!(output.status.success(), "runnel bench {help}: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        for name in &names {
            assert!(text.contains(name), "runnel bench {help} does not list {name}:\n{text}");
        }
    }
    for command in runnel_bench::cli::COMMANDS {
        let flags = command.flag_names();
        assert!(flags.len() > 3, "{} declares no flags of its own", command.name());
        for help in ["--help", "-h"] {
            let (_, output) = run_runnel(&["bench", command.name(), help]);
            assert!(output.status.success(), "runnel bench {} {help}: {output:?}", command.name());
            let text = String::from_utf8_lossy(&output.stdout);
            for flag in &flags {
                assert!(text.contains(flag), "runnel bench {} {help} does not mention {flag}:\n{text}", command.name());
            }
            let flag_lines = text.lines().filter(|line| line.trim_start().starts_with("--") && !line.contains("--help")).count();
            let with_default = text.lines().filter(|line| line.contains("(default: ")).count();
            assert_eq!(flag_lines, with_default, "every flag line shows its default:\n{text}");
        }
    }
    let (_, output) = run_runnel(&["bench", "fanout", "--no-such-flag"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("runnel bench fanout --help"), "{output:?}");
}

// Goal: `runnel bench chain` runs end to end on anvil (registry, node, publisher and
// subscriber, settlement) and reports numbers with the shape physics gives them: the
// revoke is enforced after it was sent, a commit costs the same whatever the tree's size,
// and a withdrawal's proof grows with the tree.
#[test]
fn bench_chain_reports_revocation_and_gas() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (pid, output) = run_runnel(&[
        "bench",
        "chain",
        "--messages",
        "20000",
        "--rounds",
        "1",
        "--revokes",
        "2",
        "--chain-poll-ms",
        "100",
        "--tree-sizes",
        "1,16",
        "--json",
    ]);
    assert!(output.status.success(), "runnel bench chain: {}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let fast = &json["fast_path"];
    assert!(fast["public_ns_per_message"].as_f64().is_some_and(|ns| ns > 0.0), "{json}");
    assert!(fast["restricted_over_public"].as_f64().is_some_and(|r| r > 0.0), "{json}");
    let revocation = &json["revocation"];
    assert_eq!(revocation["cycles"], 2, "{json}");
    let from_send = revocation["from_send_ms"]["min"].as_f64().expect("from_send_ms");
    assert!(from_send > 0.0 && from_send < 10_000.0, "the first rejected message was sent after the revoke: {json}");
    let trees = json["gas"]["trees"].as_array().expect("trees");
    let (one, sixteen) = (&trees[0], &trees[1]);
    assert_eq!((one["proof_length"].as_u64(), sixteen["proof_length"].as_u64()), (Some(0), Some(4)), "{json}");
    let commit = |tree: &serde_json::Value| tree["commit"].as_u64().expect("commit gas");
    assert!(commit(sixteen).abs_diff(commit(one)) < 1_000, "a commit stores one root: {json}");
    assert!(sixteen["withdraw"].as_u64() > one["withdraw"].as_u64(), "a longer proof costs more: {json}");
    assert!(json["gas"]["transfer"].as_u64().is_some_and(|gas| gas > 21_000), "{json}");
    assert_eq!(leftover_children_of(pid), Vec::<String>::new());
}
