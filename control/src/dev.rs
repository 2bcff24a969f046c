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
mod loss_window;

use self::latency_histogram::LatencyHistogram;
use self::loss_window::{Arrival, LossWindow};
use crate::pubsub::{Pacer, Signatures};
use runnel_client::{ClientLinkConfig, ClientOptions, Outgoing, PublisherThread, UdpClient};
use runnel_node::config::{NodeConfig, VerifyPolicy};
use runnel_node::node::{Node, NodeHandle};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::stream::StreamPart;
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::io::IsTerminal;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
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
}

/// Link ids in the generated network: neighbor edges are 1.., clients 1000+.
const PUBLISHER_LINK_ID: u32 = 1000;
const SUBSCRIBER_LINK_ID_BASE: u32 = 2000;
const USER_LINK_ID_BASE: u32 = 3000;
/// Most nodes `runnel dev` starts (each takes one loopback port and one thread).
const NODES_MAX: usize = 64;

/// A stream part of anvil's account 0 (the owner is only a name until the chain issue).
pub const DEV_STREAM: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/runnel-dev#0";

/// Free loopback UDP ports, found by binding port 0 (the OS picks), then released.
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let sockets: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free loopback port: {e}")))
        .collect::<Result<_, _>>()?;
    sockets.iter().map(|s| s.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

/// Ring with chords: node i links to i+1 and i+2 (mod n), so degree is at most 4.
pub fn dev_edges(nodes: usize) -> Vec<(usize, usize)> {
    let mut edges = BTreeSet::new();
    for i in 0..nodes {
        for step in [1, 2] {
            let j = (i + step) % nodes;
            if i != j {
                edges.insert((i.min(j), i.max(j)));
            }
        }
    }
    edges.into_iter().collect()
}

struct Layout {
    node_configs: Vec<String>,
    publisher_link: ClientLinkConfig,
    subscriber_links: Vec<(usize, ClientLinkConfig)>,
    user_links: Vec<PathBuf>,
}

fn key_hex() -> String {
    hex::encode(crate::keygen::link_key_bytes())
}

/// Writes a file that holds link keys: mode 0600, replacing one a previous run left.
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

fn layout(nodes: usize, ports: &[u16], dir: &Path) -> Result<Layout, String> {
    let edges = dev_edges(nodes);
    let address = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let mut texts: Vec<String> =
        (0..nodes).map(|i| format!("[node]\nlisten = \"{}\"\nshards = 1\nverify = \"all\"\n", address(i))).collect();
    for (index, &(a, b)) in edges.iter().enumerate() {
        let key = key_hex();
        for (me, peer) in [(a, b), (b, a)] {
            texts[me].push_str(&format!(
                "\n[[links]]\nid = {}\nkey = \"{key}\"\nrole = \"neighbor\"\npeer = \"{}\"\npeer_shards = 1\n",
                index + 1,
                address(peer)
            ));
        }
    }
    let client_link = |node: usize, id: u32, texts: &mut Vec<String>| -> Result<ClientLinkConfig, String> {
        let key = key_hex();
        texts[node].push_str(&format!("\n[[links]]\nid = {id}\nkey = \"{key}\"\nrole = \"client\"\n"));
        ClientLinkConfig::parse(&format!("node = \"{}\"\nnode_shards = 1\nlink_id = {id}\nkey = \"{key}\"\n", address(node)))
            .map_err(|e| e.to_string())
    };
    let publisher_link = client_link(0, PUBLISHER_LINK_ID, &mut texts)?;
    let subscriber_nodes: Vec<usize> = if nodes == 1 { vec![0] } else { (1..nodes).collect() };
    let mut subscriber_links = Vec::new();
    for &node in &subscriber_nodes {
        subscriber_links.push((node, client_link(node, SUBSCRIBER_LINK_ID_BASE + node as u32, &mut texts)?));
    }
    let mut user_links = Vec::new();
    for node in 0..nodes {
        let link = client_link(node, USER_LINK_ID_BASE + node as u32, &mut texts)?;
        let path = dir.join(format!("client-node{node}.toml"));
        write_key_file(&path, &link.to_toml())?;
        user_links.push(path);
    }
    for (node, text) in texts.iter().enumerate() {
        write_key_file(&dir.join(format!("node{node}.toml")), text)?;
    }
    Ok(Layout { node_configs: texts, publisher_link, subscriber_links, user_links })
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
    let ports = free_ports(args.nodes)?;
    let layout = layout(args.nodes, &ports, &dir)?;
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for text in &layout.node_configs {
        let mut config = NodeConfig::parse(text).map_err(|e| e.to_string())?;
        config.verify = VerifyPolicy::All;
        nodes.push(Node::start(config).map_err(|e| e.to_string())?);
    }
    let part = StreamPart::parse(DEV_STREAM).expect("valid constant");
    let stream_key = part.key();
    logln!(
        "runnel dev: {} node(s) on 127.0.0.1 ports {:?}, {} link(s); publisher at node 0, subscribers at {:?}",
        args.nodes,
        ports,
        dev_edges(args.nodes).len(),
        layout.subscriber_links.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    logln!("runnel dev: configs in {}; try: runnel sub --link {} --stream '{DEV_STREAM}'", dir.display(), layout.user_links[0].display());
    logln!("runnel dev: {}", nodes[0].filter_mode());

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let subscribers_stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut threads = Vec::new();
    for (index, (_, link)) in layout.subscriber_links.iter().enumerate() {
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
    // Give the overlay a moment: subscriptions propagate on the first Subscribe.
    std::thread::sleep(Duration::from_millis(300));

    let published = Arc::new(AtomicU64::new(0));
    // Our publisher's address and chain: the one whose losses count.
    let origin: ([u8; 20], u64);
    let publisher = {
        let link = layout.publisher_link.clone();
        let stop = stop.clone();
        let published = published.clone();
        let (rate, size, signing) = (args.rate, args.size, args.signatures.mode());
        let options = ClientOptions { publisher_key: Some(PublisherKey::generate()), signing, verify: false, gso: true };
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
    let lost = tally.lost(layout.subscriber_links.len(), origin, published);
    let (p50_us, p99_us) = (tally.latency_total.percentile_us(0.5), tally.latency_total.percentile_us(0.99));
    let mut node_counters = runnel_core::counters::Counters::default();
    for node in &nodes {
        for shard in node.counters() {
            node_counters.merge(&shard);
        }
    }
    for node in nodes {
        node.stop().map_err(|e| e.to_string())?;
    }
    let summary = json!({
        "nodes": args.nodes,
        "subscribers": layout.subscriber_links.len(),
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
        "node_counters": node_counters.iter().filter(|(_, v)| *v > 0).map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    if args.json {
        println!("{summary}");
    } else {
        logln!(
            "runnel dev: {published} published, {} delivered to {} subscriber(s), {} duplicates, {} late, {lost} lost; latency p50 {} µs, p99 {} µs",
            tally.delivered,
            layout.subscriber_links.len(),
            tally.duplicates,
            tally.late,
            p50_us,
            p99_us
        );
    }
    Ok(())
}
