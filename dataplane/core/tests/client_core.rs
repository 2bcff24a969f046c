//! ClientCore and Publisher against each other, a relay, and lossy in-memory hops (protocol v2:
//! frames). Randomised tests take their seed from `RUNNEL_SEED` (else a fixed default) and
//! print it.

use runnel_core::client::{
    ClientCore, ClientLinkConfig, CoreOptions, Delivery, Outgoing, OwnedDelivery, Publisher, SigningMode, CHAINS_MAX, GSO_BYTES_MAX,
    GSO_SEGMENTS_MAX, NAK_DELAY_US, NAK_RETRIES_MAX, REORDER_BYTES_MAX, REORDER_SEQUENCES_MAX, TAIL_PROBES_MAX, TAIL_PROBE_US,
    TAIL_QUERIES_MAX, TAIL_QUERY_US,
};
use runnel_core::counters::Counter;
use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
use runnel_core::relay::{Relay, RelayConfig, Transmit};
use runnel_proto::crypto::{PublisherKey, Verifier, VerifyCost};
use runnel_proto::frame::{
    split_frames, trailer_length, EntryFields, Frame, FrameStart, FrameWriter, SignatureKind, FRAME_FLAG_CONTINUES, FRAME_HEADER_LENGTH,
    MESSAGE_ENTRY_LENGTH, PROOF_ENTRY_LENGTH,
};
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::testing::{seed, Rng};
use runnel_proto::wire::{
    split_datagrams, ContentType, Datagram, Encryption, Kind, DATAGRAM_LENGTH_DEFAULT, FLAG_REPAIR, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH,
    PAYLOAD_LENGTH_MAX, SIGNATURE_LENGTH,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

const TIMESTAMP_MS: u64 = 1_700_000_000_000;

fn link(datagram_length_max: usize) -> ClientLinkConfig {
    ClientLinkConfig { node: "127.0.0.1:7000".parse().unwrap(), node_shards: 2, link_id: 100, key: LinkKey([7; 32]), datagram_length_max }
}

fn part() -> StreamPartKey {
    StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/client/test#0").unwrap().key()
}

/// A fixed publisher key (signatures are deterministic, so every run sends the same bytes).
fn key(n: u64) -> PublisherKey {
    PublisherKey::from_hex(&format!("{n:064x}")).unwrap()
}

/// Uniform in `range`.
fn between(rng: &mut Rng, range: RangeInclusive<u64>) -> u64 {
    range.start() + rng.below(range.end() - range.start() + 1)
}

/// A message's payload: its sequence (8 bytes, little-endian), then a pattern of the
/// sequence and position, so that a payload joined from the wrong pieces or cut short never
/// passes for the right one.
fn payload_of(sequence: u64, length: usize) -> Vec<u8> {
    let mut payload: Vec<u8> = (0..length).map(|i| (sequence as usize * 131 + i * 7 + i / 251) as u8).collect();
    let head = length.min(8);
    payload[..head].copy_from_slice(&sequence.to_le_bytes()[..head]);
    payload
}

/// The frames laid back to back in `bytes` (a publisher's output), each as its own bytes.
fn frames_in(bytes: &[u8]) -> Vec<Vec<u8>> {
    split_frames(bytes).map(|frame| frame.expect("the publisher writes valid frames").bytes.to_vec()).collect()
}

/// For each message sequence (from 0), the frame that carries its last piece.
fn carrying_frames(frames: &[Vec<u8>]) -> Vec<&[u8]> {
    let mut carriers = Vec::new();
    for bytes in frames {
        for message in Frame::parse(bytes).unwrap().messages() {
            if !message.continues {
                assert_eq!(message.sequence, carriers.len() as u64);
                carriers.push(&bytes[..]);
            }
        }
    }
    carriers
}

// Goal: in both signing modes a publisher's frames verify with crypto::Verifier alone; frame
// sequences are contiguous from 0; message sequences are contiguous from 0 across frames (a
// message spanning frames keeps its sequence and previous ref in every piece) and each
// previous ref points at the message before; publish only queues until flush, or until a full
// batch's worth of bytes is pending; per-message mode pays an ECDSA per message, batch mode
// one per root of at most frames_per_root_max frames.
#[test]
fn publisher_frames_verify_and_chain() {
    let key = key(1);
    let frame_length_max = DATAGRAM_LENGTH_DEFAULT - HEADER_LENGTH;
    for mode in [SigningMode::PerMessage, SigningMode::Batch { frames_per_root_max: 8 }] {
        let mut publisher = Publisher::with_chain_id(key.clone(), part(), mode, 77);
        publisher.set_frame_length_max(frame_length_max);
        let frames_per_root_max = match mode {
            SigningMode::PerMessage => 64,
            SigningMode::Batch { frames_per_root_max } => frames_per_root_max,
        };
        // Every 50th message is larger than a frame, a run of 90 is empty (entries without a
        // byte of payload fill frames to their last bytes); the rest are small JSON.
        let payloads: Vec<Vec<u8>> = (0..300usize)
            .map(|i| match i % 50 {
                _ if (100..190).contains(&i) => Vec::new(),
                7 => payload_of(i as u64, 3000),
                _ => format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 13 % 180)).into_bytes(),
            })
            .collect();
        let (mut frames, mut pending, mut pending_bytes, mut flushes, mut auto_flushes) = (Vec::new(), 0, 0, 0, 0);
        for (i, payload) in payloads.iter().enumerate() {
            publisher.publish(&Outgoing::json(TIMESTAMP_MS + i as u64 / 3, payload)).unwrap();
            pending += 1;
            pending_bytes += MESSAGE_ENTRY_LENGTH + payload.len() + SIGNATURE_LENGTH;
            let mut flushed = false;
            if pending_bytes >= frames_per_root_max * frame_length_max {
                (pending, pending_bytes, auto_flushes, flushed) = (0, 0, auto_flushes + 1, true);
            }
            if i % 97 == 96 {
                publisher.flush();
                (pending, pending_bytes, flushes, flushed) = (0, 0, flushes + 1, true);
            }
            assert_eq!(publisher.pending_count(), pending, "{mode:?} after message {i}");
            let written = frames_in(publisher.frames());
            assert_eq!(written.len(), publisher.frame_count());
            assert_eq!(!written.is_empty(), flushed, "{mode:?}: frames appear on a flush only");
            frames.extend(written);
            publisher.clear_frames();
        }
        publisher.flush();
        flushes += 1;
        frames.extend(frames_in(publisher.frames()));
        assert_eq!(publisher.next_sequence(), 300);
        assert_eq!(auto_flushes > 0, matches!(mode, SigningMode::Batch { .. }), "{mode:?}: a full batch flushes by itself");

        let mut verifier = Verifier::default();
        let (mut next_message, mut previous, mut open, mut joined) = (0u64, None, None, Vec::new());
        let (mut ecdsa, mut roots) = (0, Vec::<([u8; SIGNATURE_LENGTH], usize)>::new());
        for (index, bytes) in frames.iter().enumerate() {
            let frame = Frame::parse(bytes).unwrap();
            assert_eq!(frame.sequence(), index as u64, "{mode:?}");
            assert_eq!((frame.chain_id(), frame.publisher()), (77, key.address()));
            let cost = verifier.verify(&part(), &frame).unwrap_or_else(|e| panic!("{mode:?} frame {index}: {e:?}"));
            match frame.trailer() {
                None => {
                    assert_eq!(mode, SigningMode::PerMessage, "batch mode writes batch frames only");
                    assert_eq!(cost, VerifyCost::Ecdsa { signatures: frame.message_count() });
                }
                // A root starts at leaf 0 and pays the one ECDSA; its later leaves hit the cache.
                Some((signature, _)) if frame.leaf_index() == 0 => {
                    assert_eq!(cost, VerifyCost::Ecdsa { signatures: 1 }, "{mode:?} frame {index}");
                    roots.push((*signature, 1));
                }
                Some((signature, _)) => {
                    let (root_signature, leaves) = roots.last_mut().expect("a batch starts at leaf 0");
                    assert_eq!((*root_signature, *leaves), (*signature, frame.leaf_index()), "{mode:?} frame {index}");
                    *leaves += 1;
                    assert_eq!(cost, VerifyCost::CachedRoot);
                }
            }
            if let VerifyCost::Ecdsa { signatures } = cost {
                ecdsa += signatures as usize;
            }
            for message in frame.messages() {
                if message.continuation {
                    assert_eq!(open, Some(message.sequence), "{mode:?}: a piece continues the message before it");
                } else {
                    assert_eq!((open, message.sequence), (None, next_message), "{mode:?} frame {index}");
                }
                assert_eq!(message.previous, previous, "{mode:?} message {}", message.sequence);
                joined.extend_from_slice(message.payload);
                if message.continues {
                    open = Some(message.sequence);
                    continue;
                }
                assert_eq!(std::mem::take(&mut joined), payloads[message.sequence as usize], "{mode:?} message {}", message.sequence);
                previous = Some((message.timestamp_ms, message.sequence));
                (open, next_message) = (None, next_message + 1);
            }
        }
        assert_eq!((next_message, open), (300, None));
        assert!(roots.iter().all(|(_, leaves)| *leaves <= frames_per_root_max));
        let spanning = payloads.iter().filter(|p| p.len() > 1000).count();
        let batch_frames: usize = roots.iter().map(|(_, leaves)| leaves).sum();
        println!(
            "{mode:?}: {} frames, {} roots over {batch_frames} batch frames, {ecdsa} ECDSA, {flushes} flushes",
            frames.len(),
            roots.len()
        );
        match mode {
            SigningMode::PerMessage => {
                // Only the messages larger than a frame are batch-signed, each under its own root(s).
                assert_eq!(ecdsa, 300 - spanning + roots.len());
                assert_eq!(roots.len(), spanning);
                assert!(batch_frames >= 3 * spanning);
            }
            SigningMode::Batch { frames_per_root_max } => {
                // One ECDSA per root; a root is cut short only at a flush or where the
                // publisher's estimate of the frames a batch needs fell short.
                assert_eq!(ecdsa, roots.len());
                assert_eq!(batch_frames, frames.len());
                assert!(roots.len() <= frames.len().div_ceil(frames_per_root_max) + 2 * (flushes + auto_flushes), "{} roots", roots.len());
            }
        }
    }
}

