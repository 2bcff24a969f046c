//! Flow control in the sans-I/O cores, deterministically: a relay sends a link no more Data
//! than its receiver granted, probes when a grant is lost, holds grants back from upstream
//! while a neighbor is backlogged, cuts off (or skips ahead) a subscriber that grants nothing,
//! and meters NAK answers; a client publisher stops at its node's window and resumes on a grant.

use runnel_core::client::{ClientCore, ClientLinkConfig, CoreOptions, Outgoing, Publisher, SigningMode};
use runnel_core::counters::Counter;
use runnel_core::credit::{CREDIT_PROBE_US, CREDIT_WINDOW_DATAGRAMS};
use runnel_core::link::{LinkConfig, LinkRole, SlowConsumerPolicy, VerifyPolicy};
use runnel_core::relay::{Event, Relay, RelayConfig};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{
    encode_nak_range, Datagram, DatagramBuilder, HeaderFields, Kind, NakRange, CREDIT_BODY_LENGTH, DATAGRAM_LENGTH_DEFAULT, HEADER_LENGTH,
};
use std::net::SocketAddr;

const PUBLISHER: u32 = 1;
const SUBSCRIBER: u32 = 2;
const NEIGHBOR: u32 = 3;
const WINDOW: u64 = 8;
const START_US: u64 = 1_000_000;

fn part() -> StreamPartKey {
    StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/flow#0").unwrap().key()
}

fn key(link_id: u32) -> LinkKey {
    LinkKey([link_id as u8; 32])
}

fn address(link_id: u32) -> SocketAddr {
    SocketAddr::from(([10, 78, 0, link_id as u8], 7000))
}

fn link(id: u32, role: LinkRole) -> LinkConfig {
    let peer = (role == LinkRole::Neighbor).then(|| address(id));
    LinkConfig { id, peer_link_id: None, key: key(id), role, peer, peer_shards: 1, rate_datagrams_per_s: 0, burst_datagrams: 1 }
}

/// `count` frames of one chain, one message each (so one frame per datagram below).
fn frames(count: usize) -> Vec<Vec<u8>> {
    let mut publisher = Publisher::with_chain_id(PublisherKey::generate(), part(), SigningMode::Batch { frames_per_root_max: 64 }, 7);
    let mut frames = Vec::new();
    for sequence in 0..count as u64 {
        publisher.publish(&Outgoing::binary(1_700_000_000_000 + sequence, &sequence.to_le_bytes())).unwrap();
        publisher.flush();
        frames.push(publisher.frames().to_vec());
        publisher.clear_frames();
    }
    frames
}

/// A datagram on `link_id` with link sequence `link_seq`.
fn datagram(kind: Kind, link_id: u32, link_seq: u64, body: &[u8], count: u16) -> Vec<u8> {
    let mut builder = DatagramBuilder::new(DATAGRAM_LENGTH_DEFAULT);
    builder.body_mut().extend_from_slice(body);
    builder.set_count(count);
    builder.finish(HeaderFields::new(kind, link_id, link_seq, part().0), &key(link_id)).to_vec()
}

fn credit(link_id: u32, link_seq: u64, granted: u64) -> Vec<u8> {
    let body = granted.to_le_bytes();
    assert_eq!(body.len(), CREDIT_BODY_LENGTH);
    datagram(Kind::Credit, link_id, link_seq, &body, 0)
}

/// A relay with small windows and bounds, a publishing client, and a subscribed client.
fn relay(config: impl FnOnce(&mut RelayConfig)) -> Relay {
    let mut settings = RelayConfig::new(0, 1, DATAGRAM_LENGTH_DEFAULT, VerifyPolicy::All);
    settings.credit_window_datagrams = WINDOW;
    config(&mut settings);
    let mut relay = Relay::new(settings);
    relay.add_link(&link(PUBLISHER, LinkRole::Client));
    relay.add_link(&link(SUBSCRIBER, LinkRole::Client));
    relay.join(START_US, part());
    relay.handle_receive(START_US, address(SUBSCRIBER), &datagram(Kind::Subscribe, SUBSCRIBER, 1, &[], 0));
    relay
}

