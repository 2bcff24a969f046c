//! The Zenoh peer of `runnel bench fanout --against zenoh` (cargo feature `zenoh`).
//!
//! Zenoh has no server in this setup: every participant is a Zenoh session in peer mode in
//! this process, and the publisher's session routes to the subscribers itself.
//!
//! - the publisher's session listens on `tcp/127.0.0.1:PORT` (a free loopback port); each of
//!   the N subscribers is its own session that connects to it and listens nowhere, so the
//!   topology is a star: one TCP connection per subscriber, the publisher's session sending
//!   each message once per connection (what a `nats-server` does for its subscribers);
//! - multicast scouting and gossip are off: the peers find each other only through the
//!   configured endpoint, and the subscribers do not connect among themselves;
//! - publications are reliable (Zenoh's default `Reliability::Reliable` — setting it
//!   explicitly needs zenoh's `unstable` feature), [`CongestionControl::Block`] (a full
//!   transmission queue blocks `put` instead of dropping: back-pressure, as TCP gives the
//!   NATS publisher) and `express(false)`, so Zenoh batches small messages into its 64 KiB
//!   frames on its own (its best throughput setting); every other setting is Zenoh's default;
//! - the sessions are driven through Zenoh's synchronous [`Wait`] API; Zenoh runs its own
//!   tokio runtime threads underneath;
//! - each subscriber receives into a FIFO channel of [`SUBSCRIBER_QUEUE_SAMPLES`] samples
//!   (when full, Zenoh's receive task waits: back-pressure up to the publisher) and the
//!   workload's subscriber thread empties it.
//!
//! Zenoh batches and flushes by itself, so [`Publisher::flush`] has nothing to do, and the
//! workload's flush schedule does not apply to it. Limits: there is no server process, so
//! the server CPU and RSS figures are not measured for Zenoh (null in the JSON, `-` in the table: the routing work
//! runs in the publisher's session inside this process); publisher, subscribers and Zenoh's
//! runtime threads share this process and the machine's cores.

use crate::process;
use crate::workload::{Publisher, Subscriber, System};
use crate::BenchError;
use ::zenoh::handlers::{FifoChannel, FifoChannelHandler};
use ::zenoh::qos::CongestionControl;
use ::zenoh::sample::Sample;
use ::zenoh::{Config, Session, Wait};
use std::time::Duration;

/// The key expression every benchmark message is published on.
pub const KEY_EXPR: &str = "runnel/bench";
/// Samples a subscriber's receive channel holds before Zenoh's receive task waits for it.
pub const SUBSCRIBER_QUEUE_SAMPLES: usize = 64 * 1024;
/// Samples one `receive` call hands on at most, so the subscriber thread publishes its
/// counts often even under a steady stream.
const RECEIVE_BATCH_MAX: usize = 4096;

fn zenoh_error(what: &str, error: impl std::fmt::Display) -> BenchError {
    BenchError::new(format!("zenoh: {what}: {error}"))
}

