//! Peering end to end: three nodes, each a `runnel node --ipc` dataplane and a `runnel
//! control` process with its own identity key, find each other through one bootstrap peer
//! over real libp2p on loopback. No file names a node's neighbors or clients: the neighbor
//! links come from the handshakes, the publisher (`runnel pub --node`) and the subscriber
//! (`runnel sub --node`) get client links from the control processes of the first and the
//! last node, and messages published at the first reach the subscriber at the last.

use runnel_proto::crypto::PublisherKey;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const STREAM: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/peering#0";
const NODES: usize = 3;
const MESSAGES: u64 = 2_000;
const TIMEOUT: Duration = Duration::from_secs(30);

mod common;

use common::{lines_of, lines_with, stderr_lines, temp_dir, Process};

fn private_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
}

struct Node {
    _dataplane: Process,
    _control: Process,
    admin: SocketAddr,
    p2p: String,
    _lines: Receiver<String>,
}

fn start_node(dir: &Path, index: usize, bootstrap: Option<&str>) -> Node {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join(format!("node{index}.toml"));
    private_file(&config, &format!("[node]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n"));
    let socket = dir.join(format!("node{index}.sock"));
    let dataplane = Process(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["node", "--status-interval", "0", "--config"])
            .arg(&config)
            .arg("--ipc")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let key_file = dir.join(format!("node{index}.key"));
    private_file(&key_file, &format!("{}\n", PublisherKey::generate().secret_hex()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
    command
        .args(["control", "--admin", "127.0.0.1:0", "--join", STREAM, "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--key-file"])
        .arg(&key_file)
        .arg("--ipc")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(bootstrap) = bootstrap {
        command.args(["--bootstrap", bootstrap]);
    }
    let mut control = Process(command.spawn().unwrap());
    let lines = stderr_lines(&mut control.0);
    let found = lines_with(&lines, &["admin on http://", "peer listening on "], TIMEOUT);
    let (admin_line, p2p_line) = (&found[0], &found[1]);
    let admin = admin_line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|t| t.parse().ok()).unwrap();
    let p2p = p2p_line.split("peer listening on ").nth(1).unwrap().trim().to_string();
    Node { _dataplane: dataplane, _control: control, admin, p2p, _lines: lines }
}

// Goal: three nodes find each other through one bootstrap peer and agree on neighbor links
// (both ends report the same link, each with its own id); a subscriber at the last node
// receives every message published at the first, in order, over those links alone.
#[test]
fn three_nodes_peer_through_a_bootstrap_and_carry_messages() {
    let dir = temp_dir("peering");
    let first = start_node(&dir.0, 0, None);
    let bootstrap = first.p2p.clone();
    let mut nodes = vec![first];
    for index in 1..NODES {
        nodes.push(start_node(&dir.0, index, Some(&bootstrap)));
    }

    // Every node ends up with a neighbor link to each of the others (3 nodes, target 4).
    let deadline = Instant::now() + TIMEOUT;
    let statuses = loop {
        let statuses: Vec<serde_json::Value> = nodes.iter().map(|node| status(node.admin)).collect();
        let meshed =
            statuses.iter().all(|s| s["dataplane"]["connected"] == true && s["neighbors"].as_array().is_some_and(|n| n.len() == NODES - 1));
        if meshed {
            break statuses;
        }
        assert!(Instant::now() < deadline, "no full mesh within {TIMEOUT:?}: {statuses:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Each link is known at both ends, with swapped ids.
    for (index, status) in statuses.iter().enumerate() {
        let me = status["peer_id"].as_str().unwrap();
        for neighbor in status["neighbors"].as_array().unwrap() {
            let other = statuses.iter().find(|s| s["peer_id"] == neighbor["peer"]).expect("the neighbor is one of ours");
            let back = other["neighbors"].as_array().unwrap().iter().find(|n| n["peer"] == me).expect("the link is known at both ends");
            assert_eq!(
                (back["link_id"].clone(), back["peer_link_id"].clone()),
                (neighbor["peer_link_id"].clone(), neighbor["link_id"].clone()),
                "node {index}"
            );
        }
    }

    // A subscriber at the last node and a publisher at the first, each asking the node's
    // control process for its client link.
    let mut subscriber = Process(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["sub", "--stream", STREAM, "--node", &nodes[NODES - 1].p2p])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let payloads = lines_of(subscriber.0.stdout.take().unwrap());
    let key_file = dir.0.join("publisher.key");
    private_file(&key_file, &format!("{}\n", PublisherKey::generate().secret_hex()));
    let mut publisher = Process(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["pub", "--stream", STREAM, "--node", &nodes[0].p2p, "--key-file"])
            .arg(&key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdin = publisher.0.stdin.take().unwrap();
    // Until the subscriber's link is up and its interest has reached the first node, probes.
    let deadline = Instant::now() + TIMEOUT;
    let mut probes = 0;
    loop {
        assert!(Instant::now() < deadline, "no probe reached the subscriber at the last node");
        writeln!(stdin, "\"probe\"").unwrap();
        probes += 1;
        if payloads.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
    }
    for status in [status(nodes[0].admin), status(nodes[NODES - 1].admin)] {
        assert_eq!(status["clients"].as_array().map(Vec::len), Some(1), "each end node holds one client link: {status:#}");
    }
    // Lines that are JSON numbers are published as JSON; the subscriber prints them back.
    for sequence in 0..MESSAGES {
        writeln!(stdin, "{sequence}").unwrap();
    }
    stdin.flush().unwrap();
    let mut data = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while data.len() < MESSAGES as usize {
        let line = payloads
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("received {} of {MESSAGES} (after {probes} probes)", data.len()));
        let message: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(sequence) = message["payload"].as_u64() {
            data.push(sequence);
        }
    }
    assert_eq!(data, (0..MESSAGES).collect::<Vec<_>>(), "every message once, in order");

    // The publisher ends (end of input): its node removes its client link.
    drop(stdin);
    let deadline = Instant::now() + TIMEOUT;
    while publisher.0.try_wait().unwrap().is_none() || status(nodes[0].admin)["clients"].as_array().is_some_and(|c| !c.is_empty()) {
        assert!(Instant::now() < deadline, "the publisher's client link outlived it");
        std::thread::sleep(Duration::from_millis(50));
    }
}
