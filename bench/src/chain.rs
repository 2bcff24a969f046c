//! `runnel bench chain`: what reading permissions from the chain costs, and how fast a
//! revocation bites.
//!
//! Three parts, each against a peer measured in the same run:
//!
//! 1. **Fast-path cost** ([`fast_path`]): the sans-I/O relay core (filter and relay, as a
//!    shard runs them; verify = all, batch signatures, 64 B payloads) handles the same signed
//!    datagrams with the stream part public and restricted. Restricted, every datagram's
//!    publisher is looked up in the permission table (the chain's cache, filled by the
//!    control process), which also holds [`OTHER_PUBLISHERS`] other permits. Rounds
//!    alternate public and restricted; the report gives the median ns/message of each and
//!    their ratio. After the rounds, a datagram of an unpermitted publisher is fed to the
//!    restricted core and must be counted as `datagrams_not_permitted`, or the run fails: the
//!    lookup was really on the path.
//! 2. **Revocation latency** ([`revocations`]): anvil (auto-mining) with the StreamRegistryV5;
//!    one `runnel node` (dataplane and control process, following the registry every
//!    `--chain-poll-ms`), a publisher on a client link sending one signed message per
//!    millisecond, numbered, and a subscriber on the node. Each cycle grants Publish, checks
//!    that messages arrive, then revokes: the first message rejected is the one after the last
//!    the subscriber got (and the node's `not_permitted` counters must rise, so it was
//!    rejected, not lost). Reported: from sending the revoke (its block is mined on arrival)
//!    and from its receipt to the send time of that first rejected message, min/median/max. The bound is the poll interval: the follower sees the block
//!    on its next poll (mean half an interval) and the policy is one IPC round trip behind.
//! 3. **Gas** ([`gas`]): RunnelSettlement on anvil: a commit of an earnings tree of N accounts
//!    and a withdrawal with its proof, against a plain DATA `transfer` (what paying one node
//!    directly costs) from the same chain.

use crate::fanout::runnel_binary;
use crate::process::{free_tcp_port, free_udp_ports, wait_for_tcp, ChildGuard};
use crate::{BenchError, WorkDir};
use alloy::primitives::{Address, U256};
use runnel_chain::anvil::{Anvil, AnvilOptions};
use runnel_chain::contracts::{deploy_local, IDataToken};
use runnel_chain::merkle::EarningsTree;
use runnel_chain::registry::{Access, Registry};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_chain::settlement::Settlement;
use runnel_client::{ClientLinkConfig, ClientOptions, UdpClient};
use runnel_core::client::{Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::filter::FilterUpdate;
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
use runnel_core::relay::{Relay, RelayConfig};
use runnel_peering::client::ClientSession;
use runnel_peering::wire::ClientAccess;
use runnel_peering::Identity;
use runnel_proto::crypto::PublisherKey;
use runnel_proto::frame::split_frames;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{self, DatagramBuilder, HeaderFields, Kind, FLAG_SINGLE_PUBLISHER};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Permits in the restricted part's table besides the publisher's own.
pub const OTHER_PUBLISHERS: usize = 10_000;
/// How long a node gets to start, mesh with nothing, and read the chain.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a revocation may take before the run fails.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// Messages per fast-path round.
    pub messages: u64,
    /// Fast-path rounds per variant.
    pub rounds: usize,
    /// Grant/revoke cycles.
    pub revokes: usize,
    /// The node's registry poll interval (`[control] chain_poll_ms`).
    pub chain_poll_ms: u64,
    /// Accounts in the settlement trees whose commit and withdrawal gas is measured.
    pub tree_sizes: Vec<usize>,
    /// The `runnel` binary started as `runnel node --config FILE`; default: this executable.
    pub runnel_binary: Option<PathBuf>,
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self { messages: 200_000, rounds: 5, revokes: 5, chain_poll_ms: 250, tree_sizes: vec![1, 10, 100, 1000], runnel_binary: None }
    }
}

/// Fast-path cost of the permission lookup.
#[derive(Clone, Debug)]
pub struct FastPath {
    pub messages: u64,
    pub public_ns_per_message: f64,
    pub restricted_ns_per_message: f64,
}

