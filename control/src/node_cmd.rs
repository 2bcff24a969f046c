//! `runnel node --config FILE`: runs a dataplane until Ctrl-C/SIGTERM, printing status.
//!
//! Status goes to stdout as one JSON object per line (every `--status-interval` seconds and
//! once at exit), so scripts and tests read the node's counters without an admin API. The
//! `filter` object says where the early-rejection filter runs (`xdp-native`, `xdp-generic`,
//! `userspace`) and, with XDP, the kernel's verdict counts (docs/xdp-filter.md); the
//! userspace filter's drops are the `datagrams_*` counters; `commands` counts the command
//! interface's traffic (`runnel_node::command::CommandCounter`).

use runnel_core::counters::Counters;
use runnel_core::filter::Verdict;
use runnel_node::command::CommandCounter;
use runnel_node::config::NodeConfig;
use runnel_node::node::{Node, NodeHandle};
use runnel_node::shard::{RuntimeCounter, RuntimeCounters};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Node configuration (TOML): listen address, shards, links. See docs/operations.md.
    #[arg(long)]
    pub config: PathBuf,
    /// Seconds between status lines on stdout (0: only the final one).
    #[arg(long, default_value_t = 5.0)]
    pub status_interval: f64,
}

/// Node-wide counter totals plus per-shard runtime counters, as one JSON object.
pub fn status_json(node: &NodeHandle, started: Instant) -> Value {
    let mut totals = Counters::default();
    for shard in node.counters() {
        totals.merge(&shard);
    }
    let counters: Map<String, Value> = totals.iter().map(|(name, value)| (name.to_string(), json!(value))).collect();
    let mut runtime_totals = RuntimeCounters::default();
    for shard in node.runtime_counters() {
        for counter in RuntimeCounter::ALL {
            runtime_totals.add(counter, shard.get(counter));
        }
    }
    let runtime: Map<String, Value> = RuntimeCounter::ALL.iter().map(|c| (c.name().to_string(), json!(runtime_totals.get(*c)))).collect();
    let xdp: Value = match node.xdp_verdicts() {
        Some(counts) => Verdict::ALL.iter().map(|v| (v.name().to_string(), json!(counts[*v as usize]))).collect::<Map<_, _>>().into(),
        None => Value::Null,
    };
    let policy = node.policy_counters();
    let command_counters = node.command_counters();
    let commands: Map<String, Value> =
        CommandCounter::ALL.iter().map(|c| (c.name().to_string(), json!(command_counters.get(*c)))).collect();
    json!({
        "uptime_s": started.elapsed().as_secs_f64(),
        "listen": node.local_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "filter": {
            "mode": node.filter_mode().name(),
            "xdp_verdicts": xdp,
            "quarantines": policy.quarantines.load(Ordering::Relaxed),
            "shard_updates_dropped": policy.shard_updates_dropped.load(Ordering::Relaxed),
            "xdp_map_errors": policy.xdp_map_errors.load(Ordering::Relaxed),
        },
        "counters": counters,
        "runtime": runtime,
        "commands": commands,
    })
}

pub fn run(args: NodeArgs) -> Result<(), String> {
    let config = NodeConfig::load(&args.config).map_err(|e| e.to_string())?;
    let summary = format!(
        "{} shard(s) from {}, {} link(s), datagrams up to {} B, verify = {:?}",
        config.shards,
        config.listen,
        config.links.len(),
        config.datagram_length_max,
        config.verify
    );
    let node = Node::start(config).map_err(|e| e.to_string())?;
    eprintln!("runnel node: running {summary}");
    eprintln!("runnel node: {}", node.filter_mode());
    let started = Instant::now();
    let mut next_status = started + Duration::from_secs_f64(args.status_interval.max(0.0));
    while !crate::signals::stop_requested() {
        std::thread::sleep(Duration::from_millis(50));
        while let Ok(event) = node.events().try_recv() {
            eprintln!("runnel node: {event:?}");
        }
        if args.status_interval > 0.0 && Instant::now() >= next_status {
            println!("{}", status_json(&node, started));
            next_status += Duration::from_secs_f64(args.status_interval);
        }
    }
    let status = status_json(&node, started);
    node.stop().map_err(|e| e.to_string())?;
    println!("{status}");
    eprintln!("runnel node: stopped");
    Ok(())
}