/// Drains every transmit, checking its GSO shape; returns (transmit, bytes) pairs.
fn drain(core: &mut ClientCore, datagram_length_max: usize) -> Vec<(Transmit, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buffer = Vec::new();
    while let Some(transmit) = core.poll_transmit(&mut buffer) {
        assert_eq!(buffer.len(), transmit.length);
        assert!(transmit.segment_size <= datagram_length_max);
        assert!(transmit.segments <= GSO_SEGMENTS_MAX && transmit.length <= GSO_BYTES_MAX);
        assert!(transmit.length > (transmit.segments - 1) * transmit.segment_size);
        assert!(transmit.length <= transmit.segments * transmit.segment_size);
        out.push((transmit, buffer.clone()));
    }
    out
}

/// Queues what `publisher` wrote into `sender` at `now_us`, noting each frame in `sent`.
fn queue_published(sender: &mut ClientCore, publisher: &mut Publisher, now_us: u64, sent: &mut Vec<Vec<u8>>) {
    let queued = sender.queue_frames(now_us, &part(), publisher.frames()).unwrap();
    assert_eq!(queued, publisher.frame_count());
    sent.extend(frames_in(publisher.frames()));
    publisher.clear_frames();
}

// Goal: ClientCore packing: no datagram exceeds datagram_length_max; every frame appears
// exactly once, whole and in order, across the Transmits, followed only by zero padding; all
// but the last datagram of each GSO run are padded to the segment size; a 200 KiB message
// spans many frames; link sequences increase per destination; and a second core with the same
// link key delivers every message in order, whole, with valid signatures, naming the frame
// that carried its last piece; replays and bad tags are dropped and counted.
#[test]
fn core_packs_frames_and_delivers() {
    let seed = seed(0x9ac4);
    let mut rng = Rng::new(seed);
    let datagram_length_max = 1472;
    let link = link(datagram_length_max);
    let key = key(2);
    let mut publisher = Publisher::with_chain_id(key.clone(), part(), SigningMode::Batch { frames_per_root_max: 64 }, 21);
    publisher.set_frame_length_max(datagram_length_max - HEADER_LENGTH);
    let mut sender = ClientCore::new(&link, CoreOptions { verify: true, link_seq_start: 1000 });
    let (mut expected, mut lengths, mut transmits) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..600u64 {
        let length = match i {
            300 => 200 * 1024,
            _ if rng.below(50) == 0 => between(&mut rng, 1500..=4999) as usize,
            _ => between(&mut rng, 0..=399) as usize,
        };
        lengths.push(length);
        publisher.publish(&Outgoing::binary(TIMESTAMP_MS + i, &payload_of(i, length))).unwrap();
        if i.is_multiple_of(97) {
            publisher.flush();
        }
        queue_published(&mut sender, &mut publisher, 0, &mut expected);
        if rng.below(40) == 0 {
            sender.flush();
            transmits.extend(drain(&mut sender, datagram_length_max));
        }
    }
    publisher.flush();
    queue_published(&mut sender, &mut publisher, 0, &mut expected);
    sender.flush();
    transmits.extend(drain(&mut sender, datagram_length_max));
    assert_eq!(sender.counters().frames_queued, expected.len() as u64);
    let pieces = expected.iter().filter(|f| Frame::parse(f).unwrap().flags() & FRAME_FLAG_CONTINUES != 0).count();
    assert!(pieces > 200 * 1024 / datagram_length_max, "large messages span frames ({pieces} frames continue)");

    // Walk every datagram: shape, padding, order, frames whole.
    let destination = link.destination_of(&part());
    let (mut seen, mut last_link_seq, mut datagram_count) = (Vec::new(), 999, 0);
    for (transmit, bytes) in &transmits {
        assert_eq!(transmit.destination, destination);
        let datagrams: Vec<Datagram> = split_datagrams(bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(datagrams.len(), transmit.segments);
        datagram_count += datagrams.len();
        for (index, datagram) in datagrams.iter().enumerate() {
            assert!(datagram.total_length() <= datagram_length_max);
            if index + 1 < datagrams.len() {
                // GSO cuts at segment_size: every segment but the last has exactly that size
                // (datagram_length_max when padded; a shorter closed datagram can lead a run).
                assert_eq!(datagram.total_length(), transmit.segment_size, "non-last GSO segment has the segment size");
            }
            assert!(datagram.tag_matches(&link.key));
            assert_eq!(datagram.link_id(), 100);
            assert_eq!(datagram.link_seq(), last_link_seq + 1);
            last_link_seq = datagram.link_seq();
            assert_eq!(datagram.flags(), FLAG_SINGLE_PUBLISHER);
            assert_eq!(datagram.header.publisher, key.address());
            assert_eq!(datagram.kind, Kind::Data);
            let mut end = HEADER_LENGTH;
            for frame in datagram.frames() {
                let frame = frame.unwrap();
                end += frame.bytes.len();
                seen.push(frame.bytes.to_vec());
            }
            assert!(datagram.bytes[end..].iter().all(|byte| *byte == 0), "only zero padding follows the frames");
        }
    }
    assert!(seen == expected, "every frame exactly once, whole and in order: {} seen, {} queued", seen.len(), expected.len());
    assert!(transmits.iter().any(|(t, _)| t.segments > 20), "long GSO runs are built");
    assert_eq!(sender.counters().datagrams_sent, datagram_count as u64);

    // The receiving side: a core with the same link (tag check is symmetric).
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered: Vec<(OwnedDelivery, Vec<u8>)> = Vec::new();
    for (_, bytes) in &transmits {
        receiver.handle_receive(0, bytes, &mut |d| delivered.push((d.to_owned(), d.frame.to_vec())));
    }
    let carriers = carrying_frames(&expected);
    assert_eq!(delivered.len(), 600);
    for (i, (delivery, frame)) in delivered.iter().enumerate() {
        let sequence = i as u64;
        assert_eq!(delivery.sequence, sequence);
        assert!(delivery.payload() == payload_of(sequence, lengths[i]), "message {i} whole ({} bytes)", delivery.payload.len());
        assert!(frame[..] == *carriers[i], "message {i} names the frame of its last piece");
        assert_eq!((delivery.publisher, delivery.stream_part_key, delivery.chain_id), (key.address(), part(), 21));
        assert_eq!((delivery.timestamp_ms, delivery.content_type), (TIMESTAMP_MS + sequence, ContentType::Binary));
        assert_eq!(delivery.previous, sequence.checked_sub(1).map(|p| (TIMESTAMP_MS + p, p)));
    }
    let counters = receiver.counters();
    assert_eq!((counters.messages_delivered, counters.messages_incomplete, counters.frames_held), (600, 0, 0));
    assert_eq!(counters.frames_bad_signature + counters.frames_duplicate + counters.datagrams_bad_tag, 0);

    // Replays of everything are dropped and counted; nothing is delivered twice.
    for (_, bytes) in &transmits {
        receiver.handle_receive(0, bytes, &mut |_| panic!("replay delivered"));
    }
    assert_eq!(receiver.counters().datagrams_replayed, datagram_count as u64);

    // A wrong tag (flipped header byte) and a foreign link key are dropped and counted.
    let mut tampered = transmits[0].1[..transmits[0].0.segment_size].to_vec();
    tampered[9] ^= 1; // link sequence: covered by the tag
    let mut fresh = ClientCore::new(&link, CoreOptions::default());
    fresh.handle_receive(0, &tampered, &mut |_| panic!("bad tag delivered"));
    let foreign = ClientLinkConfig { key: LinkKey([8; 32]), ..link.clone() };
    let mut stranger = ClientCore::new(&foreign, CoreOptions::default());
    stranger.handle_receive(0, &transmits[0].1, &mut |_| panic!("foreign key delivered"));
    assert_eq!(fresh.counters().datagrams_bad_tag, 1);
    assert_eq!(stranger.counters().datagrams_bad_tag, transmits[0].0.segments as u64);
}

// Goal: a frame with a bad signature is dropped and counted without marking its sequence; a
// duplicate frame arriving in a fresh datagram (new link sequence) is suppressed per
// (publisher, chain, frame sequence) before any signature work: a forged copy of a frame
// already delivered counts as a duplicate, not as a bad signature.
#[test]
fn bad_signatures_and_duplicates_are_counted() {
    let link = link(1472);
    let mut publisher = Publisher::with_chain_id(key(3), part(), SigningMode::PerMessage, 1);
    publisher.publish(&Outgoing::json(1, b"{\"a\":1}")).unwrap();
    publisher.flush();
    let good = publisher.frames().to_vec();
    let mut forged = good.clone();
    // The first payload byte of the first message: after the frame header, its entry and
    // its (empty) group key id.
    forged[FRAME_HEADER_LENGTH + MESSAGE_ENTRY_LENGTH] ^= 1;
    assert_eq!(Frame::parse(&forged).unwrap().messages().next().unwrap().payload[0], b'{' ^ 1);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered = Vec::new();
    for frames in [&forged, &good, &good, &forged] {
        sender.queue_frames(0, &part(), frames).unwrap();
        sender.flush();
        for (_, bytes) in drain(&mut sender, 1472) {
            receiver.handle_receive(0, &bytes, &mut |d| delivered.push(d.payload.to_vec()));
        }
    }
    assert_eq!(delivered, vec![b"{\"a\":1}".to_vec()]);
    let counters = receiver.counters();
    assert_eq!((counters.frames_bad_signature, counters.frames_duplicate, counters.messages_delivered), (1, 2, 1));
    assert_eq!(counters.datagrams_replayed, 0);
}

// Goal: a batch frame corrupted anywhere — a payload byte, a proof entry, the root signature —
// is rejected (frames_bad_signature) whether it is its batch's first frame (the root not yet
// authenticated) or comes after its root was cached, and it does not poison the root: the
// other frames of its batch verify and deliver, those behind it once the receiver has NAKed
// the corrupted frame's sequence and the sender's repair ring has answered with the good copy.
#[test]
fn corrupted_batch_frame_is_rejected_and_its_batch_delivers() {
    let link = link(1472);
    let mut publisher = Publisher::with_chain_id(key(4), part(), SigningMode::Batch { frames_per_root_max: 8 }, 5);
    // Frame 0 (a root of its own) starts the chain at the receiver; the batch under test follows.
    let mut lengths = vec![100];
    publisher.publish(&Outgoing::binary(TIMESTAMP_MS, &payload_of(0, lengths[0]))).unwrap();
    publisher.flush();
    for sequence in 1..9u64 {
        lengths.push(1000);
        publisher.publish(&Outgoing::binary(TIMESTAMP_MS + sequence, &payload_of(sequence, 1000))).unwrap();
    }
    publisher.flush();
    let frames = frames_in(publisher.frames());
    let count = frames.len() as u64;
    let batch: Vec<Frame> = frames[1..].iter().map(|f| Frame::parse(f).unwrap()).collect();
    assert!(batch.len() >= 4, "{count} frames");
    for (leaf, frame) in batch.iter().enumerate() {
        assert_eq!((frame.leaf_index(), frame.trailer().unwrap().0), (leaf, batch[0].trailer().unwrap().0), "one root");
        assert_eq!(frame.header.proof_depth, 3, "the offsets below assume a proof of 3 entries");
    }
    let corruptions: [(&str, ByteInFrame); 3] = [
        ("payload byte", |_| FRAME_HEADER_LENGTH + MESSAGE_ENTRY_LENGTH),
        ("proof entry", |length| length - PROOF_ENTRY_LENGTH + 3),
        ("root signature", |length| length - trailer_length(3) + 10),
    ];
    let carriers = carrying_frames(&frames);
    let expected: Vec<(u64, Vec<u8>)> = (0..lengths.len() as u64).map(|s| (s, payload_of(s, lengths[s as usize]))).collect();
    for target in [1, count / 2, count - 1] {
        for (what, offset) in corruptions {
            let context = format!("{what} of frame {target} of {count}");
            let mut sender = ClientCore::new(&link, CoreOptions::default());
            let mut receiver = ClientCore::new(&link, CoreOptions::default());
            sender.queue_frames(0, &part(), publisher.frames()).unwrap();
            sender.flush();
            let mut delivered = Vec::new();
            for (_, mut bytes) in drain(&mut sender, 1472) {
                corrupt_frame(&mut bytes, target, offset);
                receiver.handle_receive(0, &bytes, &mut |d| delivered.push((d.sequence, d.payload.to_vec())));
            }
            let counters = receiver.counters().clone();
            assert_eq!((counters.frames_bad_signature, counters.datagrams_bad_tag), (1, 0), "{context}");
            assert_eq!(counters.frames_held, count - 1 - target, "{context}: the frames behind it verify and wait");
            let before = carriers.iter().take_while(|carrier| Frame::parse(carrier).unwrap().sequence() < target).count();
            assert_eq!(delivered.len(), before, "{context}: what lies wholly before it is delivered at once");

            // Time goes on: the receiver NAKs the hole after NAK_DELAY_US (the last frame leaves
            // no hole: its tail query after TAIL_QUERY_US asks for it), the sender answers.
            let mut naks = Vec::new();
            for now_us in (1..=100).map(|ms| ms * 1000) {
                let mut on_delivery = |d: Delivery<'_>| delivered.push((d.sequence, d.payload.to_vec()));
                for core in [&mut sender, &mut receiver] {
                    if core.poll_timeout().is_some_and(|due| due <= now_us) {
                        core.handle_timeout(now_us);
                    }
                }
                receiver.deliver_released(&mut on_delivery);
                for (transmit, bytes) in drain(&mut receiver, 1472) {
                    naks.extend(nak_ranges(&[(transmit, bytes.clone())]));
                    sender.handle_receive(now_us, &bytes, &mut |_| panic!("NAKs carry no messages"));
                }
                for (_, bytes) in drain(&mut sender, 1472) {
                    receiver.handle_receive(now_us, &bytes, &mut on_delivery);
                }
            }
            assert_eq!(naks.first(), Some(&(target, target)), "{context}: asked for by frame sequence");
            assert!(delivered == expected, "{context}: every message once, whole, in order");
            let counters = receiver.counters();
            assert_eq!((counters.frames_repaired, counters.frames_bad_signature, counters.messages_incomplete), (1, 1, 0), "{context}");
        }
    }
}

/// Which byte of a frame to corrupt, given the frame's length.
type ByteInFrame = fn(usize) -> usize;

/// Flips a bit of frame `sequence` at `offset(frame length)` wherever it lies in the datagrams
/// of `buffer` (the link tag covers the header only, so the datagram still passes).
fn corrupt_frame(buffer: &mut [u8], sequence: u64, offset: ByteInFrame) {
    let mut at = None;
    for datagram in split_datagrams(buffer) {
        for frame in datagram.unwrap().frames() {
            let frame = frame.unwrap();
            if frame.sequence() == sequence {
                at = Some(frame.bytes.as_ptr() as usize - buffer.as_ptr() as usize + offset(frame.bytes.len()));
            }
        }
    }
    if let Some(at) = at {
        buffer[at] ^= 0x40;
    }
}

// Goal: subscribe sends a Subscribe to the owning shard now and again each second,
// unsubscribe sends an Unsubscribe and stops the refresh; control datagrams are tagged.
#[test]
fn subscriptions_refresh_every_second() {
    let link = link(1472);
    let mut core = ClientCore::new(&link, CoreOptions::default());
    let owner = link.destination_of(&part());
    core.subscribe(5, &part()).unwrap();
    let mut kinds = HashMap::new();
    let mut note = |core: &mut ClientCore| {
        for (transmit, bytes) in drain(core, 1472) {
            assert_eq!(transmit.destination, owner);
            for datagram in split_datagrams(&bytes) {
                let datagram = datagram.unwrap();
                assert!(datagram.tag_matches(&link.key));
                assert_eq!(datagram.stream_part_key(), part());
                *kinds.entry(datagram.kind as u8).or_insert(0) += 1;
            }
        }
    };
    note(&mut core);
    assert_eq!(core.poll_timeout(), Some(1_000_005));
    core.handle_timeout(999_999);
    note(&mut core);
    core.handle_timeout(1_000_005);
    note(&mut core);
    core.handle_timeout(2_000_005);
    note(&mut core);
    core.unsubscribe(&part());
    note(&mut core);
    assert_eq!(core.poll_timeout(), None);
    assert_eq!(kinds.get(&(Kind::Subscribe as u8)), Some(&3));
    assert_eq!(kinds.get(&(Kind::Unsubscribe as u8)), Some(&1));
    assert_eq!(core.counters().subscribes_sent, 3);
}

/// How a [`Hop`] loses datagrams.
#[derive(Clone, Copy, Debug)]
enum Loss {
    None,
    /// Every `period`-th datagram on average, never two in a row: the distance to the next
    /// drop is drawn from 2..=2·period−2. A strictly periodic drop resonates with NAK answers
    /// of a fixed shape and can hit the same repair every time, which no real network does.
    Spaced {
        period: u64,
    },
    /// Each datagram on its own with this probability (bursts happen).
    Random {
        probability: f64,
    },
}

/// One direction of an in-memory hop, seeded. Its first datagram always gets through: a
/// receiving client starts a chain at the first frame it sees, so a lost first datagram is
/// outside what repair promises.
struct Hop {
    loss: Loss,
    next_drop: u64,
    count: u64,
    dropped: u64,
    rng: Rng,
}

impl Hop {
    fn new(rng: &mut Rng, loss: Loss) -> Self {
        let mut hop = Self { loss, next_drop: 0, count: 0, dropped: 0, rng: Rng::new(rng.next_u64()) };
        if let Loss::Spaced { period } = loss {
            hop.next_drop = between(&mut hop.rng, 2..=2 * period - 2);
        }
        hop
    }

    /// A spaced hop whose period is drawn from `periods`.
    fn spaced(rng: &mut Rng, periods: RangeInclusive<u64>) -> Self {
        let period = between(rng, periods);
        Self::new(rng, Loss::Spaced { period })
    }

    fn drops_next(&mut self) -> bool {
        self.count += 1;
        let drop = match self.loss {
            Loss::None => false,
            Loss::Spaced { period } if self.count == self.next_drop => {
                self.next_drop += between(&mut self.rng, 2..=2 * period - 2);
                true
            }
            Loss::Spaced { .. } => false,
            Loss::Random { probability } => self.count > 1 && self.rng.chance(probability),
        };
        self.dropped += drop as u64;
        drop
    }

    /// The datagrams of one transmit that get through.
    fn carry<'a>(&mut self, transmit: &Transmit, bytes: &'a [u8]) -> Vec<&'a [u8]> {
        bytes.chunks(transmit.segment_size).filter(|_| !self.drops_next()).collect()
    }
}