/// What the relay sends now: (destination link by address, kind, link sequence).
fn sent(relay: &mut Relay) -> Vec<(SocketAddr, Kind, u64)> {
    let mut out = Vec::new();
    let mut buffer = Vec::new();
    while let Some(transmit) = relay.poll_transmit(&mut buffer) {
        for bytes in buffer.chunks(transmit.segment_size) {
            let datagram = Datagram::parse(bytes).unwrap();
            out.push((transmit.destination, datagram.kind, datagram.link_seq()));
        }
    }
    out
}

fn data_to(sent: &[(SocketAddr, Kind, u64)], to: SocketAddr) -> Vec<u64> {
    sent.iter().filter(|(destination, kind, _)| *destination == to && *kind == Kind::Data).map(|(_, _, seq)| *seq).collect()
}

/// The frame sequences of the Data the relay sends `to` now.
fn frame_sequences_to(relay: &mut Relay, to: SocketAddr) -> Vec<u64> {
    let mut sequences = Vec::new();
    let mut buffer = Vec::new();
    while let Some(transmit) = relay.poll_transmit(&mut buffer) {
        for bytes in buffer.chunks(transmit.segment_size).filter(|_| transmit.destination == to) {
            let datagram = Datagram::parse(bytes).unwrap();
            if datagram.kind == Kind::Data {
                sequences.extend(datagram.frames().map(|frame| frame.unwrap().sequence()));
            }
        }
    }
    sequences
}

/// Feeds frames from the publisher, one datagram each, with link sequences from `first_seq`.
fn publish(relay: &mut Relay, now_us: u64, frames: &[Vec<u8>], first_seq: u64) {
    for (index, frame) in frames.iter().enumerate() {
        relay.handle_receive(now_us, address(PUBLISHER), &datagram(Kind::Data, PUBLISHER, first_seq + index as u64, frame, 1));
        relay.flush();
    }
}

// Goal: the relay sends a subscriber exactly the window it may (sequences 0..WINDOW), holds
// the rest (a stall, counted), and sends on when the subscriber grants more — every frame
// reaches it, in order, each link sequence used once.
#[test]
fn a_relay_sends_no_more_than_the_receiver_granted() {
    let mut relay = relay(|_| {});
    let frames = frames(20);
    publish(&mut relay, START_US, &frames, 100);
    let first = sent(&mut relay);
    let to_subscriber: Vec<_> = first.iter().filter(|(to, _, _)| *to == address(SUBSCRIBER)).collect();
    assert!(to_subscriber.iter().all(|(_, _, seq)| *seq < WINDOW), "nothing beyond the initial window: {to_subscriber:?}");
    let delivered = data_to(&first, address(SUBSCRIBER)).len() as u64;
    assert!(delivered > 0 && delivered <= WINDOW, "{delivered} Data datagrams before any grant");
    assert_eq!(relay.counters().get(Counter::CreditStalls), 1);
    // The publisher was granted credit for what the relay processed.
    assert!(first.iter().any(|(to, kind, _)| *to == address(PUBLISHER) && *kind == Kind::Credit));

    let mut total = delivered;
    let mut link_seq = 2;
    let mut highest = to_subscriber.iter().map(|(_, _, seq)| *seq).max().unwrap();
    while total < frames.len() as u64 {
        relay.handle_receive(START_US + 10, address(SUBSCRIBER), &credit(SUBSCRIBER, link_seq, highest + WINDOW));
        link_seq += 1;
        relay.flush();
        let more = sent(&mut relay);
        let data = data_to(&more, address(SUBSCRIBER));
        assert!(!data.is_empty(), "a grant releases held Data");
        assert!(data.iter().all(|seq| *seq <= highest + WINDOW && *seq > highest));
        highest = *data.iter().max().unwrap();
        total += data.len() as u64;
    }
    assert_eq!(total, frames.len() as u64);
    assert_eq!(relay.counters().get(Counter::FramesDelivered), frames.len() as u64);
    assert!(relay.counters().get(Counter::CreditsReceived) >= 2);
}

