//! The Runnel side of the benchmarks: node processes in a line, and clients on their links.
//!
//! [`RunnelNodes::start`] writes one node config per node into the run's work directory and
//! starts each as `<runnel binary> node --config FILE` (a child process, measured like
//! `nats-server`). Nodes form a line, node i ↔ node i+1 over a neighbor link; the publisher
//! has a client link on the first node and every subscriber its own client link on the last
//! (a node tracks one address per client link). One node is the fan-out benchmark, three are
//! the relay chain A → B → C. Link and link keys are fresh random values per run.
//!
//! The clients are [`UdpClient`]s (GSO sends, GRO receives). The publisher signs per message
//! or per batch ([`SignatureMode`]); nodes verify every signature (`verify = "all"`, their
//! real work), subscribers do not (NATS subscribers check nothing either, and a benchmark
//! subscriber verifying would measure the subscriber, not the node).
//!
//! Limits: one stream part, so one shard does the work (nodes run with `shards = 1`; more
//! shards would idle); loopback only; datagrams of 1472 bytes, as on Ethernet.

use crate::fanout::SignatureMode;
use crate::process::{self, ChildGuard};
use crate::workload::{Publisher, Subscriber, System};
use crate::BenchError;
use runnel_client::{unix_time_ms, ClientLinkConfig, ClientOptions, Outgoing, SigningMode, UdpClient, FRAMES_PER_ROOT_DEFAULT};
use runnel_node::config::NodeConfig;
use runnel_proto::crypto::PublisherKey;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::DATAGRAM_LENGTH_DEFAULT;
use std::fmt::Write as _;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The stream part every benchmark message goes to.
pub const STREAM_PART: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/runnel-bench#0";
/// Link id of the publisher's client link; subscribers use the ids after it.
const PUBLISHER_LINK_ID: u32 = 1000;
/// How long a node may take to bind its port.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(10);

fn random_link_key() -> Result<LinkKey, BenchError> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .map_err(|e| BenchError::new(format!("cannot read /dev/urandom for link keys: {e}")))?;
    Ok(LinkKey(key))
}

/// Whether a UDP socket is bound on 127.0.0.1:`port` (read from /proc/net/udp, without
/// touching the port).
fn udp_port_bound(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|table| table.lines().any(|line| line.split_whitespace().nth(1) == Some(&needle)))
}

/// Runnel nodes in a line, with client links for one publisher and N subscribers.
pub struct RunnelNodes {
    children: Vec<(ChildGuard, PathBuf)>,
    publisher_link: ClientLinkConfig,
    subscriber_links: Vec<ClientLinkConfig>,
    stream_part: StreamPartKey,
    signatures: SignatureMode,
}

