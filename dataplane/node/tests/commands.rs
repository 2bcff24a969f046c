//! The command interface (`runnel_node::command`) on a real node: real shards, real io_uring
//! sockets on 127.0.0.1, real clients. Every node starts without links; the commands add them.

use runnel_client::{ClientOptions, Outgoing, UdpClient};
use runnel_core::counters::Counter;
use runnel_core::filter::FilterUpdate;
use runnel_node::command::{
    Command, CommandCounter, CommandError, CommandId, COMMANDS_IN_FLIGHT_MAX, RESPONSE_QUEUE_LENGTH_MAX, SUBMITTED_COMMANDS_MAX,
};
use runnel_node::config::{shard_of, LinkConfig, LinkRole};
use runnel_node::node::{NodeError, NodeHandle};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{self, HeaderFields, Kind, HEADER_LENGTH};
use std::collections::HashSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

mod common;

use common::{client_link, client_side, rng, start_node, wait_until, SHARDS, TIMEOUT};

fn publisher(node: &NodeHandle, link: &LinkConfig) -> UdpClient {
    let options = ClientOptions { publisher_key: Some(PublisherKey::generate()), ..ClientOptions::default() };
    UdpClient::connect_with(&client_side(node, link), options).unwrap()
}

/// A stream part owned by `shard`.
fn part_on(shard: u16, label: &str) -> StreamPartKey {
    (0..)
        .map(|i| StreamPart::parse(&format!("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/commands/{label}/{i}#0")).unwrap().key())
        .find(|key| shard_of(key, SHARDS) == shard)
        .expect("some name lands on every shard")
}

fn counter(node: &NodeHandle, shard: u16, counter: Counter) -> u64 {
    node.counters()[shard as usize].get(counter)
}

/// The command error inside `execute`'s error, or a panic saying what came instead.
fn command_error(result: Result<(), NodeError>) -> CommandError {
    match result {
        Err(NodeError::Command { error, .. }) => error,
        other => panic!("expected a command error, got {other:?}"),
    }
}

// Goal: a node started without links gets two client links over `submit`, each answered
// `Ok` with its own id (the second response waited for first: the other one is set aside,
// not lost); a subscriber on one link then receives, in order, every message a publisher
// sends on the other.
#[test]
fn added_client_links_carry_messages_from_publisher_to_subscriber() {
    let node = start_node(&mut rng());
    let (subscriber_link, publisher_link) = (client_link(10), client_link(11));
    let first = node.submit(Command::AddLink(subscriber_link.clone())).unwrap();
    let second = node.submit(Command::AddLink(publisher_link.clone())).unwrap();
    assert!(second > first, "ids increase in submission order");
    assert_eq!(node.wait_response(second, TIMEOUT).unwrap(), Ok(()));
    assert_eq!(node.wait_response(first, TIMEOUT).unwrap(), Ok(()));

    let part = part_on(1, "delivery");
    let mut subscriber = UdpClient::connect(&client_side(&node, &subscriber_link)).unwrap();
    subscriber.subscribe(&part).unwrap();
    wait_until("the subscription to reach shard 1", || counter(&node, 1, Counter::SubscribesReceived) >= 1);
    let mut publisher = publisher(&node, &publisher_link);
    let count = 200u64;
    for sequence in 0..count {
        publisher.publish(&part, &Outgoing::binary(1_700_000_000_000 + sequence, &sequence.to_le_bytes())).unwrap();
    }
    publisher.flush().unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while (received.len() as u64) < count && Instant::now() < deadline {
        subscriber
            .recv(Duration::from_millis(20), |delivery| received.push(u64::from_le_bytes(delivery.payload.try_into().unwrap())))
            .unwrap();
        publisher.poll().unwrap(); // answers the node's NAKs, if any
    }
    assert_eq!(received, (0..count).collect::<Vec<_>>(), "every message once, in order");
    assert_eq!(counter(&node, 1, Counter::FramesBadSignature), 0);
    assert_eq!(node.command_counters().get(CommandCounter::Succeeded), 2);
    node.stop().unwrap();
}