/// One grant/revoke cycle.
#[derive(Clone, Copy, Debug)]
pub struct Revocation {
    pub block: u64,
    /// From sending the revoke to the node's first dropped datagram.
    pub from_send_ms: f64,
    /// From the revoke's receipt to the node's first dropped datagram.
    pub from_receipt_ms: f64,
}

/// Gas of one tree size.
#[derive(Clone, Copy, Debug)]
pub struct TreeGas {
    pub accounts: usize,
    pub commit_gas: u64,
    /// The longest proof among the withdrawals measured, and the most gas one of them used.
    pub proof_length: usize,
    pub withdraw_gas: u64,
}

#[derive(Clone, Debug)]
pub struct ChainReport {
    pub fast_path: FastPath,
    pub chain_poll_ms: u64,
    pub revocations: Vec<Revocation>,
    pub transfer_gas: u64,
    pub trees: Vec<TreeGas>,
}

pub fn chain(options: ChainOptions) -> Result<ChainReport, BenchError> {
    if options.rounds == 0 || options.messages == 0 || options.revokes == 0 {
        return Err(BenchError::new("--rounds, --messages and --revokes must be at least 1"));
    }
    let fast_path = fast_path(options.messages, options.rounds)?;
    let revocations = revocations(&options)?;
    let (transfer_gas, trees) = gas(&options.tree_sizes)?;
    Ok(ChainReport { fast_path, chain_poll_ms: options.chain_poll_ms, revocations, transfer_gas, trees })
}

// ---- 1. Fast path ---------------------------------------------------------------------------

const PUBLISHER_LINK: u32 = 1;
const SUBSCRIBER_LINK: u32 = 2;
const NEIGHBOR_LINK: u32 = 3;

fn link(id: u32, key: LinkKey, role: LinkRole, peer: Option<SocketAddr>) -> LinkConfig {
    LinkConfig { id, peer_link_id: None, key, role, peer, peer_shards: 1, rate_datagrams_per_s: 0, burst_datagrams: 1 }
}

/// Signed single-publisher datagrams of `count` batch-signed 64 B messages on the publisher
/// link, as a client packs them.
fn signed_datagrams(key: PublisherKey, part: StreamPartKey, link_key: &LinkKey, count: u64, first_seq: u64) -> (Vec<Vec<u8>>, u64) {
    let mut publisher = Publisher::with_chain_id(key, part, SigningMode::Batch { frames_per_root_max: 64 }, 5);
    let address = publisher.address();
    let header = |link_seq| HeaderFields {
        flags: FLAG_SINGLE_PUBLISHER,
        publisher: address,
        ..HeaderFields::new(Kind::Data, PUBLISHER_LINK, link_seq, part.0)
    };
    let payload = [7u8; 64];
    let (mut datagrams, mut frames) = (Vec::new(), 0u64);
    let mut builder = DatagramBuilder::new(wire::DATAGRAM_LENGTH_DEFAULT);
    let mut published = 0;
    while published < count {
        let step = (count - published).min(10_000);
        for _ in 0..step {
            publisher.publish(&Outgoing::binary(1, &payload)).expect("a 64 B message fits");
        }
        publisher.flush();
        published += step;
        frames += publisher.frame_count() as u64;
        for frame in split_frames(publisher.frames()) {
            let frame = frame.expect("the publisher writes valid frames").bytes;
            if !builder.try_push(frame) {
                datagrams.push(builder.finish(header(first_seq + datagrams.len() as u64), link_key).to_vec());
                builder.reset();
                assert!(builder.try_push(frame), "a frame fits an empty datagram");
            }
        }
        publisher.clear_frames();
    }
    datagrams.push(builder.finish(header(first_seq + datagrams.len() as u64), link_key).to_vec());
    (datagrams, frames)
}

