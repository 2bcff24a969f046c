//! # runnel-peering
//!
//! Finds each stream part's neighbors and agrees a link key with each: the libp2p half of
//! the control process (DESIGN §1 "neighbor", §2 "control"). What comes out is a stream of
//! [`PeeringEvent`]s — `NeighborUp` with the link id each side gave the link, the link key,
//! and the neighbor's dataplane endpoint; `NeighborDown` — which the control process turns
//! into the dataplane's `AddLink` / `RemoveLink` commands. Nothing here touches the
//! dataplane or the hot path.
//!
//! ```no_run
//! use runnel_peering::{Endpoint, Identity, Peering, PeeringConfig, PeeringEvent};
//! use runnel_proto::stream::StreamPartKey;
//! let identity = Identity::generate(); // or Identity::from_secret(&runnel_keystore::load_secret(..)?.secret)
//! let dataplane = Endpoint { address: "192.0.2.7:7700".parse()?, shards: 2 };
//! let mut config = PeeringConfig::new(identity, dataplane);
//! config.bootstrap = vec!["/ip4/192.0.2.1/tcp/7600/p2p/16Uiu2HAmMUjGmiUhJeiZgu6ZZnLRkE2VViR2JgjqtW9aTZnHQqgg".parse()?];
//! let (peering, events) = Peering::spawn(config)?;
//! peering.join(StreamPartKey([7; 32]))?;
//! for event in events.iter() {
//!     match event {
//!         PeeringEvent::NeighborUp(up) => { /* AddLink { id: up.local_link_id, key: up.key, peer: up.remote_endpoint, .. } */ }
//!         PeeringEvent::NeighborDown(down) => { /* RemoveLink { link_id: down.local_link_id } */ }
//!         PeeringEvent::ClientLinkUp(up) => { /* AddLink { id: up.link_id, key: up.key, role: client, .. } */ }
//!         PeeringEvent::ClientLinkDown(down) => { /* RemoveLink { link_id: down.link_id } */ }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## How
//! - **Identity** ([`Identity`]): one secp256k1 key is the node's PeerId and its Ethereum
//!   address.
//! - **Swarm** (`driver.rs`): TCP (Noise, Yamux) and QUIC; Kademlia under
//!   `/runnel/kad/1.0.0` in server mode; identify (whose listen addresses feed Kademlia's
//!   routing table); ping (a failed ping closes the connection); connection limits; and the
//!   neighbor protocol `/runnel/neighbor/1.0.0` on request-response ([`wire`], `codec.rs`).
//! - **Discovery**: joining a part makes the node a Kademlia provider of its 32-byte key;
//!   while the part has fewer neighbors than the target, the node looks providers up and
//!   proposes to them (`overlay.rs`, the sans-I/O state machine).
//! - **Handshake** (`handshake.rs`): Propose / Accept with ephemeral X25519 keys; the link
//!   key is derived from the shared secret, both PeerIds, the part and both link ids, and is
//!   never sent.
//! - **Threads**: [`Peering::spawn`] starts one thread running a single-threaded tokio
//!   runtime that owns the swarm. The [`PeeringHandle`] talks to it over a bounded queue and
//!   never blocks on tokio primitives, so it works from plain threads (and, since each call
//!   waits at most [`REPLY_TIMEOUT`] for its answer, from async code that tolerates that);
//!   events arrive on a bounded crossbeam channel.
//!
//! ## Limits
//! - One link per (stream part, neighbor): two nodes that share three parts hold three links.
//! - Each side names the link by its own id (`local_link_id`), and the datagram header
//!   carries the receiver's id, so `AddLink` needs both: `id = local_link_id` and the far
//!   end's `remote_link_id` as the id to send with (docs/decisions-peering.md).
//! - Client links ([`client`]): a publisher or subscriber asks a node for one over the same
//!   request-response protocol; it lasts as long as the client's libp2p connection.
//! - Liveness is libp2p's (connection closed, failed pings); the dataplane's missed
//!   heartbeats reach the control process, which drops that neighbor.
//! - Addresses announced to the DHT are the listen addresses (or `external_addresses`); no
//!   NAT traversal.

#[cfg(feature = "swarm")]
pub mod client;
#[cfg(feature = "swarm")]
mod codec;
#[cfg(feature = "swarm")]
mod driver;
#[cfg(feature = "swarm")]
pub mod handshake;
#[cfg(feature = "swarm")]
mod identity;
#[cfg(feature = "swarm")]
mod keep_alive;
#[cfg(feature = "swarm")]
pub mod overlay;
pub mod wire;

#[cfg(feature = "swarm")]
mod api;

#[cfg(feature = "swarm")]
pub use api::*;
#[cfg(feature = "swarm")]
pub use identity::{address_of_peer, Identity, IdentityError};
pub use wire::Endpoint;
