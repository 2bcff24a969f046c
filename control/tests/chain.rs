//! Permissions from the chain, end to end. A hub namespace holds a bridge and anvil (the
//! existing network's StreamRegistryV5 and DATAv2 deployed to it); three `runnel node`s
//! (dataplane and control process, each in its own namespace on the bridge) follow the
//! registry over JSON-RPC. The on-chain side is done the way a user does it: `runnel stream`
//! from the CLI, and once by another client (a raw `eth_sendTransaction`). Needs root.
//!
//! Phases (each check names its phase when it fails):
//! 1. the nodes mesh and sync the registry; a subscriber and a publisher without
//!    permission are refused at link time with errors that name the missing permission;
//! 2. `runnel stream grant` gives S Subscribe and K Publish: K's messages at node 0 reach S
//!    at node 2;
//! 3. `runnel stream revoke` takes K's Publish: once node 0 has read the revoke's block, K's
//!    next messages are dropped at node 0 (its filter counts them) and S gets none;
//! 4. `runnel stream grant … public publish`: a key no one ever named publishes, and S gets
//!    it;
//! 5. a Subscribe permission set by a raw JSON-RPC transaction (not Runnel's code) admits a
//!    second subscriber, who gets the next messages.
//! 6. a client link is bound to what it was admitted to: a Publish link that sends
//!    Subscribe gets nothing (the node counts the drop), a Subscribe link beside it does;
//! 7. `runnel stream revoke … subscribe` removes the second subscriber's link: it gets no
//!    more messages while S still does;
//! 8. a reorg on anvil (`evm_snapshot` … grant … `evm_revert`, `anvil_mine`) takes a grant
//!    back: node 2 rolls its book back and refuses the key it had admitted, and messages keep
//!    flowing;
//! 9. the chain goes away (anvil is stopped): the nodes keep their permissions and keep
//!    forwarding; the outage shows in their status.

use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use runnel_bench::xdp::Netns;
use runnel_chain::anvil::{Anvil, AnvilOptions};
use runnel_chain::contracts::{deploy_local, Deployment, IStreamRegistry, PermissionType};
use runnel_chain::rpc::{Chain, ChainConfig};
use runnel_client::{ClientOptions, UdpClient};
use runnel_peering::client::ClientSession;
use runnel_peering::wire::ClientAccess;
use runnel_peering::Identity;
use runnel_proto::stream::StreamPart;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

#[allow(dead_code)]
mod common;

#[path = "common/bridge.rs"]
mod bridge;

use bridge::{bridged, spawn, Bridged};
use common::{lines_of, temp_dir};

const NODES: usize = 3;
const P2P_PORT: u16 = 7600;
const DATAPLANE_PORT: u16 = 7000;
const ADMIN_PORT: u16 = 9464;
const CHAIN_IP: &str = "10.97.0.254";
const TIMEOUT: Duration = Duration::from_secs(30);
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// Settlement epoch of the nodes: short, so the test sees several reports.
const EPOCH_S: u64 = 2;

fn address(index: usize) -> String {
    format!("10.97.0.{}", index + 1)
}

fn private_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn runnel_in(netns: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_runnel")]);
    command
}

/// A key and its account, written to a 0600 file.
struct Account {
    identity: Identity,
    file: PathBuf,
}

impl Account {
    fn new(dir: &Path, name: &str) -> Account {
        let identity = Identity::generate();
        let file = dir.join(format!("{name}.key"));
        private_file(&file, &format!("{}\n", identity.publisher_key().secret_hex()));
        Account { identity, file }
    }

    fn address(&self) -> String {
        self.identity.address_hex()
    }
}

struct Node {
    index: usize,
    netns: Netns,
    _supervisor: Child,
    identity: Identity,
    log: PathBuf,
}

impl Node {
    fn p2p(&self) -> String {
        format!("/ip4/{}/tcp/{P2P_PORT}/p2p/{}", address(self.index), self.identity.peer_id())
    }

    /// A GET of the node's admin endpoint, from inside its namespace; the body.
    fn admin_get(&self, path: &'static str) -> Result<String, String> {
        let admin: SocketAddr = format!("{}:{ADMIN_PORT}", address(self.index)).parse().unwrap();
        self.netns.run(move || http_get(admin, path)).map_err(|e| e.to_string())?
    }