/// A relay core with a subscriber and a neighbor on `part`; restricted to `permitted` (and
/// [`OTHER_PUBLISHERS`] others) when given.
fn relay(part: StreamPartKey, permitted: Option<[u8; 20]>, keys: [&LinkKey; 3]) -> Relay {
    let mut relay = Relay::new(RelayConfig::new(0, 1, wire::DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::All));
    let neighbor: SocketAddr = "127.0.0.9:9".parse().expect("an address");
    relay.add_link(&link(PUBLISHER_LINK, *keys[0], LinkRole::Client, None));
    relay.add_link(&link(SUBSCRIBER_LINK, *keys[1], LinkRole::Client, None));
    relay.add_link(&link(NEIGHBOR_LINK, *keys[2], LinkRole::Neighbor, Some(neighbor)));
    relay.join(0, part);
    if let Some(publisher) = permitted {
        relay.apply_filter_update(&FilterUpdate::SetRestricted { part, restricted: true });
        let mut other = [0u8; 20];
        for index in 0..OTHER_PUBLISHERS {
            other[..8].copy_from_slice(&(index as u64 + 1).to_be_bytes());
            relay.apply_filter_update(&FilterUpdate::Permit { part, publisher: other, until_ns: u64::MAX });
        }
        relay.apply_filter_update(&FilterUpdate::Permit { part, publisher, until_ns: u64::MAX });
    }
    let header = |kind, link_id| HeaderFields::new(kind, link_id, 0, part.0);
    let subscriber_from: SocketAddr = "127.0.0.1:2".parse().expect("an address");
    let mut subscribe = DatagramBuilder::new(wire::HEADER_LENGTH + 1);
    relay.handle_receive(0, subscriber_from, subscribe.finish(header(Kind::Subscribe, SUBSCRIBER_LINK), keys[1]));
    let mut subscribe = DatagramBuilder::new(wire::HEADER_LENGTH + 1);
    relay.handle_receive(0, neighbor, subscribe.finish(header(Kind::Subscribe, NEIGHBOR_LINK), keys[2]));
    relay
}

/// Feeds `datagrams` through `relay` as a shard does (flush and drain every 16); ns elapsed.
fn run_relay(relay: &mut Relay, datagrams: &[Vec<u8>]) -> u128 {
    let from: SocketAddr = "127.0.0.1:1".parse().expect("an address");
    let mut buffer = Vec::new();
    let started = Instant::now();
    for (index, datagram) in datagrams.iter().enumerate() {
        relay.handle_receive(1 + index as u64, from, datagram);
        if index % 16 == 15 {
            relay.flush();
            while relay.poll_transmit(&mut buffer).is_some() {}
        }
    }
    relay.flush();
    while relay.poll_transmit(&mut buffer).is_some() {}
    started.elapsed().as_nanos()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn fast_path(messages: u64, rounds: usize) -> Result<FastPath, BenchError> {
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/bench-chain#0").expect("a valid part").key();
    let keys = [LinkKey([1; 32]), LinkKey([2; 32]), LinkKey([3; 32])];
    let publisher_key = PublisherKey::generate();
    let address = publisher_key.address();
    let (datagrams, frames) = signed_datagrams(publisher_key, part, &keys[0], messages, 1);
    let (mut public, mut restricted) = (Vec::new(), Vec::new());
    let mut last_restricted = None;
    for _ in 0..rounds {
        for permitted in [None, Some(address)] {
            let mut core = relay(part, permitted, [&keys[0], &keys[1], &keys[2]]);
            let ns = run_relay(&mut core, &datagrams);
            let accepted = core.counters().get(Counter::FramesAccepted);
            if accepted != frames {
                return Err(BenchError::new(format!(
                    "fast path: {accepted} of {frames} frames accepted (restricted: {})",
                    permitted.is_some()
                )));
            }
            let per_message = ns as f64 / messages as f64;
            if permitted.is_some() {
                restricted.push(per_message);
                last_restricted = Some(core);
            } else {
                public.push(per_message);
            }
        }
    }
    // The lookup was on the path: an unpermitted publisher's datagram is dropped and counted.
    let mut core = last_restricted.expect("at least one round");
    let next = datagrams.len() as u64 + 1;
    let (stranger, _) = signed_datagrams(PublisherKey::generate(), part, &keys[0], 1, next);
    let before = core.counters().get(Counter::DatagramsNotPermitted);
    core.handle_receive(next, "127.0.0.1:1".parse().expect("an address"), &stranger[0]);
    if core.counters().get(Counter::DatagramsNotPermitted) != before + 1 {
        return Err(BenchError::new("fast path: the restricted core did not drop an unpermitted publisher's datagram"));
    }
    Ok(FastPath { messages, public_ns_per_message: median(&mut public), restricted_ns_per_message: median(&mut restricted) })
}

// ---- 2. Revocation latency ------------------------------------------------------------------

/// One `runnel node` with a control process that follows the registry.
struct ChainNode {
    _process: ChildGuard,
    admin: SocketAddr,
    p2p: String,
}

fn status(admin: SocketAddr) -> Result<Value, String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /status HTTP/1.1\r\nHost: bench\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).ok_or("no HTTP body")?;
    serde_json::from_str(body).map_err(|e| e.to_string())
}

