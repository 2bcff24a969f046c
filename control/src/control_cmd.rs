//! `runnel control --ipc PATH`: the control process beside a dataplane that runs as
//! `runnel node --ipc PATH`.
//!
//! What it does today:
//! - keeps a connection to the dataplane's command socket (reconnecting with backoff: the
//!   dataplane forwards on its own while control is away);
//! - applies the state it is asked for (`--join` stream parts), and replays it on every
//!   reconnect (replays that change nothing answer `Ok`);
//! - follows the dataplane's events and counters;
//! - serves the admin endpoint (`/status` JSON, `/metrics` Prometheus, [`crate::admin`]).
//!
//! Peering (libp2p neighbors, issue 8) plugs into the same loop: its neighbor events become
//! `AddLink`/`RemoveLink` commands in the desired state.

use crate::admin::{self, Route};
use runnel_core::counters::Counter;
use runnel_node::command::Command;
use runnel_node::ipc::{IpcClient, IpcError, Reply, WireEvent};
use runnel_proto::stream::StreamPart;
use serde_json::{json, Map, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The dataplane's command socket (`runnel node --ipc PATH`).
    #[arg(long, value_name = "PATH")]
    pub ipc: PathBuf,
    /// Admin HTTP address for /status and /metrics (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub admin: String,
    /// Join this stream part (0x<owner>/<path>#<partition>); repeatable.
    #[arg(long, value_name = "STREAM_PART")]
    pub join: Vec<String>,
}

/// How often the dataplane's counters are fetched.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Reads on the command socket wait at most this (the loop's tick).
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What control counts (`runnel_control_…_total` in /metrics).
#[derive(Debug, Default)]
struct ControlCounters {
    ipc_connects: AtomicU64,
    ipc_disconnects: AtomicU64,
    events_received: AtomicU64,
    commands_failed: AtomicU64,
    admin_requests: AtomicU64,
}

impl ControlCounters {
    fn list(&self) -> [(&'static str, &'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("control_ipc_connects", "Connections made to the dataplane's command socket.", get(&self.ipc_connects)),
            ("control_ipc_disconnects", "Connections to the dataplane's command socket lost.", get(&self.ipc_disconnects)),
            (
                "control_events_received",
                "Dataplane events received (signature failures, joins, slow consumers).",
                get(&self.events_received),
            ),
            ("control_commands_failed", "Commands the dataplane answered with an error.", get(&self.commands_failed)),
            ("control_admin_requests", "Requests served by the admin endpoint.", get(&self.admin_requests)),
        ]
    }
}

/// The dataplane as control last saw it.
#[derive(Debug, Default)]
struct DataplaneView {
    connected: bool,
    listen: Vec<String>,
    shards: u16,
    counters: Vec<(String, u64)>,
}

pub fn run(args: ControlArgs) -> Result<(), String> {
    let parts: Vec<StreamPart> =
        args.join.iter().map(|text| StreamPart::parse(text).map_err(|e| format!("--join {text:?}: {}", e.0))).collect::<Result<_, _>>()?;
    let desired: Vec<Command> = parts.iter().map(|part| Command::Join { part: part.key() }).collect();
    let listener = TcpListener::bind(&args.admin).map_err(|e| format!("--admin {}: {e}", args.admin))?;
    let admin_address = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("runnel control: admin on http://{admin_address} (/status, /metrics)");
    let view = Mutex::new(DataplaneView::default());
    let counters = ControlCounters::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            admin::serve(&listener, &stop, |route| {
                counters.admin_requests.fetch_add(1, Ordering::Relaxed);
                let view = view.lock().expect("no panics while holding it");
                match route {
                    Route::Status => (status_json(&args, &parts, &view, &counters, started).to_string(), "application/json"),
                    Route::Metrics => (metrics(&view, &counters), "text/plain; version=0.0.4; charset=utf-8"),
                }
            })
        });
        follow_dataplane(&args.ipc, &desired, &view, &counters);
        stop.store(true, Ordering::Release);
        server
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the admin server panicked")))
            .map_err(|e| format!("admin endpoint: {e}"))
    })?;
    eprintln!("runnel control: stopped");
    Ok(())
}