// Goal: a lost grant cannot stall a link: after CREDIT_PROBE_US without credit the relay sends
// one Data datagram beyond the window (counted), then waits another interval; a subscriber
// that grants nothing for the slow-consumer timeout is cut off — its queued Data dropped and
// counted, its interest gone (later frames are not queued for it), an event raised.
#[test]
fn a_stalled_link_probes_and_a_silent_subscriber_is_cut_off() {
    let mut relay = relay(|config| config.slow_consumer_timeout_us = 10 * CREDIT_PROBE_US);
    publish(&mut relay, START_US, &frames(20), 100);
    let first = data_to(&sent(&mut relay), address(SUBSCRIBER));
    let stalled_at = START_US;
    assert_eq!(relay.poll_timeout().map(|due| due <= stalled_at + CREDIT_PROBE_US), Some(true));
    relay.handle_timeout(stalled_at + CREDIT_PROBE_US - 1);
    assert!(data_to(&sent(&mut relay), address(SUBSCRIBER)).is_empty(), "no probe before its time");
    relay.handle_timeout(stalled_at + CREDIT_PROBE_US);
    let probe = data_to(&sent(&mut relay), address(SUBSCRIBER));
    assert!(first.iter().all(|seq| *seq < WINDOW));
    assert_eq!(probe, vec![WINDOW], "one datagram beyond the window");
    assert_eq!(relay.counters().get(Counter::CreditProbesSent), 1);
    relay.handle_timeout(stalled_at + CREDIT_PROBE_US + 1);
    assert!(data_to(&sent(&mut relay), address(SUBSCRIBER)).is_empty(), "one probe per interval");

    // Silent for the slow-consumer timeout: cut off.
    let mut now_us = stalled_at + CREDIT_PROBE_US;
    while relay.counters().get(Counter::SlowConsumersCut) == 0 {
        now_us += CREDIT_PROBE_US;
        assert!(now_us <= stalled_at + 11 * CREDIT_PROBE_US, "cut off within the timeout");
        relay.handle_timeout(now_us);
        sent(&mut relay);
    }
    assert!(relay.counters().get(Counter::DropsSlowConsumer) > 0);
    assert!(std::iter::from_fn(|| relay.poll_event()).any(|e| e == Event::SlowConsumer { link_id: SUBSCRIBER }));
    let delivered = relay.counters().get(Counter::FramesDelivered);
    publish(&mut relay, now_us, &frames(25)[20..], 200);
    assert_eq!(relay.counters().get(Counter::FramesDelivered), delivered, "nothing is queued for a client that was cut off");
}

// Goal: back-pressure travels upstream. While a neighbor link has more than `backlog_datagrams`
// Data waiting for its credit, the relay holds back the grant it owes the publisher
// (counted); when the neighbor grants and the backlog drains, the held grant goes out.
#[test]
fn a_backlogged_neighbor_holds_back_the_publishers_credit() {
    let mut relay = relay(|config| config.backlog_datagrams = 4);
    // Only the neighbor is downstream here (a backlog of subscribers is the next test's).
    relay.handle_receive(START_US, address(SUBSCRIBER), &datagram(Kind::Unsubscribe, SUBSCRIBER, 2, &[], 0));
    relay.add_link(&link(NEIGHBOR, LinkRole::Neighbor));
    relay.handle_receive(START_US, address(NEIGHBOR), &datagram(Kind::Subscribe, NEIGHBOR, 1, &[], 0));
    relay.flush();
    sent(&mut relay);
    // The publisher's first datagrams fill the neighbor's window and then its queue.
    publish(&mut relay, START_US, &frames(30), 100);
    let first = sent(&mut relay);
    assert!(data_to(&first, address(NEIGHBOR)).len() as u64 <= WINDOW);
    assert!(relay.counters().get(Counter::CreditsWithheld) >= 1, "the publisher's grant is held back");
    let granted_before: Vec<_> = first.iter().filter(|(to, kind, _)| *to == address(PUBLISHER) && *kind == Kind::Credit).collect();
    // The neighbor grants a lot: the backlog drains, and the held grant leaves.
    relay.handle_receive(START_US + 10, address(NEIGHBOR), &credit(NEIGHBOR, 2, 10_000));
    relay.flush();
    let after = sent(&mut relay);
    assert!(data_to(&after, address(NEIGHBOR)).len() > 4, "the neighbor's queue drains on its grant");
    let granted_after = after.iter().filter(|(to, kind, _)| *to == address(PUBLISHER) && *kind == Kind::Credit).count();
    assert_eq!(granted_after, 1, "the held grant goes out once the backlog is gone (before: {granted_before:?})");
}

