use runnel_dataplane::client::{ClientLinkConfig, ClientOptions, Outgoing, SigningMode, UdpClient};
use runnel_dataplane::crypto::PublisherKey;
use runnel_dataplane::linktag::LinkKey;
use runnel_dataplane::stream::StreamPart;
use std::time::{Duration, Instant};

fn link_to(node: std::net::SocketAddr, datagram_length_max: usize) -> ClientLinkConfig {
    ClientLinkConfig { node, node_shards: 1, link_id: 100, key: LinkKey([3; 32]), datagram_length_max }
}

/// Publishes `count` messages from one UdpClient to another over loopback and checks that
/// the receiver delivers all of them, in order, with verified signatures. Returns the
/// receiver's elapsed time for the messages.
fn exchange(signing: SigningMode, gso: bool, count: u64, payload_length: usize, datagram_length_max: usize) -> Duration {
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/udp/test#0").unwrap().key();
    // The receiver's "node" is never contacted (it does not subscribe); the sender's node is
    // the receiver's socket, with one shard, so everything goes to that one port.
    let receiver_link = link_to("127.0.0.1:9".parse().unwrap(), datagram_length_max);
    let mut receiver = UdpClient::connect(&receiver_link).unwrap();
    let sender_link =
        link_to(receiver.local_addr().unwrap().to_string().replace("0.0.0.0", "127.0.0.1").parse().unwrap(), datagram_length_max);
    let key = PublisherKey::generate();
    let address = key.address();
    let options = ClientOptions { publisher_key: Some(key), signing, verify: true, gso };
    let sender_thread = std::thread::spawn(move || {
        let mut sender = UdpClient::connect_with(&sender_link, options).unwrap();
        let payload = vec![0x42u8; payload_length];
        let burst = (128 * 1024 / (payload_length as u64 + 450)).max(1);
        for i in 0..count {
            let mut message = payload.clone();
            message[..8].copy_from_slice(&i.to_le_bytes());
            sender.publish(&part, &Outgoing::binary(1_700_000_000_000 + i, &message)).unwrap();
            // UDP has no flow control: pace bursts of ~128 KiB per millisecond so the
            // receiver's socket buffer (8 MiB) survives scheduling stalls on a busy machine.
            if i % burst == burst - 1 {
                sender.flush().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sender.flush().unwrap();
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
    assert_eq!(received.records_delivered, count);
    assert_eq!(received.records_bad_signature + received.datagrams_bad_tag + received.datagrams_replayed, 0);
    assert_eq!(sent.datagrams_send_failed, 0);
    assert_eq!(sent.datagrams_sent, received.datagrams_received, "no datagram lost on loopback");
    elapsed
}

// Goal: two clients with the same link key exchange batch-signed messages over real
// loopback UDP with GSO sends and GRO receives; all arrive in order with valid signatures.
#[test]
fn batch_signed_messages_over_loopback_with_gso() {
    exchange(SigningMode::Batch { batch_size_max: 256 }, true, 50_000, 100, 1472);
}

// Goal: the same with per-message signatures and GSO disabled (one send per datagram, the
// fallback path), and with large messages that are fragmented and reassembled.
#[test]
fn per_message_signatures_without_gso_and_fragments() {
    exchange(SigningMode::PerMessage, false, 2_000, 100, 1472);
    exchange(SigningMode::Batch { batch_size_max: 16 }, true, 200, 200 * 1024, 1472);
}
