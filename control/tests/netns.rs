//! A network of `runnel node`s, each in its own network namespace on one bridge, as an
//! operator runs them: a config file with a `[control]` section (the supervisor starts the
//! dataplane and the control process), one bootstrap address, no file naming a neighbor.
//! Subscribers and the publisher are `runnel sub/pub --node`. Needs root (CI has it).
//!
//! One test, in phases (each check names its phase when it fails):
//! 1. eight nodes on stream part A find each other through node 0 and two nodes on part B
//!    through the same bootstrap; every node has ≥ 3 neighbors (B's two have each other);
//! 2. a publisher at node 0 sends a paced stream on A, one at node 9 on B;
//! 3. three A nodes are SIGKILLed mid-stream: each survivor is back to ≥ 3 live neighbors
//!    within 10 s;
//! 4. one node's control process is SIGKILLed: its dataplane keeps running (same process)
//!    and moving frames over the links it had (its half-second status lines show frames
//!    taken in and datagrams sent in every interval), the supervisor restarts control, and
//!    the new control inherits its predecessor's links;
//! 5. every surviving A subscriber got every A message once, in order, and no B message;
//!    B's subscriber got every B message and no A message; no node saw a datagram of a part
//!    it had not joined;
//! 6. `/metrics` of a survivor: every dataplane, XDP, control and peering counter present,
//!    and the ones this scenario must move did move.

use runnel_bench::xdp::Netns;
use runnel_peering::Identity;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

// Each test binary uses a part of the shared helpers.
#[allow(dead_code)]
mod common;

#[path = "common/bridge.rs"]
mod bridge;

use bridge::{bridged, spawn, Bridged};
use common::{lines_of, temp_dir};

const STREAM_A: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/netns-a#0";
const STREAM_B: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/netns-b#0";
/// Nodes 0..A_NODES serve A, the rest B.
const A_NODES: usize = 8;
const NODES: usize = 10;
const KILLED: [usize; 3] = [5, 6, 7];
/// The node whose control process is killed.
const CONTROL_KILLED: usize = 3;
const P2P_PORT: u16 = 7600;
const DATAPLANE_PORT: u16 = 7000;
const ADMIN_PORT: u16 = 9464;
/// A messages, paced; the kills happen while they flow.
const A_MESSAGES: u64 = 3_000;
const B_MESSAGES: u64 = 500;
const A_INTERVAL: Duration = Duration::from_millis(5);
const B_OFFSET: u64 = 1_000_000_000;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the test may take: every wait inside has its own shorter timeout; this catches
/// a hang (the watchdog deletes the namespaces and exits, which ends every child).
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

fn address(index: usize) -> String {
    format!("10.99.0.{}", index + 1)
}

fn in_netns(netns: &Netns, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns.name(), program]);
    command
}

fn private_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid of a process this test started; no memory is involved.
    unsafe { libc::kill(pid as i32, signal) };
}

/// The children of `pid` (/proc/PID/task/PID/children) with their command lines.
fn children(pid: u32) -> Vec<(u32, String)> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|child| child.parse::<u32>().ok())
        .map(|child| (child, std::fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap_or_default().replace('\0', " ")))
        .collect()
}

struct Node {
    index: usize,
    netns: Netns,
    supervisor: Child,
    identity: Identity,
    log: PathBuf,
    out: PathBuf,
}

impl Node {
    fn p2p(&self) -> String {
        format!("/ip4/{}/tcp/{P2P_PORT}/p2p/{}", address(self.index), self.identity.peer_id())
    }

