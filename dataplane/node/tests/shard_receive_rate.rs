//! A micro-measurement, run by hand (ignored in the suite; it prints, it does not judge):
//!
//! ```text
//! cargo test --release -p runnel-dataplane --test shard_receive_rate -- --ignored --nocapture
//! ```
//!
//! One shard (pinned to the first allowed core) receives for `RUNNEL_SECONDS` (default 3)
//! from a GSO sender on loopback pinned to the next core: 44 datagrams of 1472 bytes per send
//! (`UDP_SEGMENT`), each a well-formed header for an unknown link, so the relay splits every
//! GRO buffer and stops at the link lookup. The baseline, in the same run: a plain thread on
//! the same core doing blocking `recv` into one 64 KiB buffer with `UDP_GRO` on, same sender.
//! Results go in docs/decisions-shards.md.

use runnel_core::counters::Counter;
use runnel_node::config::NodeConfig;
use runnel_node::node::{Node, NodeError};
use runnel_node::shard::RuntimeCounter;
use runnel_proto::linktag::LinkKey;
use runnel_proto::wire::{self, HeaderFields, Kind};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const DATAGRAM_LENGTH: usize = 1472;
const BASELINE_BUFFER_LENGTH: usize = 65_536;
const SEGMENTS_PER_SEND: usize = 44;

fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is empty; CPU_SET and sched_setaffinity touch only it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn set_int_option(socket: &UdpSocket, level: libc::c_int, option: libc::c_int, value: libc::c_int) {
    runnel_client::sockopt::set_int(socket, level, option, value).unwrap_or_else(|error| panic!("setsockopt {option}: {error}"));
}

/// 44 well-formed 1472-byte datagrams for an unknown link, back to back.
fn gso_payload() -> Vec<u8> {
    let mut payload = vec![0u8; DATAGRAM_LENGTH * SEGMENTS_PER_SEND];
    for (index, datagram) in payload.chunks_mut(DATAGRAM_LENGTH).enumerate() {
        let fields = HeaderFields {
            kind: Kind::Data,
            link_id: 0xdead,
            link_seq: index as u64,
            stream_part_key: [3; 32],
            flags: 0,
            message_count: 0,
            total_length: DATAGRAM_LENGTH as u16,
            publisher: [0; 20],
        };
        wire::write_header(&fields, &LinkKey([7; 32]), datagram);
    }
    payload
}

/// Sends GSO batches to `target` from core 1 for `duration`; returns datagrams sent.
fn send_for(target: SocketAddr, duration: Duration) -> u64 {
    let payload = gso_payload();
    std::thread::spawn(move || {
        pin_to(1);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_int_option(&socket, libc::SOL_UDP, libc::UDP_SEGMENT, DATAGRAM_LENGTH as libc::c_int);
        let started = Instant::now();
        let mut sends = 0u64;
        while started.elapsed() < duration {
            if socket.send_to(&payload, target).is_ok() {
                sends += 1;
            }
        }
        sends * SEGMENTS_PER_SEND as u64
    })
    .join()
    .unwrap()
}

fn report(name: &str, sent: u64, received: u64, seconds: f64, per_completion: f64) {
    println!(
        "{name:<24} sent {sent:>9} received {received:>9} ({:>5.1}%) {:>10.0} datagrams/s {:>5.2} GB/s {per_completion:>5.1} datagrams/receive",
        100.0 * received as f64 / sent.max(1) as f64,
        received as f64 / seconds,
        received as f64 * DATAGRAM_LENGTH as f64 / seconds / 1e9,
    );
}

// Goal: print how many datagrams per second one shard takes from a GSO sender on loopback,
// next to a plain blocking GRO receiver on the same core.
#[test]
#[ignore = "a measurement run by hand; see the file doc"]
fn one_shard_receive_rate_from_gso_sender() {
    let seconds: u64 = std::env::var("RUNNEL_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let duration = Duration::from_secs(seconds);

    // Baseline: blocking recv with UDP_GRO, pinned to core 0.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    set_int_option(&socket, libc::SOL_UDP, libc::UDP_GRO, 1);
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let target = socket.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        pin_to(0);
        let mut buffer = vec![0u8; BASELINE_BUFFER_LENGTH];
        let (mut bytes, mut receives) = (0u64, 0u64);
        while let Ok(length) = socket.recv(&mut buffer) {
            bytes += length as u64;
            receives += 1;
        }
        (bytes / DATAGRAM_LENGTH as u64, receives)
    });
    let sent = send_for(target, duration);
    let (received, receives) = receiver.join().unwrap();
    report("blocking recv + GRO", sent, received, seconds as f64, received as f64 / receives.max(1) as f64);

    // The shard.
    let node = (0..50u16)
        .find_map(|attempt| {
            let port = 31_000 + attempt * 7;
            let config = NodeConfig::parse(&format!("[node]\nlisten = \"127.0.0.1:{port}\"\nshards = 1\n")).unwrap();
            match Node::start(config) {
                Ok(node) => Some(node),
                Err(NodeError::AddressInUse { .. }) => None,
                Err(error) => panic!("{error}"),
            }
        })
        .expect("free port");
    let sent = send_for(node.local_addrs()[0], duration);
    // Let the shard finish what is queued, then read the counters.
    let mut last = u64::MAX;
    while node.counters()[0].get(Counter::DatagramsReceived) != last {
        last = node.counters()[0].get(Counter::DatagramsReceived);
        std::thread::sleep(Duration::from_millis(100));
    }
    let counters = &node.counters()[0];
    let runtime = &node.runtime_counters()[0];
    let received = counters.get(Counter::DatagramsReceived);
    assert_eq!(counters.get(Counter::DatagramsUnknownLink), received, "every datagram reached the link lookup");
    let per_completion = received as f64 / runtime.get(RuntimeCounter::ReceiveCompletions).max(1) as f64;
    report("shard (io_uring+relay)", sent, received, seconds as f64, per_completion);
    println!("shard: receive buffers exhausted {} times", runtime.get(RuntimeCounter::ReceiveBuffersExhausted));
    node.stop().unwrap();
}