// Goal: once RemoveLink is answered `Ok`, every shard has forgotten the link: its next
// datagrams, to stream parts on both shards, are dropped as `datagrams_unknown_link`; a
// second RemoveLink of it is an error that names the link.
#[test]
fn removed_link_is_unknown_to_every_shard() {
    let node = start_node(&mut rng());
    let link = client_link(20);
    node.execute(Command::AddLink(link.clone()), TIMEOUT).unwrap();
    let parts = [part_on(0, "remove"), part_on(1, "remove")];
    let mut publisher = publisher(&node, &link);
    let publish_to_both = |publisher: &mut UdpClient, sequence: u64| {
        for part in &parts {
            publisher.publish(part, &Outgoing::binary(1_700_000_000_000 + sequence, b"x")).unwrap();
        }
        publisher.flush().unwrap();
    };
    publish_to_both(&mut publisher, 0);
    wait_until("a record on each shard", || (0..SHARDS).all(|shard| counter(&node, shard, Counter::FramesAccepted) == 1));

    node.execute(Command::RemoveLink { link_id: 20 }, TIMEOUT).unwrap();
    let unknown_before: Vec<u64> = (0..SHARDS).map(|shard| counter(&node, shard, Counter::DatagramsUnknownLink)).collect();
    publish_to_both(&mut publisher, 1);
    wait_until("the removed link's datagrams to be dropped on each shard", || {
        (0..SHARDS).all(|shard| counter(&node, shard, Counter::DatagramsUnknownLink) > unknown_before[shard as usize])
    });
    assert!((0..SHARDS).all(|shard| counter(&node, shard, Counter::FramesAccepted) == 1), "nothing more accepted");

    let error = command_error(node.execute(Command::RemoveLink { link_id: 20 }, TIMEOUT));
    assert_eq!(error, CommandError::UnknownLink { link_id: 20 });
    assert!(error.to_string().contains("no link 20"), "{error}");
    node.stop().unwrap();
}

/// Reads datagrams at `neighbor` until one of `kind` for `part` arrives, and checks its tag.
fn expect_control(neighbor: &UdpSocket, key: &LinkKey, kind: Kind, part: StreamPartKey) {
    let mut buffer = [0u8; 2048];
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let Ok(length) = neighbor.recv(&mut buffer) else { continue };
        let datagram = wire::Datagram::parse(&buffer[..length]).expect("the node sends well-formed datagrams");
        if datagram.kind == kind && datagram.stream_part_key() == part {
            assert!(datagram.tag_matches(key));
            return;
        }
    }
    panic!("no {kind:?} for the stream part within {TIMEOUT:?}");
}

/// A Data datagram without records on link `link_id`: the filter judges it by its header.
fn empty_data(link_id: u32, key: &LinkKey, link_seq: u64, part: StreamPartKey) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LENGTH];
    let fields = HeaderFields { total_length: HEADER_LENGTH as u16, ..HeaderFields::new(Kind::Data, link_id, link_seq, part.0) };
    wire::write_header(&fields, key, &mut bytes);
    bytes
}

// Goal: Leave, answered `Ok`, makes the owning shard forget the stream part: it sends the
// neighbor an Unsubscribe, and the neighbor's next Data datagram for it is dropped as
// `datagrams_not_joined` (the one before Leave was not); leaving again is an error.
#[test]
fn left_stream_part_drops_neighbor_datagrams_as_not_joined() {
    let node = start_node(&mut rng());
    let neighbor = UdpSocket::bind("127.0.0.1:0").unwrap();
    neighbor.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let key = LinkKey([0x30; 32]);
    let link = LinkConfig { role: LinkRole::Neighbor, peer: Some(neighbor.local_addr().unwrap()), key, ..client_link(30) };
    node.execute(Command::AddLink(link), TIMEOUT).unwrap();
    let part = part_on(0, "leave");
    node.execute(Command::Join { part }, TIMEOUT).unwrap();
    expect_control(&neighbor, &key, Kind::Subscribe, part);

    let shard_address = node.local_addrs()[0];
    neighbor.send_to(&empty_data(30, &key, 1, part), shard_address).unwrap();
    wait_until("the joined datagram", || counter(&node, 0, Counter::DatagramsReceived) == 1);
    assert_eq!(counter(&node, 0, Counter::DatagramsNotJoined), 0, "joined: passes the filter");

    node.execute(Command::Leave { part }, TIMEOUT).unwrap();
    expect_control(&neighbor, &key, Kind::Unsubscribe, part);
    neighbor.send_to(&empty_data(30, &key, 2, part), shard_address).unwrap();
    wait_until("the datagram after Leave to be dropped", || counter(&node, 0, Counter::DatagramsNotJoined) == 1);

    let error = command_error(node.execute(Command::Leave { part }, TIMEOUT));
    assert_eq!(error, CommandError::NotJoined { part, shard: 0 });
    assert!(error.to_string().contains("not joined"), "{error}");
    node.stop().unwrap();
}

