//! Node runner tests on real sockets and real io_uring rings, on 127.0.0.1.

use rand::{Rng, SeedableRng};
use runnel_core::counters::Counter;
use runnel_node::command::Command;
use runnel_node::config::NodeConfig;
use runnel_node::node::{Node, NodeError, NodeHandle};
use runnel_node::shard::RuntimeCounter;
use runnel_proto::linktag::LinkKey;
use runnel_proto::wire::{self, HeaderFields, Kind, HEADER_LENGTH};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn seed() -> u64 {
    let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("RUNNEL_SEED={seed}");
    seed
}

/// Starts a node with `shards` shards on a random free run of ports on 127.0.0.1.
fn start_node(rng: &mut impl Rng, shards: u16) -> NodeHandle {
    for _ in 0..50 {
        let port: u16 = rng.random_range(20_000..60_000);
        let config = NodeConfig::parse(&format!("[node]\nlisten = \"127.0.0.1:{port}\"\nshards = {shards}\n")).unwrap();
        match Node::start(config) {
            Ok(node) => return node,
            Err(NodeError::AddressInUse { .. }) => continue,
            Err(error) => panic!("node did not start: {error}"),
        }
    }
    panic!("no free run of {shards} ports found in 50 tries");
}

/// A well-formed 88-byte header (unknown link, Data kind) followed by `body_length` zeros.
fn well_formed(body_length: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LENGTH + body_length];
    let fields = HeaderFields {
        kind: Kind::Data,
        link_id: 0xdead,
        link_seq: 1,
        stream_part_key: [3; 32],
        flags: 0,
        message_count: 0,
        total_length: bytes.len() as u16,
        publisher: [0; 20],
    };
    wire::write_header(&fields, &LinkKey([7; 32]), &mut bytes);
    bytes
}

/// Datagrams that no parser may accept: random bytes, truncated headers, a header whose
/// total_length runs past the datagram, a wrong version, a wrong magic.
fn garbage(rng: &mut impl Rng) -> Vec<Vec<u8>> {
    let mut datagrams = Vec::new();
    for _ in 0..20 {
        let mut bytes = vec![0u8; rng.random_range(1..1500)];
        rng.fill_bytes(&mut bytes);
        bytes[0] = b'X'; // never the magic's first byte
        datagrams.push(bytes);
    }
    for length in [1, 2, 3, 40, HEADER_LENGTH - 1] {
        datagrams.push(well_formed(0)[..length].to_vec());
    }
    let mut overlong = well_formed(1000);
    overlong.truncate(200);
    datagrams.push(overlong);
    let mut wrong_version = well_formed(100);
    wrong_version[2] = 9;
    datagrams.push(wrong_version);
    let mut wrong_magic = well_formed(100);
    wrong_magic[0] = b'Q';
    datagrams.push(wrong_magic);
    datagrams
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// Goal: a 2-shard node binds two consecutive ports; each shard takes garbage (random bytes,
// truncated and wrong-version headers, an empty datagram) on its own port, counts every
// datagram as received and malformed, keeps running, and stops cleanly, releasing its ports.
#[test]
fn two_shards_count_garbage_and_stop_cleanly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let node = start_node(&mut rng, 2);
    let addrs = node.local_addrs();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[1].port(), addrs[0].port() + 1, "shard ports must be consecutive: {addrs:?}");
    assert!(addrs.iter().all(|a| a.ip().is_loopback()));

    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let garbage = garbage(&mut rng);
    // Shard 1 gets twice as much, so a mix-up between shards shows in the counts.
    let rounds = [1usize, 2];
    for (shard, address) in addrs.iter().enumerate() {
        for _ in 0..rounds[shard] {
            for datagram in &garbage {
                sender.send_to(datagram, address).unwrap();
            }
            sender.send_to(&[], address).unwrap();
        }
    }
    let expected = |shard: usize| (rounds[shard] * garbage.len()) as u64;
    wait_until("every datagram to be counted", Duration::from_secs(10), || {
        let (runtime, relay) = (node.runtime_counters(), node.counters());
        (0..2).all(|shard| {
            runtime[shard].get(RuntimeCounter::ReceiveCompletions) == expected(shard) + rounds[shard] as u64
                && relay[shard].get(Counter::DatagramsMalformed) >= expected(shard)
        })
    });
    // The relay sees every non-empty datagram as received and malformed; nothing else moves.
    for (shard, counters) in node.counters().iter().enumerate() {
        assert_eq!(counters.get(Counter::DatagramsReceived), expected(shard), "shard {shard}");
        assert_eq!(counters.get(Counter::DatagramsMalformed), expected(shard), "shard {shard}");
        assert_eq!(counters.get(Counter::DatagramsUnknownLink), 0, "shard {shard}");
        assert_eq!(counters.get(Counter::DatagramsSent), 0, "shard {shard}");
        let runtime = &node.runtime_counters()[shard];
        assert_eq!(runtime.get(RuntimeCounter::ReceivesTruncated), 0, "shard {shard}");
        assert_eq!(runtime.get(RuntimeCounter::ReceiveErrors), 0, "shard {shard}");
    }

    // Still up: a well-formed datagram for an unknown link gets past the parser on shard 0.
    sender.send_to(&well_formed(10), addrs[0]).unwrap();
    wait_until("the shard to answer after garbage", Duration::from_secs(10), || node.counters()[0].get(Counter::DatagramsUnknownLink) == 1);

    node.stop().expect("clean stop");
    for address in addrs {
        UdpSocket::bind(address).unwrap_or_else(|e| panic!("{address} still bound after stop: {e}"));
    }
}