const RELAY_ADDRESS: &str = "10.78.0.1:7000";
const PUBLISHER_ADDRESS: &str = "10.78.0.2:5000";
const SUBSCRIBER_ADDRESS: &str = "10.78.0.3:5000";

fn client_link(link_id: u32, key: u8) -> (ClientLinkConfig, LinkConfig) {
    let client = ClientLinkConfig {
        node: RELAY_ADDRESS.parse().unwrap(),
        node_shards: 1,
        link_id,
        key: LinkKey([key; 32]),
        datagram_length_max: 1472,
    };
    let node = LinkConfig {
        id: link_id,
        peer_link_id: None,
        key: LinkKey([key; 32]),
        role: LinkRole::Client,
        peer: None,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    };
    (client, node)
}

/// A publishing ClientCore and a subscribing ClientCore, either each other's peers or both
/// clients of a relay (verify all), in memory, with time in 1 ms ticks.
struct Net {
    now_us: u64,
    sender: ClientCore,
    subscriber: ClientCore,
    relay: Option<Relay>,
    /// Without a relay: publisher→subscriber, subscriber→publisher. With one:
    /// publisher→relay, relay→publisher, subscriber→relay, relay→subscriber.
    hops: Vec<Hop>,
    delivered: Vec<OwnedDelivery>,
    buffer: Vec<u8>,
}