/// Connects, applies `desired`, follows replies; reconnects until a stop is requested.
fn follow_dataplane(path: &std::path::Path, desired: &[Command], view: &Mutex<DataplaneView>, counters: &ControlCounters) {
    let mut backoff = BACKOFF_MIN;
    let mut said_waiting = false;
    while !crate::signals::stop_requested() {
        let mut client = match IpcClient::connect(path, READ_TIMEOUT * 20) {
            Ok(client) => client,
            Err(error) => {
                if !said_waiting {
                    eprintln!("runnel control: waiting for the dataplane at {}: {error}", path.display());
                    said_waiting = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        said_waiting = false;
        backoff = BACKOFF_MIN;
        counters.ipc_connects.fetch_add(1, Ordering::Relaxed);
        eprintln!("runnel control: connected to the dataplane at {} (listening on {})", path.display(), client.listen.join(", "));
        {
            let mut view = view.lock().expect("no panics while holding it");
            view.connected = true;
            view.listen = client.listen.clone();
            view.shards = client.shards;
        }
        let result = session(&mut client, desired, view, counters);
        view.lock().expect("no panics while holding it").connected = false;
        if let Err(error) = result {
            counters.ipc_disconnects.fetch_add(1, Ordering::Relaxed);
            eprintln!("runnel control: lost the dataplane ({error}); reconnecting");
        }
    }
}

/// One connection: replay the desired state, then poll status and read replies.
fn session(client: &mut IpcClient, desired: &[Command], view: &Mutex<DataplaneView>, counters: &ControlCounters) -> Result<(), IpcError> {
    client.set_read_timeout(READ_TIMEOUT * 20)?;
    for command in desired {
        let result = client.execute(command, |event| on_event(&event, counters))?;
        if let Err(error) = result {
            counters.commands_failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("runnel control: {} refused: {}", command.name(), error.message);
        }
    }
    client.set_read_timeout(READ_TIMEOUT)?;
    let mut next_status = Instant::now();
    while !crate::signals::stop_requested() {
        if Instant::now() >= next_status {
            client.request_status()?;
            next_status += STATUS_INTERVAL;
        }
        match client.poll()? {
            Some(Reply::Status { counters: totals, .. }) => view.lock().expect("no panics while holding it").counters = totals,
            Some(Reply::Event(event)) => on_event(&event, counters),
            Some(Reply::Response { error: Some(error), .. }) => {
                counters.commands_failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("runnel control: a command was refused: {}", error.message);
            }
            Some(Reply::ProtocolError { message }) => return Err(IpcError::Handshake(message)),
            Some(_) | None => {}
        }
    }
    Ok(())
}

fn on_event(event: &WireEvent, counters: &ControlCounters) {
    counters.events_received.fetch_add(1, Ordering::Relaxed);
    match event {
        WireEvent::SignatureFailure { shard, link_id, publisher, publisher_proven } => eprintln!(
            "runnel control: shard {shard}: bad signature on link {link_id} from 0x{} (publisher proven on that link: {publisher_proven})",
            hex::encode(publisher)
        ),
        WireEvent::SlowConsumer { shard, link_id } => eprintln!("runnel control: shard {shard}: link {link_id} is a slow consumer"),
        WireEvent::Joined { .. } => {}
    }
}

fn status_json(args: &ControlArgs, parts: &[StreamPart], view: &DataplaneView, counters: &ControlCounters, started: Instant) -> Value {
    let dataplane_counters: Map<String, Value> = view.counters.iter().map(|(name, value)| (name.clone(), json!(value))).collect();
    let control: Map<String, Value> =
        counters.list().iter().map(|(name, _, value)| (name.trim_start_matches("control_").to_string(), json!(value))).collect();
    json!({
        "uptime_s": started.elapsed().as_secs_f64(),
        "dataplane": {
            "ipc": args.ipc.display().to_string(),
            "connected": view.connected,
            "listen": view.listen,
            "shards": view.shards,
        },
        "stream_parts": parts.iter().map(|part| json!({ "stream_part": part.to_string(), "key": hex::encode(part.key().0) })).collect::<Vec<_>>(),
        // Filled by peering (issue 8): the libp2p peers and each stream part's neighbors.
        "peers": [],
        "neighbors": [],
        "counters": dataplane_counters,
        "control": control,
    })
}

fn metrics(view: &DataplaneView, counters: &ControlCounters) -> String {
    let mut all: Vec<(String, u64)> = view.counters.clone();
    all.extend(counters.list().iter().map(|(name, _, value)| (name.to_string(), *value)));
    admin::prometheus(&all, |name| {
        if let Some(counter) = Counter::ALL.iter().find(|c| c.name() == name) {
            return counter.help().to_string();
        }
        if let Some((_, help, _)) = counters.list().iter().find(|(n, _, _)| *n == name) {
            return help.to_string();
        }
        match name.split_once('_') {
            Some(("runtime", rest)) => format!("Shard runtime counter {rest} (node-wide total)."),
            Some(("commands", rest)) => format!("Command interface counter {rest}."),
            Some(("xdp", rest)) => format!("XDP filter verdict {rest}, summed over CPUs."),
            _ => format!("Counter {name}."),
        }
    })
}
