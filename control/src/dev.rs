//! `runnel dev`: a local network on loopback with a publisher and subscribers, live numbers.
//!
//! Starts `--nodes` dataplanes in this process (one shard each, so a laptop or a 2-core box
//! is not oversubscribed), linked in a ring with chords (degree up to 4, as the overlay
//! targets), a publisher at node 0 and one subscriber at every other node. Each message
//! carries its send time, so subscribers measure end-to-end latency; each subscriber checks
//! every chain for duplicates and holes. The generated configs and client link files stay in
//! a temporary folder so you can attach `runnel sub --link …` from another terminal; they
//! hold link keys, so each is mode 0600 in a folder created 0700, and none is printed.
//!
//! It runs for hours in fixed memory: duplicates and loss are counted by a [`LossWindow`]
//! per (subscriber, publisher, chain) — the last [`loss_window::WINDOW_SEQUENCES`]
//! sequences as a bitmap — and latencies go into [`LatencyHistogram`]s (log buckets, < 1 %
//! error), not into lists. So `lost` means "not delivered while within 65536 sequences of
//! the newest", and a delivery older than that is counted in `late_delivered` rather than
//! as a first delivery or a duplicate. For `runnel dev`'s own publisher, `delivered =
//! published × subscribers − lost + duplicates_delivered + late_delivered`; messages of
//! publishers you attach yourself add to `delivered` too (and, beyond [`LOSS_WINDOWS_MAX`]
//! chains, are counted only there and in `untracked_delivered`).

mod latency_histogram;
mod local_chain;
mod loss_window;

use self::latency_histogram::LatencyHistogram;
use self::local_chain::LocalChain;
use self::loss_window::{Arrival, LossWindow};
use crate::pubsub::{identity_of, LinkSource, Pacer, Signatures};
use runnel_client::{ClientOptions, Outgoing, PublisherThread, UdpClient};
use runnel_peering::client::ClientSession;
use runnel_peering::wire::ClientAccess;
use runnel_peering::Identity;
use runnel_proto::crypto::PublisherKey;
use runnel_proto::stream::StreamPart;
use serde_json::json;
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Nodes in the local network.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// At the end, print one JSON object with the totals.
    #[arg(long)]
    pub json: bool,
    /// Messages per second the publisher sends (0: as fast as it can).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Payload bytes per message (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, value_enum, default_value_t = Signatures::Batch)]
    pub signatures: Signatures,
    /// Where to write configs and link files, each mode 0600 (default: a new folder under
    /// /tmp, mode 0700).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run without the local chain: no anvil, no contracts, the dev stream public and its
    /// permissions unchecked.
    #[arg(long)]
    pub no_chain: bool,
}

/// Most nodes `runnel dev` starts (each is three processes and three loopback ports).
const NODES_MAX: usize = 32;
/// How long the nodes get to find each other before `runnel dev` gives up.
const MESH_TIMEOUT: Duration = Duration::from_secs(60);

/// The dev stream's part 0. Its owner is anvil's account 0, which creates it on the local
/// chain.
pub const DEV_STREAM: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/runnel-dev#0";

/// Free loopback ports, found by binding port 0 (the OS picks); all held at once, so none
/// is handed out twice, then released.
fn free_ports(count: usize, udp: bool) -> Result<Vec<u16>, String> {
    let error = |e: std::io::Error| format!("cannot find a free loopback port: {e}");
    let mut udp_sockets = Vec::new();
    let mut tcp_listeners = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..count {
        let address = if udp {
            let socket = UdpSocket::bind("127.0.0.1:0").map_err(error)?;
            let address = socket.local_addr().map_err(error)?;
            udp_sockets.push(socket);
            address
        } else {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(error)?;
            let address = listener.local_addr().map_err(error)?;
            tcp_listeners.push(listener);
            address
        };
        ports.push(address.port());
    }
    Ok(ports)
}