    fn status(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.admin_get("/status")?).map_err(|e| e.to_string())
    }

    fn synced_block(&self) -> u64 {
        self.status().ok().and_then(|s| s["chain"]["synced_block"].as_u64()).unwrap_or(0)
    }

    fn live_neighbors(&self) -> usize {
        let Ok(status) = self.status() else { return 0 };
        status["neighbors"].as_array().map_or(0, |n| n.iter().filter(|n| n["connected"] == true).count())
    }

    /// Datagrams the node dropped for a missing Publish permission: (in XDP, in userspace).
    fn not_permitted_split(&self) -> (u64, u64) {
        let Ok(status) = self.status() else { return (0, 0) };
        let counter = |name: &str| status["counters"][name].as_u64().unwrap_or(0);
        (counter("xdp_not_permitted"), counter("datagrams_not_permitted") + counter("frames_not_permitted"))
    }

    /// The XDP program is attached: its verdict counters are in the status.
    fn xdp_attached(&self) -> bool {
        self.status().is_ok_and(|status| status["counters"].get("xdp_pass").is_some())
    }

    fn not_permitted(&self) -> u64 {
        let (xdp, userspace) = self.not_permitted_split();
        xdp + userspace
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- node {} log (last 25 lines) ---\n{}", self.index, lines[lines.len().saturating_sub(25)..].join("\n"))
    }
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A GET over a bare HTTP/1.1 connection; the body.
fn http_get(address: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).ok_or_else(|| "no HTTP body".to_string())
}

fn diagnostics(nodes: &[Node]) -> String {
    nodes.iter().map(Node::log_tail).collect::<Vec<_>>().join("\n")
}

fn wait_for(what: &str, nodes: &[Node], mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < TIMEOUT, "{what}: not within {TIMEOUT:?}\n{}", diagnostics(nodes));
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// The chain side, as a user runs it: `runnel stream …` in the hub namespace.
struct Cli {
    hub: String,
    rpc: String,
    registry: String,
    owner_key: String,
}

impl Cli {
    fn stream(&self, args: &[&str]) -> Output {
        runnel_in(&self.hub)
            .arg("stream")
            .args(args)
            .args(["--chain-rpc", &self.rpc, "--registry", &self.registry])
            .env("RUNNEL_PRIVATE_KEY", &self.owner_key)
            .output()
            .expect("runnel stream")
    }