impl Net {
    /// The two cores as each other's peers over two hops.
    fn loopback(hops: [Hop; 2]) -> Self {
        let link = link(1472);
        Self {
            now_us: 0,
            sender: ClientCore::new(&link, CoreOptions { verify: false, link_seq_start: 1 }),
            subscriber: ClientCore::new(&link, CoreOptions { verify: true, link_seq_start: 1 }),
            relay: None,
            hops: hops.into(),
            delivered: Vec::new(),
            buffer: Vec::new(),
        }
    }

    /// The two cores as clients of a relay over four hops; the subscriber has subscribed
    /// (its first Subscribe goes through unharmed: subscribing is not what these tests are about).
    fn through_relay(hops: [Hop; 4]) -> Self {
        let (publisher_link, publisher_node_link) = client_link(100, 5);
        let (subscriber_link, subscriber_node_link) = client_link(200, 6);
        let mut relay = Relay::new(RelayConfig::new(0, 1, 1472, VerifyPolicy::All));
        relay.add_link(&publisher_node_link);
        relay.add_link(&subscriber_node_link);
        let mut subscriber = ClientCore::new(&subscriber_link, CoreOptions { verify: true, link_seq_start: 1 });
        let mut buffer = Vec::new();
        subscriber.subscribe(0, &part()).unwrap();
        while let Some(transmit) = subscriber.poll_transmit(&mut buffer) {
            assert_eq!(transmit.destination, RELAY_ADDRESS.parse::<SocketAddr>().unwrap());
            relay.handle_receive(0, SUBSCRIBER_ADDRESS.parse().unwrap(), &buffer);
        }
        Self {
            now_us: 0,
            sender: ClientCore::new(&publisher_link, CoreOptions { verify: false, link_seq_start: 1 }),
            subscriber,
            relay: Some(relay),
            hops: hops.into(),
            delivered: Vec::new(),
            buffer,
        }
    }

