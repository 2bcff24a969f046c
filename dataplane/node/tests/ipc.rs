//! The IPC socket (`runnel_node::ipc`) on a real node: a control client in this process
//! drives a node through a real unix socket, exactly as the control process will.
//!
//! It checks that commands, their responses, events and status cross the socket; that bad
//! frames close the connection and leave the node running; and that after the control side
//! dies a new control connection re-syncs by replaying its state while the node keeps
//! forwarding all along.

use runnel_client::{ClientOptions, Outgoing, UdpClient};
use runnel_core::counters::Counter;
use runnel_node::command::Command;
use runnel_node::config::LinkRole;
use runnel_node::ipc::{self, IpcClient, IpcCounters, Reply, WireEvent};
use runnel_proto::crypto::PublisherKey;
use runnel_proto::stream::StreamPart;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{client_link, client_side, rng, start_node, wait_until, SHARDS, TIMEOUT};

/// A private directory for the socket (removed at the end of the test).
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> SocketDir {
        let dir = std::env::temp_dir().join(format!("runnel-ipc-test-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap();
        SocketDir(dir)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// Goal: everything the control process needs crosses the socket: AddLink and Join answered
// Ok, a bad command answered with its error kind, the Joined event, Status with the node's
// counters; messages then flow through the links the IPC added; the control side dies and a
// new one replays its state (Ok, nothing changes) while the node forwarded all along; and a
// garbage frame closes only that connection (counted), the node unaffected.
#[test]
fn a_control_client_drives_the_node_over_the_socket_and_reconnects() {
    let mut rng = rng();
    let node = start_node(&mut rng);
    let dir = SocketDir::new();
    let path = dir.0.join("dataplane.sock");
    let listener = ipc::bind(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "only the node's user may drive it");
    let stop = AtomicBool::new(false);
    let counters = IpcCounters::default();
    /// Stops the server when the test body ends, also by a failed assertion: the scope
    /// would otherwise wait for the server thread forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    std::thread::scope(|scope| {
        let server = scope.spawn(|| ipc::serve(&node, &listener, &stop, &counters));
        let _stop_server = StopOnDrop(&stop);

        let mut control = IpcClient::connect(&path, TIMEOUT).unwrap();
        assert_eq!((control.shards, control.listen.len()), (SHARDS, SHARDS as usize));
        assert_eq!(control.links, Vec::<u32>::new(), "no command has added a link yet");
        let part = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/ipc#0").unwrap();
        let (publisher_link, subscriber_link) = (client_link(11), client_link(12));
        let mut events = Vec::new();
        let state =
            [Command::AddLink(publisher_link.clone()), Command::AddLink(subscriber_link.clone()), Command::Join { part: part.key() }];
        for command in &state {
            assert_eq!(control.execute(command, |e| events.push(e)).unwrap(), Ok(()), "{command:?}");
        }
        let error = control.execute(&Command::RemoveLink { link_id: 999 }, |e| events.push(e)).unwrap().unwrap_err();
        assert_eq!(error.kind, "unknown_link");
        assert!(error.message.contains("999"), "{}", error.message);
        let mut bad_neighbor = client_link(13);
        bad_neighbor.role = LinkRole::Neighbor;
        let error = control.execute(&Command::AddLink(bad_neighbor), |e| events.push(e)).unwrap().unwrap_err();
        assert_eq!(error.kind, "invalid_link", "{}", error.message);
        // The Joined event arrives (if not already read during the commands).
        let deadline = Instant::now() + TIMEOUT;
        while !events.iter().any(|e| matches!(e, WireEvent::Joined { part: p, .. } if *p == part.key().0)) {
            assert!(Instant::now() < deadline, "no Joined event: {events:?}");
            if let Reply::Event(event) = control.read().unwrap() {
                events.push(event);
            }
        }

        // Messages flow through the links the IPC added.
        let mut subscriber = UdpClient::connect(&client_side(&node, &subscriber_link)).unwrap();
        subscriber.subscribe(&part.key()).unwrap();
        let options = ClientOptions { publisher_key: Some(PublisherKey::generate()), ..ClientOptions::default() };
        let mut publisher = UdpClient::connect_with(&client_side(&node, &publisher_link), options).unwrap();
        let mut received = 0u64;
        let publish_and_receive = |publisher: &mut UdpClient, subscriber: &mut UdpClient, received: &mut u64, count: u64| {
            let target = *received + count;
            for i in 0..count {
                publisher.publish(&part.key(), &Outgoing::binary(1_700_000_000_000 + i, b"over ipc")).unwrap();
            }
            publisher.flush().unwrap();
            let deadline = Instant::now() + TIMEOUT;
            while *received < target {
                assert!(Instant::now() < deadline, "received {received} of {target}");
                subscriber.recv(Duration::from_millis(20), |_| *received += 1).unwrap();
                publisher.poll().unwrap();
            }
        };
        std::thread::sleep(Duration::from_millis(50));
        publish_and_receive(&mut publisher, &mut subscriber, &mut received, 100);

        // Status: the node's counters by name. Shards publish their counters every few loop
        // turns, so the deliveries show up within a moment, not necessarily in the first reply.
        let deadline = Instant::now() + TIMEOUT;
        let counters_now = loop {
            let id = control.request_status().unwrap();
            let counters_now = loop {
                match control.read().unwrap() {
                    Reply::Status { id: answered, counters, .. } if answered == id => break counters,
                    _ => {}
                }
            };
            let delivered = counters_now.iter().find(|(name, _)| name == Counter::FramesDelivered.name()).map(|(_, v)| *v);
            if delivered.is_some_and(|d| d > 0) {
                break counters_now;
            }
            assert!(Instant::now() < deadline, "frames_delivered in {counters_now:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(counters_now.iter().any(|(name, _)| name.starts_with("runtime_")));

        // The control side dies; the node keeps forwarding; a new control replays its state.
        drop(control);
        publish_and_receive(&mut publisher, &mut subscriber, &mut received, 100);
        let mut control = IpcClient::connect(&path, TIMEOUT).unwrap();
        assert_eq!(control.links, vec![11, 12], "the new control learns the links the old one added");
        for command in &state {
            assert_eq!(control.execute(command, |_| {}).unwrap(), Ok(()), "replaying {command:?} changes nothing");
        }
        publish_and_receive(&mut publisher, &mut subscriber, &mut received, 100);

        // Garbage: a frame that is not a message, then one too long. Each closes its
        // connection. (The server serves one connection at a time: the control goes first.)
        drop(control);
        let mut garbage = IpcClient::connect(&path, TIMEOUT).unwrap();
        garbage.send_raw(&[8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert!(matches!(garbage.read(), Ok(Reply::ProtocolError { .. })));
        let mut oversized = IpcClient::connect(&path, TIMEOUT).unwrap();
        oversized.send_raw(&u32::MAX.to_le_bytes()).unwrap();
        assert!(matches!(oversized.read(), Ok(Reply::ProtocolError { .. })));
        drop(oversized);
        wait_until("two protocol errors counted", || counters.protocol_errors.load(Ordering::Relaxed) == 2);
        publish_and_receive(&mut publisher, &mut subscriber, &mut received, 100);
        assert_eq!(received, 400);

        stop.store(true, Ordering::Release);
        server.join().unwrap().unwrap();
    });
    assert!(counters.connections.load(Ordering::Relaxed) >= 4);
    node.stop().unwrap();
}