impl RunnelNodes {
    /// Starts `node_count` nodes (≥ 1) from `binary` and waits until each has bound its port.
    pub fn start(
        binary: &Path,
        node_count: usize,
        subscribers: usize,
        signatures: SignatureMode,
        work_dir: &Path,
    ) -> Result<RunnelNodes, BenchError> {
        assert!(node_count >= 1, "a line of nodes has at least one node");
        let ports: Vec<u16> = (0..node_count).map(|_| process::free_udp_ports(1)).collect::<Result<_, _>>()?;
        let address = |node: usize| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], ports[node])) };
        let neighbor_keys: Vec<LinkKey> = (1..node_count).map(|_| random_link_key()).collect::<Result<_, _>>()?;
        let client_link = |node: usize, link_id: u32| -> Result<ClientLinkConfig, BenchError> {
            Ok(ClientLinkConfig {
                node: address(node),
                node_shards: 1,
                link_id,
                key: random_link_key()?,
                datagram_length_max: DATAGRAM_LENGTH_DEFAULT,
            })
        };
        let publisher_link = client_link(0, PUBLISHER_LINK_ID)?;
        let subscriber_links: Vec<ClientLinkConfig> =
            (0..subscribers).map(|i| client_link(node_count - 1, PUBLISHER_LINK_ID + 1 + i as u32)).collect::<Result<_, _>>()?;

        let mut children = Vec::with_capacity(node_count);
        for node in 0..node_count {
            let mut config = format!(
                "[node]\nlisten = \"{}\"\nshards = 1\ndatagram_length_max = {DATAGRAM_LENGTH_DEFAULT}\nverify = \"all\"\n",
                address(node)
            );
            let mut link = |id: u32, key: &LinkKey, peer: Option<usize>| {
                let _ = write!(config, "\n[[links]]\nid = {id}\nkey = \"{}\"\n", hex_key(key));
                match peer {
                    Some(peer) => {
                        let _ = write!(config, "role = \"neighbor\"\npeer = \"{}\"\npeer_shards = 1\n", address(peer));
                    }
                    None => config.push_str("role = \"client\"\n"),
                }
            };
            // Neighbor link j joins node j and node j+1, with id j+1 at both ends.
            if node > 0 {
                link(node as u32, &neighbor_keys[node - 1], Some(node - 1));
            }
            if node + 1 < node_count {
                link(node as u32 + 1, &neighbor_keys[node], Some(node + 1));
            }
            if node == 0 {
                link(publisher_link.link_id, &publisher_link.key, None);
            }
            if node == node_count - 1 {
                for subscriber in &subscriber_links {
                    link(subscriber.link_id, &subscriber.key, None);
                }
            }
            NodeConfig::parse(&config).map_err(|e| BenchError::new(format!("generated node config is invalid (a bug): {e}")))?;
            let config_path = work_dir.join(format!("node-{node}.toml"));
            std::fs::write(&config_path, &config).map_err(|e| BenchError::new(format!("cannot write {}: {e}", config_path.display())))?;
            let log = work_dir.join(format!("node-{node}.log"));
            let mut command = Command::new(binary);
            command.arg("node").arg("--config").arg(&config_path);
            children.push((ChildGuard::spawn(&format!("runnel node {node}"), command, &log)?, log));
        }
        for (node, (child, log)) in children.iter_mut().enumerate() {
            let deadline = Instant::now() + NODE_START_TIMEOUT;
            while !udp_port_bound(ports[node]) {
                child.check_running(log)?;
                if Instant::now() > deadline {
                    return Err(BenchError::new(format!(
                        "runnel node {node} did not bind UDP port {} within {NODE_START_TIMEOUT:?}; log: {}",
                        ports[node],
                        process::log_tail(log)
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let stream_part = StreamPart::parse(STREAM_PART).map_err(|e| BenchError::new(e.0))?.key();
        Ok(RunnelNodes { children, publisher_link, subscriber_links, stream_part, signatures })
    }
}

fn hex_key(key: &LinkKey) -> String {
    key.0.iter().fold(String::with_capacity(64), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

fn io_error(what: &str) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::new(format!("{what}: {e}"))
}

impl System for RunnelNodes {
    type Publisher = RunnelPublisher;
    type Subscriber = RunnelSubscriber;

    fn server_pids(&self) -> Vec<u32> {
        self.children.iter().map(|(child, _)| child.pid()).collect()
    }

    fn check_running(&mut self) -> Result<(), BenchError> {
        self.children.iter_mut().try_for_each(|(child, log)| child.check_running(log))
    }

    fn publisher(&mut self) -> Result<RunnelPublisher, BenchError> {
        let signing = match self.signatures {
            SignatureMode::Single => SigningMode::PerMessage,
            SignatureMode::Batch => SigningMode::Batch { frames_per_root_max: FRAMES_PER_ROOT_DEFAULT },
        };
        let options = ClientOptions { publisher_key: Some(PublisherKey::generate()), signing, verify: false, gso: true };
        let client = UdpClient::connect_with(&self.publisher_link, options).map_err(io_error("publisher client"))?;
        Ok(RunnelPublisher { client, stream_part: self.stream_part, timestamp_ms: unix_time_ms() })
    }

    fn subscriber(&mut self, index: usize) -> Result<RunnelSubscriber, BenchError> {
        let link = self.subscriber_links.get(index).ok_or_else(|| BenchError::new(format!("no client link for subscriber {index}")))?;
        let options = ClientOptions { publisher_key: None, verify: false, ..ClientOptions::default() };
        let mut client = UdpClient::connect_with(link, options).map_err(io_error("subscriber client"))?;
        client.subscribe(&self.stream_part).map_err(io_error("subscribe"))?;
        Ok(RunnelSubscriber { client })
    }
}

/// The benchmark publisher: one chain on the benchmark stream part.
pub struct RunnelPublisher {
    client: UdpClient,
    stream_part: StreamPartKey,
    /// Wall-clock ms for records' timestamps, refreshed at every flush (latency is measured
    /// with the payload's monotonic stamp, not this).
    timestamp_ms: u64,
}

impl Publisher for RunnelPublisher {
    #[inline]
    fn publish(&mut self, payload: &[u8]) -> Result<(), BenchError> {
        let message = Outgoing::binary(self.timestamp_ms, payload);
        self.client.publish(&self.stream_part, &message).map_err(io_error("publish"))
    }

    fn flush(&mut self) -> Result<(), BenchError> {
        self.timestamp_ms = unix_time_ms();
        self.client.flush().map_err(io_error("publisher flush"))
    }

    fn poll(&mut self) -> Result<(), BenchError> {
        self.client.poll().map_err(io_error("publisher poll"))
    }
}

/// One benchmark subscriber on its own client link.
pub struct RunnelSubscriber {
    client: UdpClient,
}

impl Subscriber for RunnelSubscriber {
    fn receive(&mut self, wait: Duration, on_message: &mut dyn FnMut(&[u8])) -> Result<(), BenchError> {
        self.client.recv(wait, |delivery| on_message(delivery.payload)).map_err(io_error("subscriber receive"))?;
        Ok(())
    }
}