    /// GET `path` from the admin endpoint, from inside the node's namespace.
    fn get(&self, path: &str) -> Result<String, String> {
        let admin: SocketAddr = format!("{}:{ADMIN_PORT}", address(self.index)).parse().unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.netns
            .run(move || -> Result<String, String> {
                let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
                stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
                let mut response = String::new();
                stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
                response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).ok_or_else(|| "no HTTP body".to_string())
            })
            .map_err(|e| e.to_string())?
    }

    fn status(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.get("/status")?).map_err(|e| e.to_string())
    }

    /// The peer ids of the neighbors whose connection is up.
    fn live_neighbors(&self) -> Vec<String> {
        let Ok(status) = self.status() else { return Vec::new() };
        if status["dataplane"]["connected"] != true {
            return Vec::new();
        }
        let neighbors = status["neighbors"].as_array().cloned().unwrap_or_default();
        neighbors.iter().filter(|n| n["connected"] == true).filter_map(|n| n["peer"].as_str().map(str::to_string)).collect()
    }

    fn control_pid(&self) -> Option<u32> {
        children(self.supervisor.id()).into_iter().find(|(_, cmdline)| cmdline.contains(" control ")).map(|(pid, _)| pid)
    }

    fn dataplane_pid(&self) -> Option<u32> {
        children(self.supervisor.id())
            .into_iter()
            .find(|(_, cmdline)| cmdline.contains(" --ipc ") && cmdline.contains(" node "))
            .map(|(pid, _)| pid)
    }

    /// The dataplane's status lines (its stdout: one JSON object per line).
    fn dataplane_statuses(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|v| v.get("uptime_s").is_some())
            .collect()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- node {} log (last 30 lines) ---\n{}", self.index, lines[lines.len().saturating_sub(30)..].join("\n"))
    }
}

fn start_node(dir: &Path, index: usize, netns: Netns, bootstrap: Option<&str>) -> Node {
    let identity = Identity::generate();
    let key_file = dir.join(format!("node{index}.key"));
    private_file(&key_file, &format!("{}\n", identity.publisher_key().secret_hex()));
    let here = address(index);
    let stream = if index < A_NODES { STREAM_A } else { STREAM_B };
    let bootstrap = bootstrap.map(|b| format!("\"{b}\"")).unwrap_or_default();
    let config = dir.join(format!("node{index}.toml"));
    private_file(
        &config,
        &format!(
            "[node]\nlisten = \"{here}:{DATAPLANE_PORT}\"\nshards = 1\nverify = \"all\"\n\n[control]\nadmin = \"{here}:{ADMIN_PORT}\"\n\
             join = [\"{stream}\"]\nipc = \"{}\"\nkey_file = \"{}\"\np2p_listen = [\"/ip4/{here}/tcp/{P2P_PORT}\"]\nbootstrap = [{bootstrap}]\n",
            dir.join(format!("node{index}.sock")).display(),
            key_file.display(),
        ),
    );
    let (log, out) = (dir.join(format!("node{index}.log")), dir.join(format!("node{index}.out")));
    let supervisor = spawn(
        in_netns(&netns, env!("CARGO_BIN_EXE_runnel"))
            .args(["node", "--status-interval", "0.5", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    Node { index, netns, supervisor, identity, log, out }
}

/// A `runnel sub --raw` at `node`; its payload lines.
fn subscriber(node: &Node, stream: &str, dir: &Path) -> (Child, Receiver<String>) {
    let mut child = spawn(
        in_netns(&node.netns, env!("CARGO_BIN_EXE_runnel"))
            .args(["sub", "--raw", "--stream", stream, "--node", &node.p2p()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("sub{}.log", node.index))).unwrap()),
    );
    let lines = lines_of(child.stdout.take().unwrap());
    (child, lines)
}

/// A `runnel pub` at `node`, fed lines from its stdin.
fn publisher(node: &Node, stream: &str, dir: &Path) -> Child {
    let key_file = dir.join(format!("publisher{}.key", node.index));
    private_file(&key_file, &format!("{}\n", Identity::generate().publisher_key().secret_hex()));
    spawn(
        in_netns(&node.netns, env!("CARGO_BIN_EXE_runnel"))
            .args(["pub", "--stream", stream, "--node", &node.p2p(), "--key-file"])
            .arg(&key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("pub{}.log", node.index))).unwrap()),
    )
}

/// What one subscriber received: payloads (numbers) in arrival order, probes not counted.
#[derive(Default)]
struct Received {
    values: Vec<u64>,
    probes: u64,
}

fn drain(lines: &Receiver<String>, received: &mut Received) {
    for line in lines.try_iter() {
        match line.trim().parse::<u64>() {
            Ok(value) => received.values.push(value),
            Err(_) => received.probes += 1,
        }
    }
}

fn diagnostics(nodes: &[Node]) -> String {
    nodes.iter().map(Node::log_tail).collect::<Vec<_>>().join("\n")
}

