//! Helpers shared by the node's command and IPC tests: a node on free loopback ports,
//! client links, and waiting with a deadline.

use rand::{Rng, SeedableRng};
use runnel_client::ClientLinkConfig;
use runnel_node::config::{LinkConfig, LinkRole, NodeConfig};
use runnel_node::node::{Node, NodeError, NodeHandle};
use runnel_proto::linktag::LinkKey;
use std::time::{Duration, Instant};

pub const SHARDS: u16 = 2;
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn rng() -> rand::rngs::StdRng {
    let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("RUNNEL_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A node with [`SHARDS`] shards and no links, on a random free run of ports on 127.0.0.1.
pub fn start_node(rng: &mut impl Rng) -> NodeHandle {
    for _ in 0..50 {
        let port: u16 = rng.random_range(20_000..60_000);
        let config = NodeConfig::parse(&format!("[node]\nlisten = \"127.0.0.1:{port}\"\nshards = {SHARDS}\n")).unwrap();
        match Node::start(config) {
            Ok(node) => return node,
            Err(NodeError::AddressInUse { .. }) => continue,
            Err(error) => panic!("node did not start: {error}"),
        }
    }
    panic!("no free run of {SHARDS} ports found in 50 tries");
}

pub fn client_link(id: u32) -> LinkConfig {
    LinkConfig {
        id,
        peer_link_id: None,
        key: LinkKey([id as u8; 32]),
        role: LinkRole::Client,
        peer: None,
        peer_shards: 1,
        rate_datagrams_per_s: 0,
        burst_datagrams: 1,
    }
}

/// The client's side of `link` on `node`.
pub fn client_side(node: &NodeHandle, link: &LinkConfig) -> ClientLinkConfig {
    ClientLinkConfig { node: node.local_addrs()[0], node_shards: SHARDS, link_id: link.id, key: link.key, datagram_length_max: 1472 }
}

/// Waits until `condition` holds, at most [`TIMEOUT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