// Goal: NAK answers are metered per link: a neighbor asking for 100 frames at once gets the
// burst allowance, the rest is counted as rate-limited, and the budget refills with time.
#[test]
fn nak_answers_are_rate_limited_per_link() {
    let mut relay = relay(|config| {
        config.repair_frames_per_s = 1000;
        config.repair_burst_frames = 10;
    });
    relay.add_link(&link(NEIGHBOR, LinkRole::Neighbor));
    let frames = frames(100);
    publish(&mut relay, START_US, &frames, 100);
    sent(&mut relay);
    let publisher = runnel_proto::frame::Frame::parse(&frames[0]).unwrap().publisher();
    let nak = |first_sequence, last_sequence| {
        let mut body = Vec::new();
        encode_nak_range(&NakRange { publisher, chain_id: 7, first_sequence, last_sequence }, &mut body);
        body
    };
    relay.handle_receive(START_US, address(NEIGHBOR), &datagram(Kind::Nak, NEIGHBOR, 1, &nak(0, 99), 1));
    assert_eq!(relay.counters().get(Counter::RepairsSent), 10);
    assert_eq!(relay.counters().get(Counter::RepairsRateLimited), 90);
    // 10 ms later: 10 more frames' worth of budget (1000 per second).
    relay.handle_receive(START_US + 10_000, address(NEIGHBOR), &datagram(Kind::Nak, NEIGHBOR, 2, &nak(10, 99), 1));
    assert_eq!(relay.counters().get(Counter::RepairsSent), 20);
}