// Goal: each bad command gets exactly one response, an error that says what to fix, and
// changes nothing: a link id reused with another role (an identical AddLink is fine), a
// neighbor link without a peer address, RemoveLink of a link that does not exist.
#[test]
fn bad_commands_get_errors_that_say_what_to_fix() {
    let node = start_node(&mut rng());
    node.execute(Command::AddLink(client_link(40)), TIMEOUT).unwrap();
    node.execute(Command::AddLink(client_link(40)), TIMEOUT).expect("an identical AddLink changes nothing and is Ok");

    let as_neighbor = LinkConfig { role: LinkRole::Neighbor, peer: Some("127.0.0.1:9".parse().unwrap()), ..client_link(40) };
    let error = node.execute(Command::AddLink(as_neighbor), TIMEOUT).unwrap_err();
    assert!(matches!(error, NodeError::Command { error: CommandError::LinkExists { link_id: 40 }, .. }), "{error:?}");
    assert!(error.to_string().contains("AddLink command") && error.to_string().contains("RemoveLink 40 first"), "{error}");

    let without_peer = LinkConfig { role: LinkRole::Neighbor, ..client_link(41) };
    let error = command_error(node.execute(Command::AddLink(without_peer), TIMEOUT));
    assert!(matches!(error, CommandError::InvalidLink { link_id: 41, .. }), "{error:?}");
    assert!(error.to_string().contains("AddLink.peer") && error.to_string().contains("listen address"), "{error}");

    let error = command_error(node.execute(Command::RemoveLink { link_id: 42 }, TIMEOUT));
    assert_eq!(error, CommandError::UnknownLink { link_id: 42 });

    // Link 40 is still the client link it was: RemoveLink finds it.
    node.execute(Command::RemoveLink { link_id: 40 }, TIMEOUT).unwrap();
    let counters = node.command_counters();
    assert_eq!((counters.get(CommandCounter::Succeeded), counters.get(CommandCounter::Failed)), (3, 3));
    assert!(node.responses().is_empty(), "exactly one response per command");
    node.stop().unwrap();
}

// Goal: when nobody reads the responses, the node stops taking commands once
// RESPONSE_QUEUE_LENGTH_MAX answers are unread, its command queue fills, and `submit` then
// fails at once with CommandQueueFull (counted) instead of blocking; every accepted command
// still gets exactly one response, and once they are read, commands are taken again.
#[test]
fn a_full_command_queue_is_an_error_not_a_wait() {
    let node = start_node(&mut rng());
    let command = Command::Policy(FilterUpdate::ReleasePublisher { publisher: [7; 20] });
    let started = Instant::now();
    let mut accepted = HashSet::new();
    let refusal = loop {
        match node.submit(command.clone()) {
            Ok(id) => assert!(accepted.insert(id)),
            Err(error) => break error,
        }
        assert!(accepted.len() <= 10 * SUBMITTED_COMMANDS_MAX, "the queue never filled");
    };
    assert!(started.elapsed() < TIMEOUT, "submitting took {:?}: it must not wait", started.elapsed());
    assert!(matches!(refusal, NodeError::CommandQueueFull), "{refusal:?}");
    assert!(refusal.to_string().contains("read the responses"), "{refusal}");
    let bound = SUBMITTED_COMMANDS_MAX + RESPONSE_QUEUE_LENGTH_MAX + COMMANDS_IN_FLIGHT_MAX;
    assert!((SUBMITTED_COMMANDS_MAX..=bound).contains(&accepted.len()), "{} accepted", accepted.len());
    assert_eq!(node.command_counters().get(CommandCounter::RejectedQueueFull), 1);

    let mut answered: HashSet<CommandId> = HashSet::new();
    while answered.len() < accepted.len() {
        let response = node.responses().recv_timeout(TIMEOUT).expect("a response to every accepted command");
        assert_eq!(response.result, Ok(()));
        assert!(accepted.contains(&response.id) && answered.insert(response.id), "one response per command: {:?}", response.id);
    }
    node.execute(command, TIMEOUT).expect("commands are taken again once the responses are read");
    assert!(node.responses().is_empty());
    node.stop().unwrap();
}