    /// Queues what `publisher` wrote, now, and closes the open datagram.
    fn publish(&mut self, publisher: &mut Publisher) {
        self.sender.queue_frames(self.now_us, &part(), publisher.frames()).unwrap();
        publisher.clear_frames();
        self.sender.flush();
    }

    /// One millisecond: due timers run, then every datagram sent crosses its hop once.
    fn tick(&mut self) {
        self.now_us += 1000;
        let Self { now_us, sender, subscriber, relay, hops, delivered, buffer } = self;
        let now_us = *now_us;
        drive_timers(sender, now_us, &mut Vec::new());
        drive_timers(subscriber, now_us, delivered);
        let Some(relay) = relay else {
            while let Some(transmit) = sender.poll_transmit(buffer) {
                for datagram in hops[0].carry(&transmit, buffer) {
                    subscriber.handle_receive(now_us, datagram, &mut |d| delivered.push(d.to_owned()));
                }
            }
            while let Some(transmit) = subscriber.poll_transmit(buffer) {
                for datagram in hops[1].carry(&transmit, buffer) {
                    sender.handle_receive(now_us, datagram, &mut |_| panic!("the publisher receives only NAKs"));
                }
            }
            return;
        };
        let (publisher_address, subscriber_address): (SocketAddr, SocketAddr) =
            (PUBLISHER_ADDRESS.parse().unwrap(), SUBSCRIBER_ADDRESS.parse().unwrap());
        if relay.poll_timeout().is_some_and(|due| due <= now_us) {
            relay.handle_timeout(now_us);
        }
        while let Some(transmit) = sender.poll_transmit(buffer) {
            for datagram in hops[0].carry(&transmit, buffer) {
                relay.handle_receive(now_us, publisher_address, datagram);
            }
        }
        while let Some(transmit) = subscriber.poll_transmit(buffer) {
            for datagram in hops[2].carry(&transmit, buffer) {
                relay.handle_receive(now_us, subscriber_address, datagram);
            }
        }
        relay.flush();
        while let Some(transmit) = relay.poll_transmit(buffer) {
            if transmit.destination == publisher_address {
                for datagram in hops[1].carry(&transmit, buffer) {
                    sender.handle_receive(now_us, datagram, &mut |_| panic!("the publisher did not subscribe"));
                }
            } else {
                assert_eq!(transmit.destination, subscriber_address);
                for datagram in hops[3].carry(&transmit, buffer) {
                    subscriber.handle_receive(now_us, datagram, &mut |d| delivered.push(d.to_owned()));
                }
            }
        }
    }

    fn print(&self) {
        for (index, hop) in self.hops.iter().enumerate() {
            println!("hop {index}: dropped {} of {} ({:?})", hop.dropped, hop.count, hop.loss);
        }
        println!("publisher {:?}\nsubscriber {:?}", self.sender.counters(), self.subscriber.counters());
        if let Some(relay) = &self.relay {
            let node = relay.counters();
            println!(
                "relay: naks sent {} received {}, repairs sent {} misses {}, frames repaired {} lost {}",
                node.get(Counter::NaksSent),
                node.get(Counter::NaksReceived),
                node.get(Counter::RepairsSent),
                node.get(Counter::RepairMisses),
                node.get(Counter::FramesRepaired),
                node.get(Counter::FramesLost)
            );
        }
    }
}

/// Publishes a burst of 1..30 messages (payloads of [`payload_of`], their lengths noted in
/// `lengths`); a few are larger than a frame. Flushes, so the frames are in `publisher.frames()`.
fn publish_burst(rng: &mut Rng, publisher: &mut Publisher, lengths: &mut Vec<usize>, count: usize) {
    for _ in 0..between(rng, 1..=29) {
        if lengths.len() == count {
            break;
        }
        let length = if rng.below(60) == 0 { between(rng, 2000..=5999) } else { between(rng, 8..=299) } as usize;
        let sequence = lengths.len() as u64;
        publisher.publish(&Outgoing::binary(TIMESTAMP_MS + sequence, &payload_of(sequence, length))).unwrap();
        lengths.push(length);
    }
    publisher.flush();
}

/// Runs `core`'s timers if due and hands out what they released.
fn drive_timers(core: &mut ClientCore, now_us: u64, delivered: &mut Vec<OwnedDelivery>) {
    if core.poll_timeout().is_some_and(|due| due <= now_us) {
        core.handle_timeout(now_us);
    }
    core.deliver_released(&mut |d| delivered.push(d.to_owned()));
}

/// Every message of `lengths` delivered exactly once, in order, whole.
fn assert_exactly_once_in_order(delivered: &[OwnedDelivery], lengths: &[usize], seed: u64) {
    let sequences: Vec<u64> = delivered.iter().map(|d| d.sequence).collect();
    let first_wrong = sequences.iter().zip(0..).position(|(sequence, expected)| *sequence != expected);
    assert!(
        first_wrong.is_none() && sequences.len() == lengths.len(),
        "every message exactly once, in order (seed {seed}): {} of {} delivered, first out of place at index {first_wrong:?}",
        sequences.len(),
        lengths.len()
    );
    for delivery in delivered {
        let length = lengths[delivery.sequence as usize];
        assert!(
            delivery.payload == payload_of(delivery.sequence, length),
            "message {} whole: {} bytes of {length} (seed {seed})",
            delivery.sequence,
            delivery.payload.len()
        );
    }
}

/// Publishes `count` messages in bursts with idle ticks between them (each burst ends in a
/// tail that may be lost) until all are delivered or 30 s pass.
fn run_bursts(net: &mut Net, rng: &mut Rng, count: usize) -> Vec<usize> {
    let mut publisher = Publisher::with_chain_id(key(5), part(), SigningMode::Batch { frames_per_root_max: 16 }, 9);
    let mut lengths = Vec::new();
    while net.delivered.len() < count && net.now_us < 30_000_000 {
        if lengths.len() < count && rng.below(3) == 0 {
            publish_burst(rng, &mut publisher, &mut lengths, count);
            net.publish(&mut publisher);
        }
        net.tick();
    }
    lengths
}