fn metric(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

// Goal: see the module doc — peering on a real (virtual) network, healing after SIGKILLs,
// control restarts that never stop the dataplane, parts that do not leak, and /metrics.
#[test]
fn a_bridged_network_of_nodes_peers_heals_and_keeps_parts_apart() {
    let Bridged { hub: _hub, nodes: namespaces } = bridged("netns", NODES, address, None, TEST_TIMEOUT);
    let dir = temp_dir("netns");

    // Phase 1: the nodes, node 0 the bootstrap of all.
    let mut namespaces = namespaces.into_iter();
    let first = start_node(&dir.0, 0, namespaces.next().unwrap(), None);
    let bootstrap = first.p2p();
    let mut nodes = vec![first];
    for (index, netns) in (1..NODES).zip(namespaces) {
        nodes.push(start_node(&dir.0, index, netns, Some(&bootstrap)));
    }
    let peers: Vec<String> = nodes.iter().map(|n| n.identity.peer_id().to_string()).collect();
    let started = Instant::now();
    loop {
        let degrees: Vec<usize> = nodes.iter().map(|n| n.live_neighbors().len()).collect();
        let wanted = |index: usize| if index < A_NODES { 3 } else { 1 };
        if degrees.iter().enumerate().all(|(index, degree)| *degree >= wanted(index)) {
            eprintln!("netns: meshed in {:.2} s, degrees {degrees:?}", started.elapsed().as_secs_f64());
            break;
        }
        assert!(started.elapsed() < TIMEOUT, "phase 1: no mesh within {TIMEOUT:?}: degrees {degrees:?}\n{}", diagnostics(&nodes));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Neighbors stay within their part.
    for node in &nodes {
        let part_of = |peer: &String| peers.iter().position(|p| p == peer).map(|index| index < A_NODES);
        for neighbor in node.live_neighbors() {
            assert_eq!(part_of(&neighbor), Some(node.index < A_NODES), "phase 1: node {} has a neighbor in the other part", node.index);
        }
    }

    // Phase 2: subscribers everywhere, publishers at node 0 (A) and node 9 (B); probes until
    // each subscriber hears its part.
    let mut subscribers: Vec<(Child, Receiver<String>, Received)> = nodes
        .iter()
        .map(|node| {
            let (child, lines) = subscriber(node, if node.index < A_NODES { STREAM_A } else { STREAM_B }, &dir.0);
            (child, lines, Received::default())
        })
        .collect();
    let mut publisher_a = publisher(&nodes[0], STREAM_A, &dir.0);
    let mut publisher_b = publisher(&nodes[NODES - 1], STREAM_B, &dir.0);
    let mut stdin_a = publisher_a.stdin.take().unwrap();
    let mut stdin_b = publisher_b.stdin.take().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        writeln!(stdin_a, "probe").unwrap();
        writeln!(stdin_b, "probe").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for (_, lines, received) in &mut subscribers {
            drain(lines, received);
        }
        if subscribers.iter().all(|(_, _, received)| received.probes > 0) {
            break;
        }
        let heard: Vec<u64> = subscribers.iter().map(|(_, _, r)| r.probes).collect();
        assert!(Instant::now() < deadline, "phase 2: probes heard per subscriber {heard:?}\n{}", diagnostics(&nodes));
    }
    // The publishers run on threads, paced; the kills happen while they run.
    let published_a = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let a_thread = {
        let (published, done) = (published_a.clone(), done.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            for sequence in 0..A_MESSAGES {
                writeln!(stdin_a, "{sequence}").unwrap();
                stdin_a.flush().unwrap();
                published.store(sequence + 1, Ordering::Relaxed);
                next += A_INTERVAL;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            done.store(true, Ordering::Relaxed);
            stdin_a
        })
    };
    for sequence in 0..B_MESSAGES {
        writeln!(stdin_b, "{}", B_OFFSET + sequence).unwrap();
    }
    stdin_b.flush().unwrap();
    let wait_published = |count: u64| {
        while published_a.load(Ordering::Relaxed) < count {
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    // Phase 3: SIGKILL three A nodes, all processes at once: the supervisor is stopped
    // first, so that it neither restarts its children nor lets the kernel's PDEATHSIG give
    // them a graceful SIGTERM.
    wait_published(A_MESSAGES / 5);
    for index in KILLED {
        let supervisor = nodes[index].supervisor.id();
        signal(supervisor, libc::SIGSTOP);
        for (child, _) in children(supervisor) {
            signal(child, libc::SIGKILL);
        }
        signal(supervisor, libc::SIGKILL);
    }
    let killed_at = Instant::now();
    let killed_peers: Vec<&String> = KILLED.iter().map(|index| &peers[*index]).collect();
    let survivors: Vec<usize> = (0..A_NODES).filter(|index| !KILLED.contains(index)).collect();
    loop {
        let live: Vec<Vec<String>> = survivors.iter().map(|index| nodes[*index].live_neighbors()).collect();
        let healed = live.iter().all(|neighbors| neighbors.len() >= 3 && neighbors.iter().all(|n| !killed_peers.contains(&n)));
        if healed {
            eprintln!("netns: survivors healed {:.2} s after the kills", killed_at.elapsed().as_secs_f64());
            break;
        }
        let degrees: Vec<usize> = live.iter().map(Vec::len).collect();
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "phase 3: survivors {survivors:?} not back to >= 3 live neighbors within 10 s: {degrees:?}\n{}",
            diagnostics(&nodes)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Phase 4: SIGKILL one node's control process. Its dataplane keeps running (same pid,
    // status lines with a growing uptime) and forwarding while the supervisor restarts control.
    let victim = &nodes[CONTROL_KILLED];
    let dataplane_pid = victim.dataplane_pid().expect("the dataplane runs");
    let control_pid = victim.control_pid().expect("control runs");
    let before = victim.dataplane_statuses().pop().expect("status lines every 0.5 s");
    signal(control_pid, libc::SIGKILL);
    let control_killed_at = Instant::now();
    let restarted = loop {
        if let Some(pid) = victim.control_pid().filter(|pid| *pid != control_pid) {
            if victim.status().is_ok_and(|s| s["dataplane"]["connected"] == true) {
                break pid;
            }
        }
        assert!(control_killed_at.elapsed() < TIMEOUT, "phase 4: control was not restarted\n{}", victim.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("netns: control {control_pid} → {restarted}, back in {:.2} s", control_killed_at.elapsed().as_secs_f64());
    assert_eq!(victim.dataplane_pid(), Some(dataplane_pid), "phase 4: the dataplane was restarted\n{}", victim.log_tail());
    // From the last status line before the kill through one second after control is back
    // (its own links take longer than that to form), every half-second line shows the
    // dataplane taking in frames and sending datagrams over the links it had.
    std::thread::sleep(Duration::from_secs(1));
    let uptime = |status: &serde_json::Value| status["uptime_s"].as_f64().unwrap_or(0.0);
    let window: Vec<serde_json::Value> =
        victim.dataplane_statuses().into_iter().filter(|status| uptime(status) >= uptime(&before)).collect();
    assert!(window.len() >= 3, "phase 4: the dataplane wrote {} status lines across the restart", window.len());
    for pair in window.windows(2) {
        for counter in ["frames_accepted", "datagrams_sent"] {
            let (earlier, later) = (pair[0]["counters"][counter].as_u64(), pair[1]["counters"][counter].as_u64());
            assert!(
                later > earlier,
                "phase 4: node {CONTROL_KILLED}'s dataplane stalled while control restarted: {counter} {earlier:?} → {later:?} \
                 (uptime {:.1} → {:.1} s)",
                uptime(&pair[0]),
                uptime(&pair[1])
            );
        }
    }
    let status = victim.status().unwrap();
    assert!(
        status["control"]["links_inherited"].as_u64().unwrap_or(0) > 0,
        "phase 4: the new control inherited its predecessor's links: {status:#}"
    );

    // Phase 5: everything published arrives where it should.
    let stdin_a = a_thread.join().unwrap();
    assert!(done.load(Ordering::Relaxed));
    drop(stdin_a);
    drop(stdin_b);
    // The killed nodes' subscribers exit with their nodes; the control-killed node's
    // subscriber loses its client link with its control process (`runnel sub` then exits).
    let expected_a: Vec<u64> = (0..A_MESSAGES).collect();
    let expected_b: Vec<u64> = (B_OFFSET..B_OFFSET + B_MESSAGES).collect();
    let checked: Vec<usize> = (0..NODES).filter(|index| !KILLED.contains(index) && *index != CONTROL_KILLED).collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for (_, lines, received) in &mut subscribers {
            drain(lines, received);
        }
        let complete = checked.iter().all(|index| {
            let values = &subscribers[*index].2.values;
            values.len() >= if *index < A_NODES { expected_a.len() } else { expected_b.len() }
        });
        if complete || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for index in &checked {
        let values = &subscribers[*index].2.values;
        let expected = if *index < A_NODES { &expected_a } else { &expected_b };
        let leaked = values.iter().filter(|v| (**v >= B_OFFSET) != (*index >= A_NODES)).count();
        assert_eq!(leaked, 0, "phase 5: node {index}'s subscriber got {leaked} messages of the other part");
        assert!(
            values == expected,
            "phase 5: node {index}'s subscriber got {} messages, not exactly the {} published in order (first missing: {:?})\n{}",
            values.len(),
            expected.len(),
            expected.iter().find(|v| !values.contains(v)),
            diagnostics(&nodes)
        );
    }
    // The control-killed node's subscriber had every A message up to the kill, in order.
    let partial = &subscribers[CONTROL_KILLED].2.values;
    assert!(partial.iter().zip(0..).all(|(v, i)| *v == i), "phase 5: node {CONTROL_KILLED}'s subscriber, before its control died");
    for index in checked.iter().copied().chain([CONTROL_KILLED]) {
        let status = nodes[index].status().unwrap();
        assert_eq!(status["counters"]["datagrams_not_joined"], 0, "phase 5: node {index} got datagrams of a part it has not joined");
    }

    // Phase 6: /metrics. Every counter is present at a survivor; those the scenario must
    // move did, summed over the survivors (which of them saw a neighbor die is up to chance).
    let scrapes: Vec<String> = survivors.iter().map(|index| nodes[*index].get("/metrics").unwrap()).collect();
    let mut names: Vec<String> = runnel_core::counters::Counter::ALL.iter().map(|c| format!("runnel_{}_total", c.name())).collect();
    names.extend(runnel_node::shard::RuntimeCounter::ALL.iter().map(|c| format!("runnel_runtime_{}_total", c.name())));
    names.extend(runnel_node::command::CommandCounter::ALL.iter().map(|c| format!("runnel_commands_{}_total", c.name())));
    names.extend(runnel_core::filter::Verdict::ALL.iter().map(|v| format!("runnel_xdp_{}_total", v.name())));
    names.extend(runnel_peering::PeeringCounter::ALL.iter().map(|c| c.name().to_string()));
    let policy = ["quarantines", "shard_updates_dropped", "xdp_map_errors", "events_dropped"];
    names.extend(policy.iter().map(|name| format!("runnel_policy_{name}_total")));
    let ipc = ["connections", "protocol_errors", "commands", "responses_orphaned"];
    names.extend(ipc.iter().map(|name| format!("runnel_ipc_{name}_total")));
    let control = ["ipc_connects", "ipc_disconnects", "events_received", "commands_failed", "admin_requests", "links_inherited"];
    names.extend(control.iter().map(|name| format!("runnel_control_{name}_total")));
    let missing: Vec<&String> = names.iter().filter(|name| metric(&scrapes[0], name).is_none()).collect();
    assert!(missing.is_empty(), "phase 6: /metrics lacks {missing:?}:\n{}", scrapes[0]);
    for moved in [
        "runnel_frames_accepted_total",
        "runnel_frames_forwarded_total",
        "runnel_frames_delivered_total",
        "runnel_datagrams_sent_total",
        "runnel_subscribes_received_total",
        "runnel_xdp_pass_total",
        "runnel_ipc_commands_total",
        "runnel_peering_neighbors_up_total",
        "runnel_peering_neighbors_silent_total",
        "runnel_peering_client_links_granted_total",
        "runnel_control_ipc_connects_total",
        "runnel_control_admin_requests_total",
    ] {
        let total: u64 = scrapes.iter().map(|scrape| metric(scrape, moved).unwrap_or(0)).sum();
        assert!(total > 0, "phase 6: {moved} did not move at any survivor:\n{}", scrapes[0]);
    }
    for (child, _, _) in &mut subscribers {
        let _ = child.kill();
        let _ = child.wait();
    }
    for mut child in [publisher_a, publisher_b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    for node in &mut nodes {
        let _ = node.supervisor.kill();
        let _ = node.supervisor.wait();
    }
}
