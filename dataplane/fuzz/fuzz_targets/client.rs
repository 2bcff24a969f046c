//! Fuzz target `client`: the client core's receive path over arbitrary node traffic.
//!
//! A [`ClientCore`] on link 7 (key 00 01 … 1f, the protocol test vectors' link) to a
//! one-shard node, subscribed to the test vectors' stream part. The input is a script:
//!
//! ```text
//! byte 0      options: bit 0 = verify signatures, bit 1 = rewrite link tags
//! then        repeated: u16 LE length, that many bytes = one receive buffer
//! ```
//!
//! Each receive advances the clock by 1 ms and runs due timeouts. With "rewrite link tags"
//! the tag of every datagram in the buffer is recomputed (walking `total_length`), so
//! mutated inputs reach replay windows, dedup, ordering and the joining of messages that span
//! frames. Oracles besides "never panics": every delivery's frame parses and holds the
//! delivered message (publisher, chain, sequence, timestamp, previous reference, group key
//! id); a whole message's payload is the one in the frame, a joined one ends with the frame's
//! piece, which is the message's last; no payload exceeds the protocol's maximum.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_client::{ClientCore, ClientLinkConfig, CoreOptions, Delivery};
use runnel_proto::frame::Frame;
use runnel_proto::linktag::{link_tag, LinkKey};
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::{HEADER_LENGTH, PAYLOAD_LENGTH_MAX, TAGGED_HEADER_LENGTH};

/// Bound on transmits drained per receive.
const TRANSMITS_PER_DRAIN_MAX: usize = 1024;

fn link_key() -> LinkKey {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = i as u8;
    }
    LinkKey(key)
}

/// Recomputes the link tag of every datagram in `buffer`, walking `total_length`.
fn rewrite_tags(buffer: &mut [u8], key: &LinkKey) {
    let mut at = 0;
    while buffer.len() - at >= HEADER_LENGTH {
        let header = &mut buffer[at..at + HEADER_LENGTH];
        let tag = link_tag(key, &header[..TAGGED_HEADER_LENGTH]);
        header[80..88].copy_from_slice(&tag.to_le_bytes());
        let total_length = u16::from_le_bytes([header[52], header[53]]) as usize;
        if total_length < HEADER_LENGTH {
            break;
        }
        at += total_length;
        if at > buffer.len() {
            break;
        }
    }
}

/// Checks one delivery against the frame it says carried it.
fn check_delivery(delivery: Delivery<'_>) {
    let frame = Frame::parse(delivery.frame).expect("a delivered frame parses");
    assert_eq!(frame.bytes.len(), delivery.frame.len(), "a delivered frame is exactly one frame");
    assert_eq!((frame.publisher(), frame.chain_id()), (delivery.publisher, delivery.chain_id));
    let message = frame.messages().find(|m| m.sequence == delivery.sequence).expect("the frame holds the delivered message");
    assert_eq!((message.timestamp_ms, message.previous), (delivery.timestamp_ms, delivery.previous));
    assert_eq!(
        (message.content_type, message.encryption, message.group_key_id),
        (delivery.content_type, delivery.encryption, delivery.group_key_id)
    );
    assert!(!message.continues, "a message is delivered with its last piece");
    if message.continuation {
        assert!(delivery.payload.ends_with(message.payload), "a joined payload ends with its last piece");
    } else {
        assert_eq!(delivery.payload, message.payload);
    }
    assert!(delivery.payload.len() <= PAYLOAD_LENGTH_MAX);
    assert_eq!(delivery.to_owned().payload(), delivery.payload);
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, mut input)) = data.split_first() else {
        return;
    };
    let key = link_key();
    let link =
        ClientLinkConfig { node: "127.0.0.1:7000".parse().expect("address"), node_shards: 1, link_id: 7, key, datagram_length_max: 1472 };
    let mut core = ClientCore::new(&link, CoreOptions { verify: options & 1 != 0, link_seq_start: 1 });
    let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sensors/temperature#0").expect("valid stream part");
    let mut now_us = 1_000_000;
    core.subscribe(now_us, &part.key()).expect("one subscription fits");
    let mut receive_buffer = Vec::new();
    let mut transmit_buffer = Vec::new();
    while let Some((length, rest)) = input.split_first_chunk::<2>() {
        let length = (u16::from_le_bytes(*length) as usize).min(rest.len());
        receive_buffer.clear();
        receive_buffer.extend_from_slice(&rest[..length]);
        input = &rest[length..];
        if options & 2 != 0 {
            rewrite_tags(&mut receive_buffer, &key);
        }
        now_us += 1000;
        core.handle_receive(now_us, &receive_buffer, &mut check_delivery);
        if core.poll_timeout().is_some_and(|due_us| due_us <= now_us) {
            core.handle_timeout(now_us);
        }
        core.flush();
        for _ in 0..TRANSMITS_PER_DRAIN_MAX {
            if core.poll_transmit(&mut transmit_buffer).is_none() {
                break;
            }
        }
    }
});