// Goal: a publishing ClientCore and a receiving ClientCore as each other's peers, over a hop
// that drops every k-th datagram in each direction (seeded), deliver every message exactly
// once, in order and whole: the receiver holds frames behind gaps and NAKs their frame
// sequences, the publisher answers from its repair ring (pieces of large messages too), lost
// tails of bursts come back through tail probes and tail queries, and nothing is given up.
#[test]
fn lossy_peers_repair_every_gap() {
    let seed = seed(0x1055);
    let mut rng = Rng::new(seed);
    let hops = [Hop::spaced(&mut rng, 3..=8), Hop::spaced(&mut rng, 3..=8)];
    let mut net = Net::loopback(hops);
    let lengths = run_bursts(&mut net, &mut rng, 3000);
    net.print();
    assert_exactly_once_in_order(&net.delivered, &lengths, seed);
    let (sent, received) = (net.sender.counters(), net.subscriber.counters());
    assert!(net.hops[0].dropped >= net.hops[0].count / 10 && net.hops[1].dropped > 0, "the hop was lossy both ways");
    assert_eq!((received.frames_lost, received.messages_incomplete), (0, 0));
    assert_eq!(received.frames_bad_signature + received.datagrams_bad_tag + received.datagrams_replayed, 0);
    assert!(received.naks_sent > 0 && received.frames_held > 0 && received.frames_repaired > 0);
    assert!(sent.naks_received > 0 && sent.repairs_sent > 0 && sent.datagrams_repair > 0);
    assert_eq!(sent.repair_ring_evictions + sent.repairs_dropped, 0);
}

// Goal: publisher ClientCore → lossy hop → relay::Relay → lossy hop → subscriber ClientCore
// (every hop, both ways, drops every k-th datagram on average, seeded): every message reaches
// the subscriber exactly once, in order and whole. The relay NAKs the publishing client for
// gaps in its chain's frame sequences and the client answers from its repair ring; the
// subscriber NAKs the relay for gaps on its own hop and the relay answers from its ring;
// nothing is counted lost anywhere.
#[test]
fn publisher_relay_subscriber_over_lossy_hops() {
    let seed = seed(0x4e1a);
    let mut rng = Rng::new(seed);
    // Each hop loses 10-20%: with four lossy hops, heavier loss exceeds the relay's own NAK
    // retry budget.
    let hops = [(); 4].map(|_| Hop::spaced(&mut rng, 5..=10));
    let mut net = Net::through_relay(hops);
    let lengths = run_bursts(&mut net, &mut rng, 3000);
    net.print();
    assert_exactly_once_in_order(&net.delivered, &lengths, seed);
    let (sent, received, node) = (net.sender.counters(), net.subscriber.counters(), net.relay.as_ref().unwrap().counters());
    assert!([0, 3].iter().all(|&data| net.hops[data].dropped >= net.hops[data].count / 20), "the data hops were lossy");
    assert_eq!(received.frames_lost + node.get(Counter::FramesLost) + received.messages_incomplete, 0);
    assert!(sent.naks_received > 0 && sent.repairs_sent > 0, "the relay NAKed the publisher, which answered");
    assert!(received.naks_sent > 0 && node.get(Counter::RepairsSent) > 0, "the subscriber NAKed the relay, which answered");
    assert!(node.get(Counter::FramesRepaired) > 0 && received.frames_repaired > 0);
}

// Goal: a message of PAYLOAD_LENGTH_MAX (1 MiB) bytes, which spans hundreds of frames,
// published through a ClientCore reaches the subscribing ClientCore whole, once and in order
// between the messages around it — over loopback and through a relay, without loss and with
// 10% of the datagrams lost at random on every hop (NAK repair and tail probes and queries
// fill every gap; time is driven forward with handle_timeout).
#[test]
fn mebibyte_message_arrives_whole() {
    let seed = seed(0x1b);
    let mut rng = Rng::new(seed);
    let lengths = [100, PAYLOAD_LENGTH_MAX, 200];
    let mut publisher = Publisher::with_chain_id(key(6), part(), SigningMode::Batch { frames_per_root_max: 64 }, 13);
    for (sequence, length) in lengths.iter().enumerate() {
        publisher.publish(&Outgoing::binary(TIMESTAMP_MS + sequence as u64, &payload_of(sequence as u64, *length))).unwrap();
    }
    publisher.flush();
    let frames = publisher.frames().to_vec();
    let frame_count = publisher.frame_count();
    assert!(frame_count > PAYLOAD_LENGTH_MAX / 1472, "{frame_count} frames");
    for through_relay in [false, true] {
        for probability in [0.0, 0.1] {
            let loss = if probability > 0.0 { Loss::Random { probability } } else { Loss::None };
            let mut net = if through_relay {
                Net::through_relay([(); 4].map(|_| Hop::new(&mut rng, loss)))
            } else {
                Net::loopback([(); 2].map(|_| Hop::new(&mut rng, loss)))
            };
            net.sender.queue_frames(0, &part(), &frames).unwrap();
            net.sender.flush();
            while net.delivered.len() < lengths.len() && net.now_us < 10_000_000 {
                net.tick();
            }
            println!("through relay {through_relay}, loss {probability}: {frame_count} frames, done at {} ms", net.now_us / 1000);
            net.print();
            assert_exactly_once_in_order(&net.delivered, &lengths, seed);
            let received = net.subscriber.counters();
            assert_eq!((received.frames_lost, received.messages_incomplete, received.frames_bad_signature), (0, 0, 0));
            if probability > 0.0 {
                let delivery_hop = &net.hops[if through_relay { 3 } else { 0 }];
                assert!(delivery_hop.dropped > frame_count as u64 / 20, "the delivering hop was lossy");
                assert!(received.naks_sent > 0 && received.frames_repaired > 0);
            } else {
                assert_eq!((received.naks_sent, received.frames_held), (0, 0));
            }
        }
    }
}

/// A core that sent each of `frames` (one per datagram) at time 0; returns each datagram.
fn one_datagram_each(link: &ClientLinkConfig, sender: &mut ClientCore, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|frame| {
            sender.queue_frames(0, &part(), frame).unwrap();
            sender.flush();
            let sent = drain(sender, link.datagram_length_max);
            assert_eq!(sent.len(), 1);
            sent.into_iter().next().unwrap().1
        })
        .collect()
}

/// The NAK ranges (first, last frame sequence) of every Nak datagram in `transmits`.
fn nak_ranges(transmits: &[(Transmit, Vec<u8>)]) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    for (_, bytes) in transmits {
        for datagram in split_datagrams(bytes) {
            let datagram = datagram.unwrap();
            if datagram.kind == Kind::Nak {
                ranges.extend(datagram.nak_ranges().unwrap().map(|r| (r.first_sequence.to_native(), r.last_sequence.to_native())));
            }
        }
    }
    ranges
}

/// `count` single frames of one chain, each of two messages (frame f carries messages 2f
/// and 2f+1, so frame and message sequences differ).
fn frames_of(count: u64) -> Vec<Vec<u8>> {
    let mut publisher = Publisher::with_chain_id(key(8), part(), SigningMode::PerMessage, 3);
    (0..count)
        .map(|_| {
            for _ in 0..2 {
                let i = publisher.next_sequence();
                publisher.publish(&Outgoing::json(TIMESTAMP_MS + i, format!("{{\"i\":{i}}}").as_bytes())).unwrap();
            }
            publisher.flush();
            assert_eq!(publisher.frame_count(), 1);
            let frame = publisher.frames().to_vec();
            publisher.clear_frames();
            frame
        })
        .collect()
}

/// The frame sequences of the frames in a Data datagram.
fn frame_sequences(datagram: &[u8]) -> Vec<u64> {
    Datagram::parse(datagram).unwrap().frames().map(|f| f.unwrap().sequence()).collect()
}