/// A peer-mode session configuration: TCP only, no scouting; `listen` and `connect` are JSON
/// lists of endpoints.
fn peer_config(listen: &str, connect: &str) -> Result<Config, BenchError> {
    let mut config = Config::default();
    let settings = [
        ("mode", r#""peer""#),
        ("listen/endpoints", listen),
        ("connect/endpoints", connect),
        // Fail to open rather than retry in the background when the publisher is not there.
        ("connect/exit_on_failure", "true"),
        ("scouting/multicast/enabled", "false"),
        ("scouting/gossip/enabled", "false"),
    ];
    for (key, value) in settings {
        config.insert_json5(key, value).map_err(|e| zenoh_error(&format!("config {key} = {value}"), e))?;
    }
    Ok(config)
}

/// The Zenoh side of the fan-out: the publisher's listening session; subscribers connect to it.
pub struct ZenohPeers {
    session: Session,
    port: u16,
}

impl ZenohPeers {
    /// Opens the publisher's peer session, listening on a free loopback TCP port.
    pub fn start() -> Result<ZenohPeers, BenchError> {
        let port = process::free_tcp_port()?;
        let config = peer_config(&format!(r#"["tcp/127.0.0.1:{port}"]"#), "[]")?;
        let session =
            ::zenoh::open(config).wait().map_err(|e| zenoh_error(&format!("cannot open the publisher's session on port {port}"), e))?;
        Ok(ZenohPeers { session, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl System for ZenohPeers {
    type Publisher = ZenohPublisher;
    type Subscriber = ZenohSubscriber;

    /// None: no server process (see the module notes).
    fn server_pids(&self) -> Vec<u32> {
        Vec::new()
    }

    fn check_running(&mut self) -> Result<(), BenchError> {
        if self.session.is_closed() {
            return Err(BenchError::new("zenoh: the publisher's session closed"));
        }
        Ok(())
    }

    /// A new publisher on the publisher's session (a fresh one per search step, as for NATS).
    fn publisher(&mut self) -> Result<ZenohPublisher, BenchError> {
        let publisher = self
            .session
            .declare_publisher(KEY_EXPR)
            .congestion_control(CongestionControl::Block)
            .express(false)
            .wait()
            .map_err(|e| zenoh_error("cannot declare the publisher", e))?;
        Ok(ZenohPublisher { publisher })
    }

    /// A new peer session connected to the publisher's, with one subscriber on it.
    fn subscriber(&mut self, index: usize) -> Result<ZenohSubscriber, BenchError> {
        let config = peer_config("[]", &format!(r#"["tcp/127.0.0.1:{}"]"#, self.port))?;
        let session = ::zenoh::open(config).wait().map_err(|e| zenoh_error(&format!("subscriber {index} cannot open its session"), e))?;
        let subscriber = session
            .declare_subscriber(KEY_EXPR)
            .with(FifoChannel::new(SUBSCRIBER_QUEUE_SAMPLES))
            .wait()
            .map_err(|e| zenoh_error(&format!("subscriber {index} cannot subscribe"), e))?;
        Ok(ZenohSubscriber { subscriber, _session: session })
    }
}

/// One publisher on the publisher's session.
pub struct ZenohPublisher {
    publisher: ::zenoh::pubsub::Publisher<'static>,
}

impl Publisher for ZenohPublisher {
    #[inline]
    fn publish(&mut self, payload: &[u8]) -> Result<(), BenchError> {
        self.publisher.put(payload.to_vec()).wait().map_err(|e| zenoh_error("put", e))
    }

    /// Nothing to do: Zenoh's transmission task sends its batches as soon as the link takes them.
    fn flush(&mut self) -> Result<(), BenchError> {
        Ok(())
    }
}

/// One subscriber with its own peer session.
pub struct ZenohSubscriber {
    // Dropped before its session (fields drop in declaration order).
    subscriber: ::zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>,
    _session: Session,
}

impl Subscriber for ZenohSubscriber {
    fn receive(&mut self, wait: Duration, on_message: &mut dyn FnMut(&[u8])) -> Result<(), BenchError> {
        let Some(first) = self.subscriber.recv_timeout(wait).map_err(|e| zenoh_error("receive", e))? else {
            return Ok(());
        };
        on_message(&first.payload().to_bytes());
        for _ in 1..RECEIVE_BATCH_MAX {
            match self.subscriber.try_recv().map_err(|e| zenoh_error("receive", e))? {
                Some(sample) => on_message(&sample.payload().to_bytes()),
                None => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: over the star of peer sessions, every subscriber receives exactly what the
    // publisher sent, in order (reliable, blocking congestion control, batched).
    #[test]
    fn round_trip_through_zenoh_peers() {
        let mut peers = ZenohPeers::start().unwrap();
        let mut subscribers: Vec<_> = (0..2).map(|index| peers.subscriber(index).unwrap()).collect();
        let mut publisher = peers.publisher().unwrap();
        // Wait until both subscriptions reached the publisher: probes until each got one.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for subscriber in &mut subscribers {
            let mut got = false;
            while !got {
                assert!(std::time::Instant::now() < deadline, "subscriptions never reached the publisher");
                publisher.publish(&[0xff; 4]).unwrap();
                subscriber.receive(Duration::from_millis(20), &mut |_| got = true).unwrap();
            }
        }
        for i in 0..10_000u32 {
            publisher.publish(&i.to_le_bytes()).unwrap();
        }
        publisher.flush().unwrap();
        for subscriber in &mut subscribers {
            let mut received = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while received.len() < 10_000 && std::time::Instant::now() < deadline {
                subscriber
                    .receive(Duration::from_millis(50), &mut |p| {
                        let value = u32::from_le_bytes(p.try_into().unwrap());
                        // Probes from the readiness loop may still be queued.
                        if value != u32::from_le_bytes([0xff; 4]) {
                            received.push(value);
                        }
                    })
                    .unwrap();
            }
            assert_eq!(received, (0..10_000).collect::<Vec<_>>());
        }
        peers.check_running().unwrap();
        assert!(peers.server_pids().is_empty());
    }
}