/// One node of the local network: its supervisor process and how to reach it.
struct DevNode {
    process: Child,
    admin: SocketAddr,
    /// Its control process's libp2p address, `/ip4/127.0.0.1/tcp/P/p2p/<PeerId>`.
    p2p: String,
}

impl Drop for DevNode {
    fn drop(&mut self) {
        // SIGTERM: the supervisor stops its dataplane and control process, then exits.
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(self.process.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(8);
        while self.process.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The ports of one node: dataplane (UDP), admin (TCP), libp2p (TCP).
struct NodePorts {
    udp: u16,
    admin: u16,
    p2p: u16,
}

/// Writes node `index`'s identity key and config and starts it, its log in `dir`.
fn start_node(dir: &Path, index: usize, ports: &NodePorts, bootstrap: Option<&str>, chain: Option<&LocalChain>) -> Result<DevNode, String> {
    let identity = Identity::generate();
    let key_path = dir.join(format!("node{index}.key"));
    write_key_file(&key_path, &format!("{}\n", identity.publisher_key().secret_hex()))?;
    let bootstrap = bootstrap.map(|b| format!("\"{b}\"")).unwrap_or_default();
    let config = format!(
        "[node]\nlisten = \"127.0.0.1:{}\"\nshards = 1\nverify = \"all\"\n\n[control]\nadmin = \"127.0.0.1:{}\"\njoin = [\"{DEV_STREAM}\"]\n\
         ipc = \"{}\"\nkey_file = \"{}\"\np2p_listen = [\"/ip4/127.0.0.1/tcp/{}\"]\nbootstrap = [{bootstrap}]\n{}",
        ports.udp,
        ports.admin,
        dir.join(format!("node{index}.sock")).display(),
        key_path.display(),
        ports.p2p,
        chain.map(LocalChain::control_config).unwrap_or_default(),
    );
    let config_path = dir.join(format!("node{index}.toml"));
    write_key_file(&config_path, &config)?;
    let log_path = dir.join(format!("node{index}.log"));
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let executable = std::env::current_exe().map_err(|e| format!("cannot find the runnel executable: {e}"))?;
    let mut command = Command::new(executable);
    command.args(["node", "--status-interval", "0", "--config"]).arg(&config_path).stdin(Stdio::null()).stdout(log).stderr(log_err);
    crate::supervise::die_with_parent(&mut command);
    let process = command.spawn().map_err(|e| format!("cannot start node {index}: {e}"))?;
    let p2p = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", ports.p2p, identity.peer_id());
    Ok(DevNode { process, admin: SocketAddr::from(([127, 0, 0, 1], ports.admin)), p2p })
}

/// A node's `/status`, or why not.
fn status(admin: SocketAddr) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /status HTTP/1.1\r\nHost: dev\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).ok_or("no HTTP body")?;
    serde_json::from_str(body).map_err(|e| e.to_string())
}

fn neighbor_count(status: &serde_json::Value) -> usize {
    status["neighbors"].as_array().map_or(0, Vec::len)
}

/// Waits until every node's control process drives its dataplane and has `degree`
/// neighbors; returns the seconds it took.
fn wait_for_mesh(nodes: &mut [DevNode], degree: usize, dir: &Path) -> Result<f64, String> {
    let started = Instant::now();
    loop {
        let mut meshed = true;
        for (index, node) in nodes.iter_mut().enumerate() {
            if let Ok(Some(exit)) = node.process.try_wait() {
                return Err(format!("node {index} exited ({exit}); see {}", dir.join(format!("node{index}.log")).display()));
            }
            meshed &= status(node.admin).is_ok_and(|s| s["dataplane"]["connected"] == true && neighbor_count(&s) >= degree);
        }
        if meshed {
            return Ok(started.elapsed().as_secs_f64());
        }
        if crate::signals::stop_requested() || started.elapsed() > MESH_TIMEOUT {
            return Err(format!("the nodes did not find {degree} neighbors each within {MESH_TIMEOUT:?}; logs in {}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node has read the chain up to `block` (so it holds every permission
/// the setup wrote); returns the seconds it took.
fn wait_for_chain_sync(nodes: &[DevNode], block: u64, dir: &Path) -> Result<f64, String> {
    let started = Instant::now();
    let synced = |node: &DevNode| status(node.admin).is_ok_and(|s| s["chain"]["synced_block"].as_u64().is_some_and(|b| b >= block));
    while !nodes.iter().all(synced) {
        if crate::signals::stop_requested() || started.elapsed() > MESH_TIMEOUT {
            return Err(format!(
                "the nodes did not read the local chain up to block {block} within {MESH_TIMEOUT:?}; logs in {}",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A client link from node `node`'s control process, as `runnel pub/sub --node` get theirs.
fn client_link(
    node: &DevNode,
    identity: Identity,
    part: &StreamPart,
    access: ClientAccess,
) -> Result<(runnel_client::ClientLinkConfig, ClientSession), String> {
    let source = LinkSource { link: None, node: Some(node.p2p.clone()) };
    let (link, session) = source.open(part, access, || Ok(identity))?;
    Ok((link, session.expect("--node links come with a session")))
}

/// Writes a file that holds keys: mode 0600, replacing one a previous run left.
fn write_key_file(path: &Path, text: &str) -> Result<(), String> {
    runnel_keystore::write_private_file(path, text.as_bytes(), runnel_keystore::Replace::Yes).map_err(|e| e.to_string())
}

/// The folder for configs and link files: `--dir` (created 0700 if missing), else a new
/// private folder under the temporary directory (mode 0700, a fresh random name, so no one
/// can have made it in advance).
fn private_dir(dir: Option<&Path>) -> Result<PathBuf, String> {
    match dir {
        Some(dir) => {
            runnel_keystore::create_private_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            Ok(dir.to_path_buf())
        }
        None => runnel_keystore::create_private_temp_dir("runnel-dev-")
            .map_err(|e| format!("cannot create a folder in {}: {e}", std::env::temp_dir().display())),
    }
}

/// What the subscribers saw, merged; fixed memory however long `runnel dev` runs.
#[derive(Default)]
struct Tally {
    /// Every delivery, including duplicates, late ones and untracked ones.
    delivered: u64,
    duplicates: u64,
    /// Deliveries below their chain's loss window: too old to tell first from duplicate.
    late: u64,
    /// Deliveries of chains beyond [`LOSS_WINDOWS_MAX`]: counted here only.
    untracked: u64,
    /// (subscriber, publisher, chain) → which recent sequences arrived, and the loss so far.
    windows: HashMap<(usize, [u8; 20], u64), LossWindow>,
    /// Latencies since the last per-second line; merged into `latency_total` at each line.
    latency_window: LatencyHistogram,
    latency_total: LatencyHistogram,
}

/// Most (subscriber, publisher, chain) loss windows kept (8 KiB each): our publisher has
/// one chain per subscriber; the rest are people's own publishers on the dev stream.
const LOSS_WINDOWS_MAX: usize = 256;

impl Tally {
    fn record(&mut self, subscriber: usize, publisher: [u8; 20], chain: u64, sequence: u64, latency_us: u64) {
        self.delivered += 1;
        self.latency_window.record(latency_us);
        let key = (subscriber, publisher, chain);
        let windows_len = self.windows.len();
        let window = match self.windows.get_mut(&key) {
            Some(window) => window,
            None if windows_len < LOSS_WINDOWS_MAX => self.windows.entry(key).or_default(),
            None => {
                self.untracked += 1;
                return;
            }
        };
        match window.record(sequence) {
            Arrival::First => {}
            Arrival::Duplicate => self.duplicates += 1,
            Arrival::Late => self.late += 1,
        }
    }

    /// p50 and p99 since the last call; folds them into the totals.
    fn take_window_percentiles(&mut self) -> (u64, u64) {
        let percentiles = (self.latency_window.percentile_us(0.5), self.latency_window.percentile_us(0.99));
        self.latency_total.merge(&self.latency_window);
        self.latency_window.clear();
        percentiles
    }

    /// Messages of `origin`'s chain (`published` of them) that some subscriber never got
    /// while they were inside its loss window.
    fn lost(&self, subscribers: usize, origin: ([u8; 20], u64), published: u64) -> u64 {
        (0..subscribers)
            .map(|subscriber| self.windows.get(&(subscriber, origin.0, origin.1)).map_or(published, |w| w.lost_at_end(published)))
            .sum()
    }
}

pub fn run(args: DevArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        return Err(format!("--nodes {}: use 1..={NODES_MAX}", args.nodes));
    }
    if args.size < 8 {
        return Err("--size must be at least 8 bytes (the payload carries its send time)".into());
    }
    let dir = private_dir(args.dir.as_deref())?;
    let part = StreamPart::parse(DEV_STREAM).expect("valid constant");
    // The publisher's key comes first: the local chain grants it Publish.
    let publisher_key = PublisherKey::generate();
    let chain = if args.no_chain {
        None
    } else {
        let chain = LocalChain::start(publisher_key.address().into())?;
        if chain.stream != part.stream_id() {
            return Err(format!("local chain: created stream {} where {} was expected", chain.stream, part.stream_id()));
        }
        logln!(
            "runnel dev: local chain (anvil) at {} in {:.2} s: StreamRegistryV5 {:#x}, DATAv2 {:#x}, RunnelSettlement {:#x} \
             holding {} DATA for the stream; {}: Subscribe public, Publish only for the dev publisher {}",
            chain.endpoint(),
            chain.setup_s,
            chain.deployment.registry,
            chain.deployment.token,
            chain.settlement,
            chain.json()["sponsorship_data"],
            chain.stream,
            runnel_proto::crypto::address_hex(&publisher_key.address()),
        );
        Some(chain)
    };
    let (udp, admin, p2p) = (free_ports(args.nodes, true)?, free_ports(args.nodes, false)?, free_ports(args.nodes, false)?);
    let mut nodes: Vec<DevNode> = Vec::new();
    for index in 0..args.nodes {
        let ports = NodePorts { udp: udp[index], admin: admin[index], p2p: p2p[index] };
        let bootstrap = nodes.first().map(|first| first.p2p.clone());
        nodes.push(start_node(&dir, index, &ports, bootstrap.as_deref(), chain.as_ref())?);
    }
    let stream_key = part.key();
    // The overlay's target is 4; a smaller network can give each node only n − 1.
    let degree = (args.nodes - 1).min(3);
    logln!(
        "runnel dev: {} node(s) on 127.0.0.1 (dataplane ports {udp:?}), node 0 the bootstrap peer; configs, keys and logs in {}",
        args.nodes,
        dir.display()
    );
    let mesh_s = wait_for_mesh(&mut nodes, degree, &dir)?;
    let degrees: Vec<usize> = nodes.iter().map(|node| status(node.admin).map_or(0, |s| neighbor_count(&s))).collect();
    logln!("runnel dev: the nodes found each other over libp2p in {mesh_s:.2} s; neighbors per node {degrees:?}");
    let chain_sync_s = match &chain {
        Some(chain) => {
            let seconds = wait_for_chain_sync(&nodes, chain.ready_block, &dir)?;
            logln!("runnel dev: every node follows the registry (block {} read {seconds:.2} s after the mesh)", chain.ready_block);
            Some(seconds)
        }
        None => None,
    };
    logln!("runnel dev: attach: runnel sub --node {} --stream '{DEV_STREAM}'", nodes[nodes.len() - 1].p2p);
    logln!("runnel dev: status: curl http://{}/status (and /metrics)", nodes[0].admin);
    let subscriber_nodes: Vec<usize> = if args.nodes == 1 { vec![0] } else { (1..args.nodes).collect() };
    let mut sessions = Vec::new();
    let mut subscriber_links = Vec::new();
    for &index in &subscriber_nodes {
        let (link, session) = client_link(&nodes[index], Identity::generate(), &part, ClientAccess::Subscribe)?;
        subscriber_links.push(link);
        sessions.push(session);
    }

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let subscribers_stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut threads = Vec::new();
    for (index, link) in subscriber_links.iter().enumerate() {
        let link = link.clone();
        let stop = subscribers_stop.clone();
        let tally = tally.clone();
        let mut client = UdpClient::connect_with(&link, ClientOptions { verify: false, ..ClientOptions::default() })
            .map_err(|e| format!("subscriber link: {e}"))?;
        client.subscribe(&stream_key).map_err(|e| format!("subscribe: {e}"))?;
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut local: Vec<(u64, [u8; 20], u64, u64)> = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                local.clear();
                client
                    .recv(Duration::from_millis(50), |delivery| {
                        let sent_us = u64::from_le_bytes(delivery.payload[..8].try_into().unwrap_or([0; 8]));
                        let latency_us = (epoch.elapsed().as_micros() as u64).saturating_sub(sent_us);
                        local.push((delivery.sequence, delivery.publisher, delivery.chain_id, latency_us));
                    })
                    .map_err(|e| format!("receive: {e}"))?;
                let mut tally = tally.lock().expect("no panics while holding the tally");
                for &(sequence, publisher, chain, latency_us) in &local {
                    tally.record(index, publisher, chain, sequence, latency_us);
                }
            }
            Ok(())
        }));
    }
    // Give the overlay a moment: subscriptions propagate on the first Subscribe, and
    // neighbors start sending each other data on their first Subscribe refresh.
    std::thread::sleep(Duration::from_millis(1200));

    let published = Arc::new(AtomicU64::new(0));
    // Our publisher's address and chain: the one whose losses count.
    let origin: ([u8; 20], u64);
    let publisher_identity = identity_of(&publisher_key)?;
    let (publisher_link, publisher_session) = client_link(&nodes[0], publisher_identity, &part, ClientAccess::Publish)?;
    sessions.push(publisher_session);
    let publisher = {
        let link = publisher_link;
        let stop = stop.clone();
        let published = published.clone();
        let (rate, size, signing) = (args.rate, args.size, args.signatures.mode());
        let options = ClientOptions { publisher_key: Some(publisher_key), signing, verify: false, gso: true };
        let mut client = UdpClient::connect_with(&link, options).map_err(|e| format!("publisher link: {e}"))?;
        let chain = client.publisher(&stream_key).map_err(|e| format!("publisher: {e}"))?;
        origin = (chain.address(), chain.chain_id());
        // Signs and sends as soon as it is free; lingers 200 ms at the end to answer NAKs and
        // probe the tail (the node may still be repairing).
        let thread = PublisherThread::spawn(client, Duration::from_millis(200)).map_err(|e| format!("publisher thread: {e}"))?;
        std::thread::spawn(move || -> Result<(), String> {
            let mut payload = vec![0u8; size];
            let mut pacer = Pacer::new(rate);
            while !stop.load(Ordering::Relaxed) {
                payload[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_le_bytes());
                if thread.publish(&stream_key, &Outgoing::binary(runnel_client::unix_time_ms(), &payload)).is_err() {
                    break;
                }
                published.fetch_add(1, Ordering::Relaxed);
                pacer.after_one();
            }
            thread.finish().map(drop).map_err(|e| format!("send: {e}"))
        })
    };

    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs_f64(s));
    let live = std::io::stderr().is_terminal();
    let (mut last_published, mut last_delivered, mut last_tick) = (0u64, 0u64, Instant::now());
    while !crate::signals::stop_requested() && deadline.is_none_or(|d| Instant::now() < d) && !publisher.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        if last_tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let seconds = last_tick.elapsed().as_secs_f64();
        last_tick = Instant::now();
        let now_published = published.load(Ordering::Relaxed);
        let (now_delivered, (p50_us, p99_us)) = {
            let mut tally = tally.lock().expect("no panics while holding the tally");
            (tally.delivered, tally.take_window_percentiles())
        };
        let line = format!(
            "published {:>9.0}/s  delivered {:>9.0}/s  latency p50 {:>6} µs  p99 {:>6} µs  (totals: {} published, {} delivered)",
            (now_published - last_published) as f64 / seconds,
            (now_delivered - last_delivered) as f64 / seconds,
            p50_us,
            p99_us,
            now_published,
            now_delivered
        );
        if live {
            eprint!("\r{line}   ");
        } else {
            logln!("{line}");
        }
        (last_published, last_delivered) = (now_published, now_delivered);
    }
    if live {
        logln!();
    }
    stop.store(true, Ordering::Relaxed);
    let publisher_result = publisher.join().map_err(|_| "publisher thread panicked".to_string())?;
    // Let the last datagrams arrive (and any repairs finish) before counting.
    std::thread::sleep(Duration::from_millis(500));
    subscribers_stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().map_err(|_| "subscriber thread panicked".to_string())??;
    }
    publisher_result?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let published = published.load(Ordering::Relaxed);
    let mut tally = Arc::try_unwrap(tally).map_err(|_| "tally still shared")?.into_inner().map_err(|_| "tally poisoned")?;
    tally.take_window_percentiles();
    let lost = tally.lost(subscriber_links.len(), origin, published);
    let (p50_us, p99_us) = (tally.latency_total.percentile_us(0.5), tally.latency_total.percentile_us(0.99));
    // Every node's dataplane counters, summed, from its control process's /status.
    let mut node_counters: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut neighbors = Vec::new();
    let mut synced_blocks = Vec::new();
    for node in &nodes {
        let status = status(node.admin).map_err(|e| format!("node status at the end: {e}"))?;
        neighbors.push(neighbor_count(&status));
        synced_blocks.push(status["chain"]["synced_block"].clone());
        for (name, value) in status["counters"].as_object().into_iter().flatten() {
            *node_counters.entry(name.clone()).or_default() += value.as_u64().unwrap_or(0);
        }
    }
    drop(sessions);
    drop(nodes);
    let summary = json!({
        "nodes": args.nodes,
        "subscribers": subscriber_links.len(),
        "seconds_to_mesh": mesh_s,
        "neighbors": neighbors,
        "duration_s": elapsed_s,
        "published": published,
        "delivered": tally.delivered,
        "duplicates_delivered": tally.duplicates,
        "late_delivered": tally.late,
        "untracked_delivered": tally.untracked,
        "lost": lost,
        "published_per_s": published as f64 / elapsed_s,
        "delivered_per_s": tally.delivered as f64 / elapsed_s,
        "latency_us_p50": p50_us,
        "latency_us_p99": p99_us,
        "chain": chain.as_ref().map(|chain| {
            let mut json = chain.json();
            json["seconds_to_sync"] = json!(chain_sync_s);
            json["node_synced_blocks"] = json!(synced_blocks);
            json
        }),
        "node_counters": node_counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    // The chain outlives the nodes: they follow it until they stop.
    drop(chain);
    if args.json {
        println!("{summary}");
    } else {
        logln!(
            "runnel dev: {published} published, {} delivered to {} subscriber(s), {} duplicates, {} late, {lost} lost; latency p50 {} µs, p99 {} µs",
            tally.delivered,
            subscriber_links.len(),
            tally.duplicates,
            tally.late,
            p50_us,
            p99_us
        );
    }
    Ok(())
}