// Goal: a publisher idle for TAIL_PROBE_US resends its newest frame, flagged repair (and
// again at doubling intervals, TAIL_PROBES_MAX times); the receiver, which lost the tail,
// holds it, NAKs the hole by frame sequence after NAK_DELAY_US, gets the repair and delivers
// the messages in order. A receiver idle for TAIL_QUERY_US asks for its next frame sequence,
// which the publisher answers from its ring; each answer is followed at once by a query for
// the one after; without an answer it asks again, TAIL_QUERIES_MAX times in all, at doubling
// intervals.
#[test]
fn tail_probe_and_tail_query_recover_lost_tails() {
    let link = link(1472);
    let frames = frames_of(3);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let datagrams = one_datagram_each(&link, &mut sender, &frames);
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered = Vec::new();
    receiver.handle_receive(0, &datagrams[0], &mut |d| delivered.push(d.sequence));
    assert_eq!(delivered, vec![0, 1]);
    // datagrams[1] and [2] are lost. The probe: once, at TAIL_PROBE_US, the newest frame.
    assert_eq!(sender.poll_timeout(), Some(TAIL_PROBE_US));
    sender.handle_timeout(TAIL_PROBE_US - 1);
    assert!(drain(&mut sender, 1472).is_empty());
    sender.handle_timeout(TAIL_PROBE_US);
    let probe = drain(&mut sender, 1472);
    assert_eq!(probe.len(), 1);
    assert_eq!(Datagram::parse(&probe[0].1).unwrap().flags(), FLAG_REPAIR | FLAG_SINGLE_PUBLISHER);
    assert_eq!(frame_sequences(&probe[0].1), vec![2]);
    let mut probes_at = Vec::new();
    while let Some(due) = sender.poll_timeout() {
        sender.handle_timeout(due);
        for (_, again) in drain(&mut sender, 1472) {
            assert_eq!(frame_sequences(&again), vec![2]);
            probes_at.push(due);
        }
    }
    // At 30 ms, then after 60 and 120 more.
    assert_eq!(probes_at, [3, 7].map(|n| n * TAIL_PROBE_US)[..TAIL_PROBES_MAX as usize - 1]);
    assert_eq!(sender.counters().tail_probes_sent, TAIL_PROBES_MAX as u64);

    let now_us = TAIL_PROBE_US;
    receiver.handle_receive(now_us, &probe[0].1, &mut |d| delivered.push(d.sequence));
    assert_eq!(delivered, vec![0, 1], "frame 2 waits for frame 1");
    receiver.handle_timeout(now_us + NAK_DELAY_US - 1);
    assert!(nak_ranges(&drain(&mut receiver, 1472)).is_empty());
    receiver.handle_timeout(now_us + NAK_DELAY_US);
    let nak = drain(&mut receiver, 1472);
    assert_eq!(nak_ranges(&nak), vec![(1, 1)], "NAKed by frame sequence");
    sender.handle_receive(now_us + NAK_DELAY_US, &nak[0].1, &mut |_| panic!("NAKs carry no messages"));
    // The sender heard from the receiver, so it grants it credit too; the repair follows.
    let repair: Vec<_> =
        drain(&mut sender, 1472).into_iter().filter(|(_, bytes)| Datagram::parse(bytes).unwrap().kind == Kind::Data).collect();
    assert_eq!(sender.counters().repairs_sent, 1);
    assert_eq!(frame_sequences(&repair[0].1), vec![1]);
    receiver.handle_receive(now_us + NAK_DELAY_US, &repair[0].1, &mut |d| delivered.push(d.sequence));
    assert_eq!(delivered, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(receiver.counters().frames_repaired, 2);

    // The tail query: a fresh receiver that got only frame 0 asks for frame 1, then 2, then 3
    // (which never comes: asked TAIL_QUERIES_MAX times at doubling intervals).
    // (Its link sequences start past the first receiver's: the sender's replay window is per link.)
    let mut late = ClientCore::new(&link, CoreOptions { verify: true, link_seq_start: 1000 });
    late.handle_receive(0, &datagrams[0], &mut |_| {});
    assert_eq!(late.poll_timeout(), Some(TAIL_QUERY_US));
    let (mut queries, mut got) = (Vec::new(), Vec::new());
    while let Some(due) = late.poll_timeout() {
        late.handle_timeout(due);
        for (transmit, query) in drain(&mut late, 1472) {
            // The late receiver also grants the sender credit for what it received.
            if Datagram::parse(&query).unwrap().kind == Kind::Nak {
                queries.push((due, nak_ranges(&[(transmit, query.clone())])));
            }
            sender.handle_receive(due, &query, &mut |_| panic!("NAKs carry no messages"));
            for (_, answer) in drain(&mut sender, 1472) {
                late.handle_receive(due, &answer, &mut |d| got.push(d.sequence));
            }
        }
    }
    assert_eq!(got, vec![2, 3, 4, 5]);
    let t = TAIL_QUERY_US;
    let expected: Vec<(u64, Vec<(u64, u64)>)> =
        vec![(t, vec![(1, 1)]), (t, vec![(2, 2)]), (t, vec![(3, 3)]), (3 * t, vec![(3, 3)]), (7 * t, vec![(3, 3)])];
    assert_eq!(queries, expected);
    assert_eq!(late.counters().tail_queries_sent, 5);
    assert_eq!(sender.counters().repair_misses, TAIL_QUERIES_MAX as u64);
}

// Goal: a hole that is never repaired is NAKed NAK_RETRIES_MAX times, then given up: the
// frames held behind it are released in order (deliver_released), the hole counts as lost
// (in frames), and the missing frame arriving afterwards is dropped as a duplicate, never out
// of order.
#[test]
fn unrepaired_hole_is_given_up_after_retries() {
    let link = link(1472);
    let frames = frames_of(5);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let datagrams = one_datagram_each(&link, &mut sender, &frames);
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let mut delivered = Vec::new();
    for index in [0, 3, 4] {
        receiver.handle_receive(0, &datagrams[index], &mut |d| delivered.push(d.sequence));
    }
    assert_eq!(delivered, vec![0, 1]);
    let mut naks = Vec::new();
    let mut now_us = 0;
    while let Some(due) = receiver.poll_timeout().filter(|due| *due < 10_000_000) {
        now_us = due;
        receiver.handle_timeout(now_us);
        naks.extend(nak_ranges(&drain(&mut receiver, 1472)));
        receiver.deliver_released(&mut |d| delivered.push(d.sequence));
    }
    let retries = naks.iter().filter(|r| **r == (1, 2)).count();
    assert_eq!(retries, NAK_RETRIES_MAX as usize);
    assert_eq!(delivered, vec![0, 1, 6, 7, 8, 9]);
    let counters = receiver.counters();
    let tail_queries = TAIL_QUERIES_MAX as usize;
    assert_eq!((counters.frames_lost, counters.frames_held), (2, 2));
    assert_eq!(counters.naks_sent as usize, retries + tail_queries);
    assert_eq!(naks[retries..], vec![(5, 5); tail_queries], "then the tail is queried");
    receiver.handle_receive(now_us, &datagrams[1], &mut |_| panic!("a given-up frame is never delivered late"));
    assert_eq!(receiver.counters().frames_duplicate, 1);
}

/// A batch frame under a root of its own (depth 0) at any frame sequence, carrying message
/// `sequence`: lets a test jump far ahead in a chain without publishing everything between.
fn lone_frame(key: &PublisherKey, chain_id: u64, sequence: u64) -> Vec<u8> {
    let start = FrameStart {
        publisher: key.address(),
        chain_id,
        sequence,
        first_message_sequence: sequence,
        previous: sequence.checked_sub(1).map(|p| (TIMESTAMP_MS + p, p)),
        signature_kind: SignatureKind::Batch,
        proof_depth: 0,
        leaf_index: 0,
        continuation: false,
    };
    let payload = payload_of(sequence, 16);
    let entry = EntryFields {
        timestamp_ms: TIMESTAMP_MS + sequence,
        content_type: ContentType::Binary,
        encryption: Encryption::None,
        group_key_id: b"",
        payload: &payload,
    };
    let mut out = Vec::new();
    let mut writer = FrameWriter::begin(&mut out, &start, DATAGRAM_LENGTH_DEFAULT - HEADER_LENGTH);
    assert!(writer.push(&mut out, &entry, None));
    let range = writer.finish(&mut out, false);
    key.sign_frames(&part(), &mut out, &[range]);
    out
}

/// Sends each of `frames` from `sender` to `receiver` at `now_us`; returns the message
/// sequences delivered, with their chain ids.
fn send_frames(sender: &mut ClientCore, receiver: &mut ClientCore, now_us: u64, frames: &[Vec<u8>]) -> Vec<(u64, u64)> {
    for frame in frames {
        sender.queue_frames(now_us, &part(), frame).unwrap();
    }
    sender.flush();
    let mut delivered = Vec::new();
    for (_, bytes) in drain(sender, 1472) {
        receiver.handle_receive(now_us, &bytes, &mut |d| delivered.push((d.chain_id, d.sequence)));
    }
    delivered
}

// Goal: a frame more than REORDER_SEQUENCES_MAX ahead of its chain's next frame gives the
// oldest sequences up early (counted as a reorder overflow and as lost), delivering what was
// held below the new bound in order; the hole that remains is NAKed by frame sequence, and a
// given-up frame arriving late is a duplicate.
#[test]
fn reorder_sequence_bound_gives_the_oldest_up() {
    let link = link(1472);
    let key = key(10);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let far = 2 + REORDER_SEQUENCES_MAX + 3;
    let frames: Vec<Vec<u8>> = [0, 2, far].map(|sequence| lone_frame(&key, 1, sequence)).into();
    assert_eq!(send_frames(&mut sender, &mut receiver, 0, &frames[..2]), vec![(1, 0)]);
    assert_eq!(send_frames(&mut sender, &mut receiver, 1, &frames[2..]), vec![(1, 2)], "frame 2 released as 1 is given up");
    let counters = receiver.counters();
    // Given up: frame 1, and frames 3 and 4 below far − REORDER_SEQUENCES_MAX.
    assert_eq!((counters.reorder_overflows, counters.frames_lost, counters.frames_held), (1, 3, 2));
    receiver.handle_timeout(1 + NAK_DELAY_US);
    assert_eq!(nak_ranges(&drain(&mut receiver, 1472)), vec![(far - REORDER_SEQUENCES_MAX, far - 1)]);
    assert!(send_frames(&mut sender, &mut receiver, 2, &[lone_frame(&key, 1, 1)]).is_empty());
    assert_eq!(receiver.counters().frames_duplicate, 1);
}

// Goal: the frames held behind a gap are bounded by REORDER_BYTES_MAX: when a frame would
// exceed it, the gap is given up early (a reorder overflow, counted lost) and everything
// held is delivered in order; the message whose piece was in the lost frame is dropped as
// incomplete (messages_incomplete), never delivered with a piece missing, and every later
// message arrives whole.
#[test]
fn reorder_byte_bound_gives_the_gap_up() {
    let link = link(1472);
    let mut publisher = Publisher::with_chain_id(key(11), part(), SigningMode::Batch { frames_per_root_max: 64 }, 2);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    let count = REORDER_BYTES_MAX / PAYLOAD_LENGTH_MAX + 2;
    let lengths = vec![PAYLOAD_LENGTH_MAX; count];
    let mut delivered = Vec::new();
    for (sequence, length) in lengths.iter().enumerate() {
        publisher.publish(&Outgoing::binary(TIMESTAMP_MS + sequence as u64, &payload_of(sequence as u64, *length))).unwrap();
        publisher.flush();
        sender.queue_frames(0, &part(), publisher.frames()).unwrap();
        publisher.clear_frames();
        sender.flush();
        for (transmit, bytes) in drain(&mut sender, 1472) {
            for datagram in bytes.chunks(transmit.segment_size) {
                // Frame 1, a middle piece of message 0, is lost and never repaired.
                if frame_sequences(datagram) != [1] {
                    receiver.handle_receive(0, datagram, &mut |d| delivered.push(d.to_owned()));
                }
                // The receiver's grants keep the sender's window open.
                for (_, credit) in drain(&mut receiver, 1472) {
                    sender.handle_receive(0, &credit, &mut |_| {});
                }
            }
        }
    }
    let counters = receiver.counters();
    println!("{counters:?}");
    assert_eq!((counters.reorder_overflows, counters.frames_lost, counters.messages_incomplete), (1, 1, 1));
    assert!(counters.frames_held as usize > REORDER_BYTES_MAX / 1472);
    let sequences: Vec<u64> = delivered.iter().map(|d| d.sequence).collect();
    assert_eq!(sequences, (1..count as u64).collect::<Vec<_>>(), "message 0 is incomplete, the rest in order");
    for delivery in &delivered {
        assert!(delivery.payload == payload_of(delivery.sequence, PAYLOAD_LENGTH_MAX), "message {} whole", delivery.sequence);
    }
}

// Goal: the receive side keeps at most CHAINS_MAX chains: a new chain beyond that evicts the
// least recently active one, which first gives up its holes (counted lost) and delivers what
// it held, in order; the eviction is counted.
#[test]
fn chains_beyond_the_bound_evict_the_idlest() {
    let link = link(1472);
    let key = key(12);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    // Not verifying: the signatures of four thousand chains are not what this is about.
    let mut receiver = ClientCore::new(&link, CoreOptions { verify: false, link_seq_start: 1 });
    let mut delivered = send_frames(&mut sender, &mut receiver, 0, &[lone_frame(&key, 0, 0)]);
    delivered.extend(send_frames(&mut sender, &mut receiver, 1, &[lone_frame(&key, 0, 2)]));
    let others: Vec<Vec<u8>> = (1..CHAINS_MAX as u64).map(|chain_id| lone_frame(&key, chain_id, 0)).collect();
    delivered.extend(send_frames(&mut sender, &mut receiver, 2, &others));
    assert_eq!((delivered.len(), receiver.counters().chains_evicted), (CHAINS_MAX, 0), "CHAINS_MAX chains fit");
    let newcomer = send_frames(&mut sender, &mut receiver, 3, &[lone_frame(&key, CHAINS_MAX as u64, 0)]);
    assert_eq!(newcomer, vec![(0, 2), (CHAINS_MAX as u64, 0)], "the idlest chain delivers what it held, then the new one");
    let counters = receiver.counters();
    assert_eq!((counters.chains_evicted, counters.frames_lost, counters.frames_held), (1, 1, 1));
}

// Goal: a frame numbered u64::MAX (no sequence can follow it) is given up and counted, never
// held: holding it made the gap's NAK ranges overflow (found by the client fuzz target).
#[test]
fn the_last_possible_frame_sequence_is_given_up() {
    let link = link(1472);
    let key = key(12);
    let mut sender = ClientCore::new(&link, CoreOptions::default());
    let mut receiver = ClientCore::new(&link, CoreOptions::default());
    // A publisher never numbers a frame u64::MAX; a single frame's frame sequence is not
    // covered by its signature (protocol.md §8.3), so a forger can.
    let mut last = lone_frame(&key, 1, 5);
    last[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    let frames = vec![lone_frame(&key, 1, 0), last];
    assert_eq!(send_frames(&mut sender, &mut receiver, 0, &frames), vec![(1, 0)]);
    assert_eq!(receiver.counters().frames_lost, 1);
    assert_eq!(receiver.counters().frames_held, 0, "nothing waits behind it");
    receiver.handle_timeout(NAK_DELAY_US);
    let naks = nak_ranges(&drain(&mut receiver, 1472));
    assert!(naks.iter().all(|&(first, last)| first <= last && last < u64::MAX), "no overflowing range: {naks:?}");
}