// Goal: a client publisher sends its node the initial window and then nothing more until the
// node grants; a grant releases exactly what it allows; a probe goes out after
// CREDIT_PROBE_US; control datagrams (a Subscribe) never wait.
#[test]
fn a_client_stops_at_the_nodes_window() {
    let link = ClientLinkConfig { node: address(9), node_shards: 1, link_id: PUBLISHER, key: key(PUBLISHER), datagram_length_max: 1472 };
    let mut core = ClientCore::new(&link, CoreOptions { verify: false, link_seq_start: 1000 });
    let frames = frames(CREDIT_WINDOW_DATAGRAMS as usize + 10);
    for frame in &frames {
        core.queue_frames(0, &part(), frame).unwrap();
        core.flush();
    }
    let drain = |core: &mut ClientCore| {
        let mut out = Vec::new();
        let mut buffer = Vec::new();
        while let Some(transmit) = core.poll_transmit(&mut buffer) {
            for bytes in buffer.chunks(transmit.segment_size) {
                let datagram = Datagram::parse(bytes).unwrap();
                out.push((datagram.kind, datagram.link_seq()));
            }
        }
        out
    };
    let first = drain(&mut core);
    assert_eq!(first.len() as u64, CREDIT_WINDOW_DATAGRAMS);
    assert_eq!(first.last(), Some(&(Kind::Data, 1000 + CREDIT_WINDOW_DATAGRAMS - 1)));
    assert_eq!(core.counters().credit_stalls, 1);
    core.subscribe(1, &part()).unwrap();
    assert_eq!(drain(&mut core), vec![(Kind::Subscribe, 1000 + CREDIT_WINDOW_DATAGRAMS)], "control never waits");

    // The node grants 3 more than it has seen (the Subscribe's sequence included).
    let node_credit = {
        let mut builder = DatagramBuilder::new(HEADER_LENGTH + CREDIT_BODY_LENGTH);
        builder.body_mut().extend_from_slice(&(1000 + CREDIT_WINDOW_DATAGRAMS + 3).to_le_bytes());
        builder.finish(HeaderFields::new(Kind::Credit, PUBLISHER, 5, part().0), &key(PUBLISHER)).to_vec()
    };
    core.handle_receive(2, &node_credit, &mut |_| panic!("a Credit carries no messages"));
    let released: Vec<_> = drain(&mut core).into_iter().filter(|(kind, _)| *kind == Kind::Data).collect();
    assert_eq!(
        released.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        (1..=3).map(|i| 1000 + CREDIT_WINDOW_DATAGRAMS + i).collect::<Vec<_>>()
    );
    // Stalled again: a probe after CREDIT_PROBE_US.
    let due = core.poll_timeout().unwrap();
    assert!(due <= 2 + CREDIT_PROBE_US);
    core.handle_timeout(due);
    let probe: Vec<_> = drain(&mut core).into_iter().filter(|(kind, _)| *kind == Kind::Data).collect();
    assert_eq!(probe.len(), 1);
    assert_eq!(core.counters().credit_probes_sent, 1);
}

// Goal: Data queued onto a link whose window is already used up (it went out exactly to the
// limit, leaving nothing queued) still gets its probe: the stall begins when it is queued.
#[test]
fn data_queued_after_the_window_ran_out_is_probed() {
    let mut relay = relay(|_| {});
    let frames = frames(WINDOW as usize + 4);
    // The relay's Credit for the Subscribe took sequence 0: WINDOW − 1 frames fill the window.
    publish(&mut relay, START_US, &frames[..WINDOW as usize - 1], 100);
    let first = sent(&mut relay);
    let to_subscriber: Vec<u64> = first.iter().filter(|(to, _, _)| *to == address(SUBSCRIBER)).map(|(_, _, seq)| *seq).collect();
    assert_eq!(to_subscriber, (0..WINDOW).collect::<Vec<_>>(), "the window, exactly, and nothing left queued");
    assert_eq!(relay.counters().get(Counter::CreditStalls), 0);
    publish(&mut relay, START_US + 1, &frames[WINDOW as usize - 1..], 200);
    assert!(data_to(&sent(&mut relay), address(SUBSCRIBER)).is_empty(), "no credit");
    assert_eq!(relay.counters().get(Counter::CreditStalls), 1, "the stall begins with the queued Data");
    relay.handle_timeout(START_US + 1 + CREDIT_PROBE_US);
    assert_eq!(data_to(&sent(&mut relay), address(SUBSCRIBER)), vec![WINDOW], "probed after CREDIT_PROBE_US");
}