    /// Runs a write and returns the block its transaction landed in.
    fn write(&self, args: &[&str]) -> u64 {
        let output = self.stream(args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "runnel stream {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout
            .rsplit_once("block ")
            .and_then(|(_, rest)| rest.trim_end().trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no block in {stdout:?}"))
    }
}

/// A JSON-RPC call over a bare HTTP/1.1 connection from inside `hub`: another client.
fn raw_rpc(hub: &Netns, endpoint: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let address = endpoint.trim_start_matches("http://").to_string();
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let response = hub
        .run(move || {
            let mut stream = TcpStream::connect(&address).unwrap();
            write!(
                stream,
                "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .unwrap();
    let json = &response[response.find("\r\n\r\n").expect("an HTTP response") + 4..];
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{method}: {e}: {json}"));
    assert!(value.get("error").is_none(), "{method} failed: {value}");
    value["result"].clone()
}

fn start_node(dir: &Path, index: usize, netns: Netns, bootstrap: Option<&str>, stream: &str, chain: &Cli, from_block: u64) -> Node {
    let identity = Identity::generate();
    let key_file = dir.join(format!("node{index}.key"));
    private_file(&key_file, &format!("{}\n", identity.publisher_key().secret_hex()));
    let here = address(index);
    let bootstrap = bootstrap.map(|b| format!("\"{b}\"")).unwrap_or_default();
    let config = dir.join(format!("node{index}.toml"));
    private_file(
        &config,
        &format!(
            "[node]\nlisten = \"{here}:{DATAPLANE_PORT}\"\nshards = 1\nverify = \"all\"\n\n[control]\nadmin = \"{here}:{ADMIN_PORT}\"\n\
             join = [\"{stream}#0\"]\nipc = \"{}\"\nkey_file = \"{}\"\np2p_listen = [\"/ip4/{here}/tcp/{P2P_PORT}\"]\nbootstrap = [{bootstrap}]\n\
             chain_rpc = \"{}\"\nregistry = \"{}\"\nregistry_block = {from_block}\nchain_poll_ms = 100\nsettlement_epoch_s = {EPOCH_S}\n",
            dir.join(format!("node{index}.sock")).display(),
            key_file.display(),
            chain.rpc,
            chain.registry,
        ),
    );
    let log = dir.join(format!("node{index}.log"));
    let supervisor = spawn(
        Command::new("ip")
            .args(["netns", "exec", netns.name(), env!("CARGO_BIN_EXE_runnel"), "node", "--status-interval", "0", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    Node { index, netns, _supervisor: supervisor, identity, log }
}

/// `runnel sub --raw` at `node` as `account`; its payload lines.
fn subscriber(node: &Node, stream: &str, account: &Account) -> (Child, Receiver<String>) {
    let mut child = spawn(
        runnel_in(node.netns.name())
            .args(["sub", "--raw", "--stream", &format!("{stream}#0"), "--node", &node.p2p(), "--key-file"])
            .arg(&account.file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let lines = lines_of(child.stdout.take().unwrap());
    (child, lines)
}

/// `runnel pub` at `node` as `account`, fed lines on stdin. It runs in the hub namespace, a
/// host of its own, so its datagrams cross the node's veth (and its XDP filter, if attached).
fn publisher(hub: &str, node: &Node, stream: &str, account: &Account) -> (Child, ChildStdin) {
    let mut child = spawn(
        runnel_in(hub)
            .args(["pub", "--stream", &format!("{stream}#0"), "--node", &node.p2p(), "--key-file"])
            .arg(&account.file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// A client link from `node`'s control process, made in its namespace (so the session's and
/// the UDP client's sockets live there), for the test to drive in-process.
fn in_process_client(node: &Node, identity: Identity, stream: &str, access: ClientAccess) -> (ClientSession, UdpClient) {
    let part = StreamPart::new(stream, 0).unwrap().key();
    let address = node.p2p().parse().unwrap();
    node.netns
        .run(move || {
            let session = ClientSession::open(identity, &address, part, access, TIMEOUT).expect("a client link");
            let mut client =
                UdpClient::connect_with(&session.link_config(), ClientOptions { verify: false, ..ClientOptions::default() }).unwrap();
            client.subscribe(&part).unwrap();
            (session, client)
        })
        .unwrap()
}

/// A client refused at link time: it exits non-zero, and its error names why.
fn refused(mut child: Child, needle: &str, what: &str) {
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{what}: the client was admitted");
    assert!(stderr.contains(needle), "{what}: expected {needle:?} in {stderr:?}");
}

/// Writes `lines` (with a short pause each) until `lines_of` shows `needle`, or times out.
fn publish_until_seen(stdin: &mut ChildStdin, prefix: &str, seen: &Receiver<String>, nodes: &[Node]) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        writeln!(stdin, "{prefix}-{sent}").unwrap();
        stdin.flush().unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
        if seen.try_iter().any(|line| line.starts_with(prefix)) {
            return sent;
        }
        assert!(started.elapsed() < TIMEOUT, "{prefix}: no message arrived within {TIMEOUT:?}\n{}", diagnostics(nodes));
    }
}

#[test]
fn permissions_come_from_the_stream_registry() {
    let Bridged { hub, nodes: namespaces } = bridged("chain", NODES, address, Some(CHAIN_IP), TEST_TIMEOUT);
    let dir = temp_dir("chain");

    // The chain, in the hub: anvil and the network's contracts.
    let options = AnvilOptions { host: Some(CHAIN_IP.parse().unwrap()), netns: Some(hub.name().to_string()), ..AnvilOptions::default() };
    let anvil = Anvil::start(&options).unwrap();
    let owner_key = anvil.dev_key(0);
    let endpoint = anvil.endpoint();
    let deployment: Deployment = {
        let endpoint = endpoint.clone();
        hub.run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let owner = Chain::connect(&endpoint, Some(&owner_key), ChainConfig::default()).unwrap();
                deploy_local(&owner).await.unwrap()
            })
        })
        .unwrap()
    };
    let owner = PrivateKeySigner::from_bytes(&owner_key.into()).unwrap().address();
    let cli = Cli {
        hub: hub.name().to_string(),
        rpc: endpoint.clone(),
        registry: format!("{:#x}", deployment.registry),
        owner_key: hex::encode(owner_key),
    };
    let created = cli.write(&["create", "/chain-e2e"]);
    let stream = format!("{owner:#x}/chain-e2e");

    // Phase 1: the nodes mesh and read the registry; clients without permission are refused.
    let mut namespaces = namespaces.into_iter();
    let first = start_node(&dir.0, 0, namespaces.next().unwrap(), None, &stream, &cli, deployment.registry_block);
    let bootstrap = first.p2p();
    let mut nodes = vec![first];
    for (index, netns) in (1..NODES).zip(namespaces) {
        nodes.push(start_node(&dir.0, index, netns, Some(&bootstrap), &stream, &cli, deployment.registry_block));
    }
    wait_for("phase 1: mesh and registry sync", &nodes, || {
        nodes.iter().all(|node| node.live_neighbors() >= 1 && node.synced_block() >= created)
    });
    let (subscriber_s, publisher_k) = (Account::new(&dir.0, "s"), Account::new(&dir.0, "k"));
    let (child, _) = subscriber(&nodes[2], &stream, &subscriber_s);
    refused(child, "Subscribe permission", "phase 1: a subscriber without permission");
    let (child, _stdin) = publisher(hub.name(), &nodes[0], &stream, &publisher_k);
    refused(child, "Publish permission", "phase 1: a publisher without permission");

    // Phase 2: grants from the CLI; K's messages flow from node 0 to S at node 2.
    cli.write(&["grant", &stream, &subscriber_s.address(), "subscribe"]);
    let granted = cli.write(&["grant", &stream, &publisher_k.address(), "publish"]);
    wait_for("phase 2: the grants reach every node", &nodes, || nodes.iter().all(|node| node.synced_block() >= granted));
    let (_sub, received) = subscriber(&nodes[2], &stream, &subscriber_s);
    let (_pub, mut stdin) = publisher(hub.name(), &nodes[0], &stream, &publisher_k);
    publish_until_seen(&mut stdin, "granted", &received, &nodes);
    // Per-link traffic, what settlement reports are made of: once the traffic stops and the
    // counts are fresh, no node has received on a link more than its neighbor sent on it.
    std::thread::sleep(Duration::from_millis(2500));
    let statuses: Vec<serde_json::Value> = nodes.iter().map(|node| node.status().unwrap()).collect();
    let mut pairs = 0;
    for (a, status_a) in statuses.iter().enumerate() {
        for sent in status_a["neighbors"].as_array().unwrap() {
            for (b, status_b) in statuses.iter().enumerate() {
                let Some(received) = status_b["neighbors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["link_id"] == sent["peer_link_id"] && n["peer"] == nodes[a].identity.peer_id().to_string())
                else {
                    continue;
                };
                let (s, r) = (&sent["traffic"], &received["traffic"]);
                assert!(
                    s["frames_sent"].as_u64() >= r["frames_received"].as_u64() && s["bytes_sent"].as_u64() >= r["bytes_received"].as_u64(),
                    "phase 2: node {b} received more from node {a} than it sent: {s} vs {r}"
                );
                pairs += 1;
            }
        }
    }
    assert!(pairs >= 2, "phase 2: no neighbor links to compare: {statuses:?}");
    let carried: u64 = statuses
        .iter()
        .flat_map(|s| s["neighbors"].as_array().unwrap().iter().map(|n| n["traffic"]["frames_received"].as_u64().unwrap_or(0)))
        .sum();
    assert!(carried > 0, "phase 2: the nodes count no traffic between them");
    // The same counts, as each node signs them per epoch for the settlement operator: every
    // report verifies as its node's, names only the other nodes, and summed over the epochs
    // no node claims to have received from a neighbor more than that neighbor reports sending.
    let traffic_end = unix_now_s();
    let reports_of = |node: &Node| -> Vec<runnel_proto::receipt::SignedReport> {
        let body = node.admin_get("/settlement/reports").unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["reports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| runnel_proto::receipt::SignedReport::decode(&hex::decode(r["report"].as_str().unwrap()).unwrap()).unwrap())
            .collect()
    };
    wait_for("phase 2: every node reports the epoch after the traffic", &nodes, || {
        nodes.iter().all(|node| reports_of(node).last().is_some_and(|r| r.report().epoch > traffic_end / EPOCH_S))
    });
    let accounts: Vec<[u8; 20]> = nodes.iter().map(|node| node.identity.address()).collect();
    // (sender, receiver) → (bytes sent, frames sent, bytes received, frames received).
    type Sums = std::collections::BTreeMap<([u8; 20], [u8; 20]), (u64, u64, u64, u64)>;
    let mut sums = Sums::new();
    for node in &nodes {
        for signed in reports_of(node) {
            signed.verify(&mut runnel_proto::crypto::Verifier::default()).expect("phase 2: a report signed by its node");
            let report = signed.report();
            assert_eq!(report.node, node.identity.address(), "phase 2: node {}'s report names another node", node.index);
            for link in &report.links {
                assert!(accounts.contains(&link.neighbor) && link.neighbor != report.node, "phase 2: a report names a stranger");
                let sent = sums.entry((report.node, link.neighbor)).or_default();
                (sent.0, sent.1) = (sent.0 + link.bytes_sent, sent.1 + link.messages_sent);
                let received = sums.entry((link.neighbor, report.node)).or_default();
                (received.2, received.3) = (received.2 + link.bytes_received, received.3 + link.messages_received);
            }
        }
    }
    assert!(sums.values().any(|(_, _, bytes_received, _)| *bytes_received > 0), "phase 2: the reports carry no traffic: {sums:?}");
    for ((from, to), (bytes_sent, messages_sent, bytes_received, messages_received)) in &sums {
        assert!(
            bytes_sent >= bytes_received && messages_sent >= messages_received,
            "phase 2: 0x{} claims more from 0x{} than it sent: {sums:?}",
            hex::encode(to),
            hex::encode(from)
        );
    }

    // Phase 3: the revoke. Once node 0 has read its block, K's messages stop at node 0.
    let dropped_before = nodes[0].not_permitted();
    let revoke_sent = Instant::now();
    let revoked = cli.write(&["revoke", &stream, &publisher_k.address(), "publish"]);
    let enforced = wait_for("phase 3: node 0 reads the revoke", &nodes, || nodes[0].synced_block() >= revoked);
    eprintln!(
        "chain: revoke in block {revoked}; node 0 enforces it {:.0} ms after the receipt ({:.0} ms after sending)",
        enforced.as_secs_f64() * 1e3,
        revoke_sent.elapsed().as_secs_f64() * 1e3
    );
    // Give the policy command its round trip to the dataplane (control applies it on its
    // next loop tick after the book changes).
    std::thread::sleep(Duration::from_millis(300));
    received.try_iter().for_each(drop);
    for n in 0..50 {
        writeln!(stdin, "revoked-{n}").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_for("phase 3: node 0 counts K's dropped messages", &nodes, || nodes[0].not_permitted() >= dropped_before + 50);
    let (in_xdp, in_userspace) = nodes[0].not_permitted_split();
    eprintln!("chain: node 0 dropped K's datagrams: {in_xdp} in XDP, {in_userspace} in userspace");
    if nodes[0].xdp_attached() {
        assert!(in_xdp >= 50, "phase 3: the XDP filter is attached but dropped only {in_xdp} of K's datagrams");
    }
    std::thread::sleep(Duration::from_millis(500));
    let leaked: Vec<String> = received.try_iter().filter(|line| line.starts_with("revoked")).collect();
    assert!(leaked.is_empty(), "phase 3: messages after the revoke arrived: {leaked:?}");

    // Phase 4: public publishing: a key no one named.
    let public = cli.write(&["grant", &stream, "public", "publish"]);
    wait_for("phase 4: the public grant reaches node 1", &nodes, || nodes[1].synced_block() >= public);
    let anyone = Account::new(&dir.0, "anyone");
    let (_anyone_pub, mut anyone_stdin) = publisher(hub.name(), &nodes[1], &stream, &anyone);
    publish_until_seen(&mut anyone_stdin, "public", &received, &nodes);

    // Phase 5: a Subscribe permission written by another client.
    let second = Account::new(&dir.0, "s2");
    let call = IStreamRegistry::grantPermissionCall {
        streamId: stream.clone(),
        user: second.identity.address().into(),
        permissionType: PermissionType::Subscribe as u8,
    };
    let hash = raw_rpc(
        &hub,
        &endpoint,
        "eth_sendTransaction",
        serde_json::json!([{
            "from": format!("{owner:#x}"),
            "to": cli.registry,
            "data": format!("0x{}", hex::encode(call.abi_encode())),
        }]),
    );
    let mut raw_block = 0;
    wait_for("phase 5: the raw transaction is mined", &nodes, || {
        let receipt = raw_rpc(&hub, &endpoint, "eth_getTransactionReceipt", serde_json::json!([hash]));
        raw_block = receipt["blockNumber"].as_str().and_then(|b| u64::from_str_radix(b.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
        !receipt.is_null()
    });
    wait_for("phase 5: the raw grant reaches node 1", &nodes, || nodes[1].synced_block() >= raw_block);
    let (_second_sub, second_received) = subscriber(&nodes[1], &stream, &second);
    publish_until_seen(&mut anyone_stdin, "raw", &second_received, &nodes);

    // Phase 6: a Publish link may not subscribe. Both clients are at node 1 and send
    // Subscribe; only the one admitted to subscribe gets the messages.
    let part_key = StreamPart::new(&stream, 0).unwrap().key();
    // (A node keeps one link per client and part, so these identities hold no other link
    // at node 1: a fresh key may publish, the stream being public; S may subscribe.)
    let (_publish_session, mut publish_link) = in_process_client(&nodes[1], Identity::generate(), &stream, ClientAccess::Publish);
    let (_subscribe_session, mut subscribe_link) =
        in_process_client(&nodes[1], subscriber_s.identity.clone(), &stream, ClientAccess::Subscribe);
    let dropped_before = nodes[1].not_permitted();
    let (mut through_publish_link, mut through_subscribe_link) = (0, 0);
    let started = Instant::now();
    while through_subscribe_link < 20 && started.elapsed() < TIMEOUT {
        writeln!(anyone_stdin, "scope-{}", through_subscribe_link).unwrap();
        anyone_stdin.flush().unwrap();
        // The clients refresh their Subscribe every second; keep both sending.
        publish_link.subscribe(&part_key).unwrap();
        through_publish_link += publish_link.recv(Duration::from_millis(10), |_| {}).unwrap();
        through_subscribe_link += subscribe_link.recv(Duration::from_millis(10), |_| {}).unwrap();
    }
    assert!(through_subscribe_link >= 20, "phase 6: the Subscribe link got {through_subscribe_link} messages\n{}", diagnostics(&nodes));
    assert_eq!(through_publish_link, 0, "phase 6: a Publish link received messages");
    wait_for("phase 6: node 1 counts the Publish link's Subscribe as not permitted", &nodes, || nodes[1].not_permitted() > dropped_before);
    drop((publish_link, subscribe_link));

    // Phase 7: revoking a subscriber's permission removes its link.
    let revoked_sub = cli.write(&["revoke", &stream, &second.address(), "subscribe"]);
    wait_for("phase 7: node 1 reads the revoke", &nodes, || nodes[1].synced_block() >= revoked_sub);
    wait_for("phase 7: node 1 removes the subscriber's link", &nodes, || {
        nodes[1].status().is_ok_and(|status| status["control"]["clients_revoked"].as_u64().unwrap_or(0) >= 1)
    });
    second_received.try_iter().for_each(drop);
    publish_until_seen(&mut anyone_stdin, "after-revoke", &received, &nodes);
    std::thread::sleep(Duration::from_millis(500));
    let leaked: Vec<String> = second_received.try_iter().filter(|line| line.starts_with("after-revoke")).collect();
    assert!(leaked.is_empty(), "phase 7: a revoked subscriber still got {leaked:?}");

    // Phase 8: a reorg takes a Subscribe grant back.
    let snapshot = raw_rpc(&hub, &endpoint, "evm_snapshot", serde_json::json!([]));
    let reorged = Account::new(&dir.0, "r");
    let granted_r = cli.write(&["grant", &stream, &reorged.address(), "subscribe"]);
    wait_for("phase 8: node 2 reads the grant", &nodes, || nodes[2].synced_block() >= granted_r);
    let (mut admitted, _) = subscriber(&nodes[2], &stream, &reorged);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(admitted.try_wait().unwrap().is_none(), "phase 8: R was refused before the reorg\n{}", diagnostics(&nodes));
    admitted.kill().unwrap();
    admitted.wait().unwrap();
    assert_eq!(raw_rpc(&hub, &endpoint, "evm_revert", serde_json::json!([snapshot])), true);
    raw_rpc(&hub, &endpoint, "anvil_mine", serde_json::json!(["0x3"]));
    wait_for("phase 8: node 2 sees the reorg", &nodes, || {
        nodes[2].status().is_ok_and(|status| status["chain"]["reorgs"].as_u64().unwrap_or(0) >= 1)
    });
    let (child, _) = subscriber(&nodes[2], &stream, &reorged);
    refused(child, "Subscribe permission", "phase 8: the reorged-out grant");
    publish_until_seen(&mut anyone_stdin, "after-reorg", &received, &nodes);

    // Phase 9: the chain goes away; permissions and forwarding stay.
    drop(anvil);
    wait_for("phase 9: node 0 notices the outage", &nodes, || {
        nodes[0].status().is_ok_and(|status| status["chain"]["last_error"].is_string())
    });
    publish_until_seen(&mut anyone_stdin, "outage", &received, &nodes);
    let status = nodes[0].status().unwrap();
    assert!(status["chain"]["poll_errors"].as_u64().unwrap_or(0) >= 1, "phase 9: {status}");
}
