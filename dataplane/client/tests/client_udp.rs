use rand::{Rng, SeedableRng};
use runnel_client::{ClientCore, ClientLinkConfig, ClientOptions, CoreOptions, Outgoing, PublisherThread, SigningMode, UdpClient};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPart;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn link_to(node: std::net::SocketAddr, datagram_length_max: usize) -> ClientLinkConfig {
    ClientLinkConfig { node, node_shards: 1, link_id: 100, key: LinkKey([3; 32]), datagram_length_max }
}

/// Publishes `count` messages from one UdpClient to another over loopback and checks that
/// the receiver delivers all of them, in order, with verified signatures. Returns the
/// receiver's elapsed time for the messages.
fn exchange(signing: SigningMode, gso: bool, count: u64, payload_length: usize, datagram_length_max: usize) -> Duration {
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/udp/test#0").unwrap().key();
    // Each client is the other's "node", with one shard: the sender publishes to the
    // receiver's socket, and the receiver grants the sender credit (flow control) back.
    let key = PublisherKey::generate();
    let address = key.address();
    let options = ClientOptions { publisher_key: Some(key), signing, verify: true, gso };
    let sender_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let receiver_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender_link = link_to(receiver_socket.local_addr().unwrap(), datagram_length_max);
    let receiver_link = link_to(sender_socket.local_addr().unwrap(), datagram_length_max);
    let mut receiver = UdpClient::with_socket(receiver_socket, &receiver_link, ClientOptions::default()).unwrap();
    let mut sender = UdpClient::with_socket(sender_socket, &sender_link, options).unwrap();
    let sender_thread = std::thread::spawn(move || {
        let payload = vec![0x42u8; payload_length];
        // Unpaced: the receiver's credit paces the sender, so its socket buffer never
        // overflows however the two threads are scheduled.
        for i in 0..count {
            let mut message = payload.clone();
            message[..8].copy_from_slice(&i.to_le_bytes());
            sender.publish(&part, &Outgoing::binary(1_700_000_000_000 + i, &message)).unwrap();
        }
        sender.flush().unwrap();
        sender.linger(Duration::from_millis(100)).unwrap();
        sender.counters().clone()
    });
    let started = Instant::now();
    let mut next = 0u64;
    let deadline = started + Duration::from_secs(30);
    while next < count && Instant::now() < deadline {
        receiver
            .recv(Duration::from_millis(50), |delivery| {
                assert_eq!(delivery.sequence, next, "in order, none missing");
                assert_eq!(delivery.publisher, address);
                assert_eq!(delivery.stream_part_key, part);
                assert_eq!(&delivery.payload[..8], &next.to_le_bytes());
                assert_eq!(delivery.payload.len(), payload_length);
                next += 1;
            })
            .unwrap();
    }
    let elapsed = started.elapsed();
    let sent = sender_thread.join().unwrap();
    let received = receiver.counters();
    println!(
        "{signing:?} gso={gso} payload={payload_length} B: {count} messages in {:.1} ms ({:.0} msg/s); sender {sent:?}; receiver {received:?}",
        elapsed.as_secs_f64() * 1e3,
        count as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(next, count, "all messages delivered");
    assert_eq!(received.messages_delivered, count);
    assert_eq!(received.frames_bad_signature + received.datagrams_bad_tag + received.datagrams_replayed, 0);
    assert_eq!(sent.datagrams_send_failed, 0);
    // Tail probes (flagged repair) may leave after the receiver stopped reading.
    assert!(
        received.datagrams_received <= sent.datagrams_sent && received.datagrams_received >= sent.datagrams_sent - sent.datagrams_repair,
        "no datagram lost on loopback"
    );
    assert_eq!(received.frames_lost + received.frames_held, 0, "no gap seen");
    elapsed
}

// Goal: two clients with the same link key exchange batch-signed messages over real
// loopback UDP with GSO sends and GRO receives; all arrive in order with valid signatures.
#[test]
fn batch_signed_messages_over_loopback_with_gso() {
    exchange(SigningMode::Batch { frames_per_root_max: 64 }, true, 50_000, 100, 1472);
}

// Goal: the same with per-message signatures and GSO disabled (one send per datagram, the
// fallback path), and with large messages that are fragmented and reassembled.
#[test]
fn per_message_signatures_without_gso_and_fragments() {
    exchange(SigningMode::PerMessage, false, 2_000, 100, 1472);
    exchange(SigningMode::Batch { frames_per_root_max: 16 }, true, 200, 200 * 1024, 1472);
}

fn loopback(address: SocketAddr) -> SocketAddr {
    address.to_string().replace("0.0.0.0", "127.0.0.1").parse().unwrap()
}

// Goal: a publishing UdpClient answers its node's NAKs over real loopback UDP, from flush and
// poll alone. The "node" is a ClientCore on a plain socket in this thread, with the same link
// key, that drops datagrams it receives (every k-th on average, seeded, never two in a row
// nor the first); its gap NAKs and tail queries go to the publisher's socket. Every message
// arrives exactly once, in order, nothing is given up. Progress does not depend on timing:
// the loop runs publisher, node receive, node timers and node sends in lock step, so every
// NAK is answered and its answer read before the node's next retry is considered.
#[test]
fn publisher_answers_naks_over_loopback() {
    let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    println!("RUNNEL_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/udp/repair#0").unwrap().key();
    let node_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    node_socket.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    let options = ClientOptions {
        publisher_key: Some(PublisherKey::generate()),
        signing: SigningMode::Batch { frames_per_root_max: 64 },
        verify: false,
        gso: true,
    };
    let mut publisher = UdpClient::connect_with(&link_to(node_socket.local_addr().unwrap(), 1472), options).unwrap();
    let publisher_address = loopback(publisher.local_addr().unwrap());
    let mut node = ClientCore::new(&link_to(publisher_address, 1472), CoreOptions { verify: true, link_seq_start: 1 });
    let period = rng.random_range(3..=8u64);
    let mut next_drop = rng.random_range(2..=2 * period - 2);
    let (mut received, mut dropped) = (0u64, 0u64);
    let count = 5_000u64;
    let mut published = 0u64;
    let mut delivered = Vec::new();
    let started = Instant::now();
    let mut buffer = vec![0u8; 1 << 16];
    let mut transmit_buffer = Vec::new();
    while (delivered.len() as u64) < count && started.elapsed() < Duration::from_secs(30) {
        if published < count {
            for _ in 0..100.min(count - published) {
                let mut payload = [0u8; 64];
                payload[..8].copy_from_slice(&published.to_le_bytes());
                publisher.publish(&part, &Outgoing::binary(1_700_000_000_000 + published, &payload)).unwrap();
                published += 1;
            }
            publisher.flush().unwrap();
        } else {
            publisher.poll().unwrap();
        }
        let now_us = started.elapsed().as_micros() as u64;
        // Everything the publisher sent is queued at the node's socket by now (loopback
        // sends complete synchronously); a read times out once it is drained.
        while let Ok((length, _)) = node_socket.recv_from(&mut buffer) {
            received += 1;
            if received == next_drop {
                dropped += 1;
                next_drop += rng.random_range(2..=2 * period - 2);
                continue;
            }
            node.handle_receive(now_us, &buffer[..length], &mut |d| delivered.push(d.sequence));
        }
        let now_us = started.elapsed().as_micros() as u64;
        if node.poll_timeout().is_some_and(|due| due <= now_us) {
            node.handle_timeout(now_us);
        }
        node.deliver_released(&mut |d| delivered.push(d.sequence));
        while let Some(transmit) = node.poll_transmit(&mut transmit_buffer) {
            assert_eq!(transmit.destination, publisher_address);
            for datagram in transmit_buffer.chunks(transmit.segment_size) {
                node_socket.send_to(datagram, publisher_address).unwrap();
            }
        }
    }
    publisher.linger(Duration::from_millis(10)).unwrap();
    let (sent, got) = (publisher.counters(), node.counters());
    println!("dropped {dropped} of {received} (every {period} on average)\npublisher {sent:?}\nnode {got:?}");
    assert_eq!(delivered, (0..count).collect::<Vec<_>>(), "every message exactly once, in order (seed {seed})");
    assert!(dropped > 0 && got.naks_sent > 0 && got.frames_repaired > 0);
    assert!(sent.naks_received > 0 && sent.repairs_sent > 0);
    assert_eq!(got.frames_lost + got.frames_bad_signature + sent.datagrams_send_failed, 0);
}

// Goal: the publisher thread batches adaptively. A message published while the thread is idle
// leaves on its own, with no flush call and no timer (each is received before the next is
// published: 20 messages, 20 frames); messages published flat out accumulate while the thread
// signs and leave in batches (far fewer frames than messages), every one delivered in order.
#[test]
fn publisher_thread_sends_at_once_when_idle_and_batches_under_load() {
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/udp/pipeline#0").unwrap().key();
    let sender_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let receiver_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender_link = link_to(receiver_socket.local_addr().unwrap(), 1472);
    let receiver_link = link_to(sender_socket.local_addr().unwrap(), 1472);
    let mut receiver = UdpClient::with_socket(receiver_socket, &receiver_link, ClientOptions::default()).unwrap();
    let options = ClientOptions {
        publisher_key: Some(PublisherKey::generate()),
        signing: SigningMode::Batch { frames_per_root_max: 64 },
        verify: false,
        gso: true,
    };
    let sender = UdpClient::with_socket(sender_socket, &sender_link, options).unwrap();
    let publisher = PublisherThread::spawn(sender, Duration::from_millis(50)).unwrap();
    let mut next = 0u64;
    let mut receive_until = |receiver: &mut UdpClient, count: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while next < count && Instant::now() < deadline {
            receiver
                .recv(Duration::from_millis(20), |delivery| {
                    assert_eq!(delivery.sequence, next, "in order, none missing");
                    next += 1;
                })
                .unwrap();
        }
        assert_eq!(next, count, "delivered");
    };
    const IDLE: u64 = 20;
    for sequence in 0..IDLE {
        publisher.publish(&part, &Outgoing::binary(1_700_000_000_000, &sequence.to_le_bytes())).unwrap();
        receive_until(&mut receiver, sequence + 1);
    }
    const LOADED: u64 = 20_000;
    for sequence in IDLE..IDLE + LOADED {
        publisher.publish(&part, &Outgoing::binary(1_700_000_000_000, &sequence.to_le_bytes())).unwrap();
    }
    receive_until(&mut receiver, IDLE + LOADED);
    let counters = publisher.finish().unwrap();
    println!("publisher {counters:?}");
    assert!(counters.frames_queued > IDLE, "the idle messages left one frame each");
    assert!(
        counters.frames_queued < IDLE + LOADED / 4,
        "{} frames for {LOADED} loaded messages: no batching",
        counters.frames_queued - IDLE
    );
}