// Goal: when every subscriber of a stream part is behind (here the only one), the publisher
// is paced to them — its grant is held back — so nothing overflows; with a second subscriber
// that keeps up, the slow one no longer holds anyone back.
#[test]
fn publishers_are_paced_to_the_fastest_subscriber() {
    const SECOND: u32 = 4;
    for with_fast_subscriber in [false, true] {
        let mut relay = relay(|config| config.backlog_datagrams = 4);
        if with_fast_subscriber {
            relay.add_link(&link(SECOND, LinkRole::Client));
            relay.handle_receive(START_US, address(SECOND), &datagram(Kind::Subscribe, SECOND, 1, &[], 0));
        }
        let mut link_seq = 2;
        for (index, frame) in frames(30).iter().enumerate() {
            relay.handle_receive(START_US, address(PUBLISHER), &datagram(Kind::Data, PUBLISHER, 100 + index as u64, frame, 1));
            relay.flush();
            let out = sent(&mut relay);
            if with_fast_subscriber {
                // The second subscriber grants everything it is sent, at once.
                if let Some(highest) = out.iter().filter(|(to, _, _)| *to == address(SECOND)).map(|(_, _, seq)| *seq).max() {
                    relay.handle_receive(START_US, address(SECOND), &credit(SECOND, link_seq, highest + WINDOW));
                    link_seq += 1;
                }
            }
        }
        let withheld = relay.counters().get(Counter::CreditsWithheld);
        if with_fast_subscriber {
            assert_eq!(withheld, 0, "a subscriber keeps up: nobody is held back");
        } else {
            assert!(withheld >= 1, "the only subscriber is behind: the publisher's grant is held back");
        }
    }
}

// Goal: with policy skip a slow subscriber gets the newest data and never holds anyone back:
// its queue stays at the backlog bound, the oldest datagrams dropped (counted); the publisher
// is never paced for it; silent for the timeout, it has its queue dropped but stays
// subscribed (not cut off), and its next grant releases the newest frames, not the old ones.
#[test]
fn policy_skip_gives_a_slow_subscriber_the_newest_data() {
    const BACKLOG: usize = 4;
    let mut relay = relay(|config| {
        config.backlog_datagrams = BACKLOG;
        config.slow_consumer = SlowConsumerPolicy::Skip;
        config.slow_consumer_timeout_us = 10 * CREDIT_PROBE_US;
    });
    let stream = frames(40);
    // The relay's Credit to the subscriber leaves first (it takes one link sequence).
    relay.flush();
    sent(&mut relay);
    publish(&mut relay, START_US, &stream[..30], 100);
    let first = data_to(&sent(&mut relay), address(SUBSCRIBER));
    // What the window allows leaves at once.
    let window = first.len() as u64;
    assert!(window > 0 && window <= WINDOW, "{window} Data datagrams within the window");
    // 30 datagrams for the subscriber: the window's sent, BACKLOG kept, the rest skipped.
    assert_eq!(relay.counters().get(Counter::DropsSkippedAhead), 30 - window - BACKLOG as u64);
    assert_eq!(relay.counters().get(Counter::CreditsWithheld), 0, "a skipping subscriber paces nobody");

    // A grant now releases the kept (newest) datagrams only.
    relay.handle_receive(START_US + 10, address(SUBSCRIBER), &credit(SUBSCRIBER, 2, WINDOW - 1 + WINDOW));
    relay.flush();
    let kept = frame_sequences_to(&mut relay, address(SUBSCRIBER));
    assert_eq!(kept, (30 - BACKLOG as u64..30).collect::<Vec<_>>(), "what waited was the newest BACKLOG frames");

    // Silent for the timeout (probes go unanswered): its queue is dropped, it stays subscribed.
    publish(&mut relay, START_US + 20, &stream[30..], 200);
    sent(&mut relay);
    let mut now_us = START_US + 20;
    while relay.counters().get(Counter::SlowConsumersSkipped) == 0 {
        now_us += CREDIT_PROBE_US;
        assert!(now_us <= START_US + 12 * CREDIT_PROBE_US, "skipped ahead within the timeout");
        relay.handle_timeout(now_us);
        sent(&mut relay);
    }
    assert_eq!(relay.counters().get(Counter::SlowConsumersCut), 0);
    assert!(std::iter::from_fn(|| relay.poll_event()).any(|e| e == Event::SlowConsumer { link_id: SUBSCRIBER }));
    let delivered = relay.counters().get(Counter::FramesDelivered);
    publish(&mut relay, now_us, &frames(3), 300);
    assert_eq!(relay.counters().get(Counter::FramesDelivered), delivered + 3, "still subscribed: new frames are queued for it");
}
