//! `runnel node --config FILE`: runs a dataplane until Ctrl-C/SIGTERM, printing status.
//!
//! Status goes to stdout as one JSON object per line (every `--status-interval` seconds and
//! once at exit), so scripts and tests read the node's counters without an admin API. The
//! `filter` object says where the early-rejection filter runs (`xdp-native`, `xdp-generic`,
//! `userspace`) and, with XDP, the kernel's verdict counts (docs/xdp-filter.md); the
//! userspace filter's drops are the `datagrams_*` counters; `commands` counts the command
//! interface's traffic (`runnel_node::command::CommandCounter`).
//!
//! With `--ipc PATH` the node also serves its command interface on a unix socket (mode 0600)
//! for a control process in another process (`runnel_node::ipc`); events then go to the
//! connected control process instead of stderr. Without `--ipc`, a config with a `[control]`
//! section makes `runnel node` the supervisor of both processes ([`crate::supervise`]).

use runnel_core::counters::Counters;
use runnel_core::filter::Verdict;
use runnel_node::command::CommandCounter;
use runnel_node::config::NodeConfig;
use runnel_node::ipc::{self, IpcCounters};
use runnel_node::node::{Node, NodeHandle};
use runnel_node::shard::{RuntimeCounter, RuntimeCounters};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Node configuration (TOML): listen address, shards, links. See docs/operations.md.
    #[arg(long)]
    pub config: PathBuf,
    /// Seconds between status lines on stdout (0: only the final one).
    #[arg(long, default_value_t = 5.0)]
    pub status_interval: f64,
    /// Serve the command interface on this unix socket (created mode 0600; keep its
    /// directory private) for a control process.
    #[arg(long, value_name = "PATH")]
    pub ipc: Option<PathBuf>,
}

/// Node-wide counter totals plus per-shard runtime counters (and, with `--ipc`, the IPC
/// server's counters), as one JSON object.
pub fn status_json(node: &NodeHandle, started: Instant, ipc: Option<&IpcCounters>) -> Value {
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
        "ipc": ipc.map(|c| json!({
            "connections": c.connections.load(Ordering::Relaxed),
            "protocol_errors": c.protocol_errors.load(Ordering::Relaxed),
            "commands": c.commands.load(Ordering::Relaxed),
            "responses_orphaned": c.responses_orphaned.load(Ordering::Relaxed),
        })),
    })
}

pub fn run(args: NodeArgs) -> Result<(), String> {
    // A `[control]` section makes this the supervisor of a dataplane and a control process;
    // with `--ipc` it is the dataplane alone (what the supervisor starts).
    if args.ipc.is_none() {
        if let Some(section) = crate::supervise::control_section(&args.config)? {
            return crate::supervise::run(&args.config, section, args.status_interval);
        }
    }
    let config = NodeConfig::load(&args.config).map_err(|e| e.to_string())?;
    let summary = format!(
        "{} shard(s) from {}, {} link(s), datagrams up to {} B, verify = {:?}",
        config.shards,
        config.listen,
        config.links.len(),
        config.datagram_length_max,
        config.verify
    );
    let listener = match &args.ipc {
        Some(path) => Some(ipc::bind(path).map_err(|e| format!("--ipc {}: {e}", path.display()))?),
        None => None,
    };
    let node = Node::start(config).map_err(|e| e.to_string())?;
    logln!("runnel node: running {summary}");
    logln!("runnel node: {}", node.filter_mode());
    if let Some(path) = &args.ipc {
        logln!("runnel node: command interface on {}", path.display());
    }
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let ipc_counters = IpcCounters::default();
    let ipc_enabled = listener.is_some();
    let served = std::thread::scope(|scope| {
        let server = listener.as_ref().map(|listener| scope.spawn(|| ipc::serve(&node, listener, &stop, &ipc_counters)));
        let mut next_status = started + Duration::from_secs_f64(args.status_interval.max(0.0));
        while !crate::signals::stop_requested() && !server.as_ref().is_some_and(|s| s.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if server.is_none() {
                while let Ok(event) = node.events().try_recv() {
                    logln!("runnel node: {event:?}");
                }
            }
            if args.status_interval > 0.0 && Instant::now() >= next_status {
                println!("{}", status_json(&node, started, ipc_enabled.then_some(&ipc_counters)));
                next_status += Duration::from_secs_f64(args.status_interval);
            }
        }
        stop.store(true, Ordering::Release);
        server.map(|s| s.join().unwrap_or_else(|_| Err(std::io::Error::other("the IPC server panicked"))))
    });
    if let Some(path) = &args.ipc {
        let _ = std::fs::remove_file(path);
    }
    let status = status_json(&node, started, ipc_enabled.then_some(&ipc_counters));
    node.stop().map_err(|e| e.to_string())?;
    println!("{status}");
    logln!("runnel node: stopped");
    match served {
        Some(Err(error)) => Err(format!("the IPC socket failed: {error}")),
        _ => Ok(()),
    }
}