// Goal: a port already in use is a clear error naming the port and the setting to change,
// and the shard that did start before it is stopped again (its port is released).
#[test]
fn port_in_use_is_a_clear_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let (base, _blocker) = loop {
        let base: u16 = rng.random_range(20_000..60_000);
        let Ok(first) = UdpSocket::bind(("127.0.0.1", base)) else { continue };
        drop(first);
        // Hold shard 1's port so shard 0 binds and shard 1 fails.
        if let Ok(blocker) = UdpSocket::bind(("127.0.0.1", base + 1)) {
            break (base, blocker);
        }
    };
    let config = NodeConfig::parse(&format!("[node]\nlisten = \"127.0.0.1:{base}\"\nshards = 2\n")).unwrap();
    let error = Node::start(config).expect_err("port in use must fail");
    let message = error.to_string();
    assert!(matches!(error, NodeError::AddressInUse { address } if address.port() == base + 1), "{error:?}");
    assert!(message.contains(&(base + 1).to_string()) && message.contains("node.listen"), "{message}");
    let shard_zero: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
    UdpSocket::bind(shard_zero).expect("shard 0's port is released after the failed start");
}

// Goal: dropping the handle (no explicit stop) stops the shards and releases the ports.
#[test]
fn drop_stops_the_node() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let node = start_node(&mut rng, 1);
    let addrs = node.local_addrs();
    let started = Instant::now();
    drop(node);
    assert!(started.elapsed() < Duration::from_secs(2), "stop took {:?}", started.elapsed());
    UdpSocket::bind(addrs[0]).expect("port released after drop");
}

// Goal: the send path works end to end: joining a stream part makes the owning shard send a
// Subscribe to the configured neighbor from that shard's own port (io_uring SendMsg), tagged
// with the link key; the relay's timer (poll_timeout/handle_timeout) then refreshes it.
#[test]
fn join_sends_subscribe_from_the_owning_shard_and_refreshes_it() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let neighbor = UdpSocket::bind("127.0.0.1:0").unwrap();
    neighbor.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key_hex = "42".repeat(32);
    let node = loop {
        let port: u16 = rng.random_range(20_000..60_000);
        let text = format!(
            "[node]\nlisten = \"127.0.0.1:{port}\"\nshards = 2\n[[links]]\nid = 5\nkey = \"{key_hex}\"\nrole = \"neighbor\"\npeer = \"{}\"\npeer_shards = 1\n",
            neighbor.local_addr().unwrap()
        );
        match Node::start(NodeConfig::parse(&text).unwrap()) {
            Ok(node) => break node,
            Err(NodeError::AddressInUse { .. }) => continue,
            Err(error) => panic!("{error}"),
        }
    };
    let part = runnel_proto::stream::StreamPartKey([rng.random(); 32]);
    let owner = runnel_node::config::shard_of(&part, 2) as usize;
    node.execute(Command::Join { part }, Duration::from_secs(5)).unwrap();

    let mut buffer = [0u8; 2048];
    let started = Instant::now();
    for round in 0..2 {
        let (length, from) = neighbor.recv_from(&mut buffer).unwrap_or_else(|e| panic!("subscribe {round} not received: {e}"));
        assert_eq!(from, node.local_addrs()[owner], "sent from the owning shard's port");
        let datagram = wire::Datagram::parse(&buffer[..length]).expect("well-formed");
        assert_eq!(datagram.kind, Kind::Subscribe);
        assert_eq!(datagram.link_id(), 5);
        assert_eq!(datagram.stream_part_key(), part);
        assert!(datagram.tag_matches(&LinkKey([0x42; 32])), "tagged with the link key");
    }
    // `join` sends one Subscribe per neighbor; only the relay's housekeeping timer (driven by
    // poll_timeout/handle_timeout, every subscribe_interval_us = 1 s) sends the second.
    assert!(started.elapsed() < Duration::from_secs(3), "the refresh came late: {:?}", started.elapsed());
    // Counters are published once per shard loop turn, so they may trail the wire briefly.
    wait_until("send counters", Duration::from_secs(5), || {
        node.counters()[owner].get(Counter::DatagramsSent) >= 2 && node.runtime_counters()[owner].get(RuntimeCounter::SendCompletions) >= 2
    });
    assert_eq!(node.counters()[owner].get(Counter::DatagramsSendFailed), 0);
    assert_eq!(node.runtime_counters()[owner].get(RuntimeCounter::CommandsHandled), 1);
    assert_eq!(node.runtime_counters()[1 - owner].get(RuntimeCounter::CommandsHandled), 0);
    node.stop().unwrap();
}