fn synced_block(node: &ChainNode) -> u64 {
    status(node.admin).ok().and_then(|s| s["chain"]["synced_block"].as_u64()).unwrap_or(0)
}

/// Datagrams the node dropped for a missing Publish permission, in XDP or userspace.
fn not_permitted(node: &ChainNode) -> Result<u64, BenchError> {
    let status = status(node.admin).map_err(|e| BenchError::new(format!("node status: {e}")))?;
    let counters = &status["counters"];
    Ok(["xdp_not_permitted", "datagrams_not_permitted", "frames_not_permitted"].iter().map(|n| counters[*n].as_u64().unwrap_or(0)).sum())
}

fn private_file(path: &std::path::Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::new(format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| BenchError::new(format!("{}: {e}", path.display())))
}

fn start_node(
    options: &ChainOptions,
    dir: &WorkDir,
    part: &str,
    rpc: &str,
    registry: Address,
    from_block: u64,
) -> Result<ChainNode, BenchError> {
    let identity = Identity::generate();
    let key_file = dir.0.join("node.key");
    private_file(&key_file, &format!("{}\n", identity.publisher_key().secret_hex()))?;
    let (udp, admin, p2p) = (free_udp_ports(1)?, free_tcp_port()?, free_tcp_port()?);
    let config = dir.0.join("node.toml");
    private_file(
        &config,
        &format!(
            "[node]\nlisten = \"127.0.0.1:{udp}\"\nshards = 1\nverify = \"all\"\n\n[control]\nadmin = \"127.0.0.1:{admin}\"\njoin = [\"{part}\"]\n\
             ipc = \"{}\"\nkey_file = \"{}\"\np2p_listen = [\"/ip4/127.0.0.1/tcp/{p2p}\"]\nbootstrap = []\n\
             chain_rpc = \"{rpc}\"\nregistry = \"{registry:#x}\"\nregistry_block = {from_block}\nchain_poll_ms = {}\n",
            dir.0.join("node.sock").display(),
            key_file.display(),
            options.chain_poll_ms,
        ),
    )?;
    let mut command = std::process::Command::new(runnel_binary(options.runnel_binary.as_deref())?);
    command.args(["node", "--status-interval", "0", "--config"]).arg(&config);
    let log = dir.0.join("node.log");
    let mut process = ChildGuard::spawn("runnel node", command, &log)?;
    wait_for_tcp(admin, READY_TIMEOUT)?;
    process.check_running(&log)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    Ok(ChainNode { _process: process, admin, p2p: format!("/ip4/127.0.0.1/tcp/{p2p}/p2p/{}", identity.peer_id()) })
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool, BenchError>) -> Result<(), BenchError> {
    let started = Instant::now();
    while !done()? {
        if started.elapsed() > timeout {
            return Err(BenchError::new(format!("{what}: not within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn chain_error(what: &'static str) -> impl Fn(runnel_chain::ChainError) -> BenchError {
    move |e| BenchError::new(format!("{what}: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| BenchError::new(format!("tokio runtime: {e}")))
}

/// A client link from the node's control process, held open by its session.
fn client_link(
    node: &ChainNode,
    identity: Identity,
    part: &StreamPart,
    access: ClientAccess,
) -> Result<(ClientLinkConfig, ClientSession), BenchError> {
    let address = node.p2p.parse().map_err(|e| BenchError::new(format!("{}: {e}", node.p2p)))?;
    let session = ClientSession::open(identity, &address, part.key(), access, READY_TIMEOUT)
        .map_err(|e| BenchError::new(format!("client link ({access:?}): {e}")))?;
    Ok((session.link_config(), session))
}

/// Most messages the publisher sends (one per millisecond: over an hour).
const SEND_LOG_MAX: usize = 4_000_000;

pub fn revocations(options: &ChainOptions) -> Result<Vec<Revocation>, BenchError> {
    let dir = WorkDir::create("chain")?;
    let anvil = Anvil::start(&AnvilOptions::default()).map_err(chain_error("anvil"))?;
    let runtime = runtime()?;
    let owner = Chain::connect(&anvil.endpoint(), Some(&anvil.dev_key(0)), ChainConfig::default()).map_err(chain_error("chain"))?;
    let deployment = runtime.block_on(deploy_local(&owner)).map_err(chain_error("deploy"))?;
    let registry = Registry::new(owner.clone(), deployment.registry);
    let (stream, _) = runtime.block_on(registry.create_stream("/bench-chain", 1)).map_err(chain_error("create stream"))?;
    let part = StreamPart::new(&stream, 0).map_err(|e| BenchError::new(e.0))?;
    // Anyone may subscribe; Publish is what the cycles grant and revoke.
    let identity = Identity::generate();
    let publisher_key = PublisherKey::from_hex(&identity.publisher_key().secret_hex()).map_err(|e| BenchError::new(e.to_string()))?;
    let publisher: Address = publisher_key.address().into();
    runtime.block_on(registry.grant(&stream, None, Access::Subscribe, None)).map_err(chain_error("grant public subscribe"))?;
    let granted = runtime.block_on(registry.grant(&stream, Some(publisher), Access::Publish, None)).map_err(chain_error("grant"))?;
    let granted_block = granted.block_number.unwrap_or_default();
    let node = start_node(options, &dir, &part.to_string(), &anvil.endpoint(), deployment.registry, deployment.registry_block)?;
    wait_until("the node reads the registry", READY_TIMEOUT, || Ok(synced_block(&node) >= granted_block))?;

    // The subscriber keeps the highest sequence number it received; the publisher logs when
    // it sent each one. The first message rejected is the one after the last delivered.
    let epoch = Instant::now();
    let highest_received = Arc::new(AtomicU64::new(0));
    let send_log: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (subscriber_link, subscriber_session) = client_link(&node, Identity::generate(), &part, ClientAccess::Subscribe)?;
    let mut subscriber = UdpClient::connect_with(&subscriber_link, ClientOptions { verify: false, ..ClientOptions::default() })
        .map_err(|e| BenchError::new(format!("subscriber: {e}")))?;
    subscriber.subscribe(&part.key()).map_err(|e| BenchError::new(format!("subscribe: {e}")))?;
    let receiver = {
        let (stop, highest) = (stop.clone(), highest_received.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                subscriber
                    .recv(Duration::from_millis(20), |delivery| {
                        if let Some(sequence) = delivery.payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) {
                            highest.fetch_max(sequence, Ordering::Relaxed);
                        }
                    })
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    };
    let (publisher_link, publisher_session) = client_link(&node, identity, &part, ClientAccess::Publish)?;
    let client_options = ClientOptions { publisher_key: Some(publisher_key), signing: SigningMode::PerMessage, verify: false, gso: false };
    let mut client = UdpClient::connect_with(&publisher_link, client_options).map_err(|e| BenchError::new(format!("publisher: {e}")))?;
    let sender = {
        let (stop, key, log) = (stop.clone(), part.key(), send_log.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut sequence = 1u64;
            while !stop.load(Ordering::Relaxed) && (sequence as usize) < SEND_LOG_MAX {
                log.lock().map_err(|_| "send log poisoned")?.push(epoch.elapsed().as_nanos() as u64);
                client
                    .publish(&key, &Outgoing::binary(runnel_client::unix_time_ms(), &sequence.to_le_bytes()))
                    .map_err(|e| e.to_string())?;
                client.flush().map_err(|e| e.to_string())?;
                sequence += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };
    let sent_count = || send_log.lock().map_or(0, |log| log.len() as u64);
    let cycles = (0..options.revokes).try_fold(Vec::new(), |mut cycles, index| {
        if index > 0 {
            let granted =
                runtime.block_on(registry.grant(&stream, Some(publisher), Access::Publish, None)).map_err(chain_error("grant"))?;
            let block = granted.block_number.unwrap_or_default();
            wait_until("the node reads the grant", READY_TIMEOUT, || Ok(synced_block(&node) >= block))?;
        }
        // The grant is in force: a message sent now arrives. Then the node's counters (which
        // its status refreshes once a second) settle before the revoke.
        let mark = sent_count();
        wait_until("the granted publisher's messages arrive", READY_TIMEOUT, || Ok(highest_received.load(Ordering::Relaxed) > mark))?;
        std::thread::sleep(Duration::from_millis(1500));
        let dropped_before = not_permitted(&node)?;
        let sent_ns = epoch.elapsed().as_nanos() as u64;
        let revoked = runtime.block_on(registry.revoke(&stream, Some(publisher), Access::Publish)).map_err(chain_error("revoke"))?;
        let receipt_ns = epoch.elapsed().as_nanos() as u64;
        // The deliveries stop: nothing new for 500 ms (the publisher sends every millisecond).
        let mut last = (highest_received.load(Ordering::Relaxed), Instant::now());
        wait_until("the revoked publisher's messages stop arriving", REVOKE_TIMEOUT, || {
            let now = highest_received.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
            Ok(last.1.elapsed() > Duration::from_millis(500))
        })?;
        // ... because the node rejected them, not because they were lost.
        wait_until("the node counts the rejections", REVOKE_TIMEOUT, || Ok(not_permitted(&node)? > dropped_before))?;
        let first_rejected = last.0 + 1;
        let rejected_ns = send_log.lock().map_err(|_| BenchError::new("send log poisoned"))?[(first_rejected - 1) as usize];
        let ms = |from: u64| (rejected_ns as f64 - from as f64) / 1e6;
        cycles.push(Revocation {
            block: revoked.block_number.unwrap_or_default(),
            from_send_ms: ms(sent_ns),
            from_receipt_ms: ms(receipt_ns),
        });
        Ok::<_, BenchError>(cycles)
    });
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| BenchError::new("the publisher thread panicked"))?;
    let received = receiver.join().map_err(|_| BenchError::new("the subscriber thread panicked"))?;
    drop((publisher_session, subscriber_session));
    let cycles = cycles?;
    sent.map_err(|e| BenchError::new(format!("publisher: {e}")))?;
    received.map_err(|e| BenchError::new(format!("subscriber: {e}")))?;
    Ok(cycles)
}

// ---- 3. Gas ---------------------------------------------------------------------------------

/// Test accounts: 0x00…01, 0x00…02, …
fn account(index: usize) -> Address {
    let mut bytes = [0u8; 20];
    bytes[12..].copy_from_slice(&(index as u64 + 1).to_be_bytes());
    Address::from(bytes)
}

pub fn gas(tree_sizes: &[usize]) -> Result<(u64, Vec<TreeGas>), BenchError> {
    let anvil = Anvil::start(&AnvilOptions::default()).map_err(chain_error("anvil"))?;
    let runtime = runtime()?;
    let owner = Chain::connect(&anvil.endpoint(), Some(&anvil.dev_key(0)), ChainConfig::default()).map_err(chain_error("chain"))?;
    runtime.block_on(async {
        let deployment = deploy_local(&owner).await.map_err(chain_error("deploy"))?;
        let token = IDataToken::new(deployment.token, owner.provider());
        let data = |n: u64| U256::from(n) * U256::from(10u64).pow(U256::from(18));
        let supply = data(1_000_000_000);
        owner
            .send("mint DATA", token.mint(owner.sender().map_err(chain_error("sender"))?, supply).into_transaction_request())
            .await
            .map_err(chain_error("mint"))?;
        // The peer: paying one node directly, an ERC-20 transfer to an account that holds none.
        let transfer = owner
            .send("transfer DATA", token.transfer(account(usize::MAX >> 1), data(1)).into_transaction_request())
            .await
            .map_err(chain_error("transfer"))?;
        let mut trees = Vec::new();
        for &accounts in tree_sizes {
            if accounts == 0 {
                return Err(BenchError::new("--tree-sizes: a tree has at least one account"));
            }
            let operator = owner.sender().map_err(chain_error("sender"))?;
            let (settlement, _) =
                Settlement::deploy(&owner, deployment.token, operator, 0).await.map_err(chain_error("deploy settlement"))?;
            let tree =
                EarningsTree::new((0..accounts).map(|index| (account(index), data(1 + index as u64)))).map_err(chain_error("tree"))?;
            settlement.fund("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/bench-chain", tree.total()).await.map_err(chain_error("fund"))?;
            let commit = settlement.commit(1, &tree).await.map_err(chain_error("commit"))?;
            // Withdraw for the first, the middle and the last account: proofs of every depth the tree has.
            let (mut proof_length, mut withdraw_gas) = (0, 0);
            for index in [0, accounts / 2, accounts - 1] {
                let who = account(index);
                if settlement.withdrawn(who).await.map_err(chain_error("withdrawn"))? > U256::ZERO {
                    continue;
                }
                let proof = tree.proof(who).expect("a leaf of the tree");
                let amount = tree.amount(who).expect("a leaf of the tree");
                let receipt = settlement.withdraw(1, who, amount, &proof).await.map_err(chain_error("withdraw"))?;
                proof_length = proof_length.max(proof.len());
                withdraw_gas = withdraw_gas.max(receipt.gas_used);
            }
            trees.push(TreeGas { accounts, commit_gas: commit.gas_used, proof_length, withdraw_gas });
        }
        Ok((transfer.gas_used, trees))
    })
}

// ---- Report ---------------------------------------------------------------------------------

fn spread(values: impl Iterator<Item = f64>) -> Value {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    json!({ "min": values[0], "median": values[values.len() / 2], "max": values[values.len() - 1] })
}

impl ChainReport {
    pub fn to_json(&self) -> Value {
        let fast = &self.fast_path;
        json!({
            "benchmark": "chain",
            "fast_path": {
                "messages": fast.messages,
                "other_permits": OTHER_PUBLISHERS,
                "public_ns_per_message": fast.public_ns_per_message,
                "restricted_ns_per_message": fast.restricted_ns_per_message,
                "restricted_over_public": fast.restricted_ns_per_message / fast.public_ns_per_message,
            },
            "revocation": {
                "chain_poll_ms": self.chain_poll_ms,
                "cycles": self.revocations.len(),
                "from_send_ms": spread(self.revocations.iter().map(|r| r.from_send_ms)),
                "from_receipt_ms": spread(self.revocations.iter().map(|r| r.from_receipt_ms)),
                "median_over_poll_interval": spread(self.revocations.iter().map(|r| r.from_send_ms / self.chain_poll_ms as f64))["median"],
            },
            "gas": {
                "transfer": self.transfer_gas,
                "trees": self.trees.iter().map(|t| json!({
                    "accounts": t.accounts,
                    "commit": t.commit_gas,
                    "withdraw": t.withdraw_gas,
                    "proof_length": t.proof_length,
                    "withdraw_over_transfer": t.withdraw_gas as f64 / self.transfer_gas as f64,
                    "commit_over_transfers": t.commit_gas as f64 / (self.transfer_gas as f64 * t.accounts as f64),
                })).collect::<Vec<_>>(),
            },
        })
    }

    pub fn table(&self) -> String {
        let fast = &self.fast_path;
        let mut out = format!(
            "fast path (relay core, verify all, batch, 64 B, {} messages, median of rounds):\n  public {:.0} ns/message, restricted ({} other permits) {:.0} ns/message: ratio {:.3}\n",
            fast.messages,
            fast.public_ns_per_message,
            OTHER_PUBLISHERS,
            fast.restricted_ns_per_message,
            fast.restricted_ns_per_message / fast.public_ns_per_message
        );
        let json = self.to_json();
        let revocation = &json["revocation"];
        out += &format!(
            "revocation (chain_poll_ms {}, {} cycles): first rejection {} ms after sending the revoke, {} ms after its receipt\n",
            self.chain_poll_ms,
            self.revocations.len(),
            show_spread(&revocation["from_send_ms"]),
            show_spread(&revocation["from_receipt_ms"]),
        );
        out += &format!(
            "gas: DATA transfer {}\n  accounts   commit   withdraw  proof  withdraw/transfer  commit/(N transfers)\n",
            self.transfer_gas
        );
        for t in &self.trees {
            out += &format!(
                "  {:>8} {:>8} {:>10} {:>6} {:>18.2} {:>21.3}\n",
                t.accounts,
                t.commit_gas,
                t.withdraw_gas,
                t.proof_length,
                t.withdraw_gas as f64 / self.transfer_gas as f64,
                t.commit_gas as f64 / (self.transfer_gas as f64 * t.accounts as f64)
            );
        }
        out
    }
}

fn show_spread(value: &Value) -> String {
    let get = |key: &str| value[key].as_f64().unwrap_or(f64::NAN);
    format!("{:.0}/{:.0}/{:.0} (min/median/max)", get("min"), get("median"), get("max"))
}
