//! The client side of a client link: what `runnel pub`, `runnel sub` and load generators use.
//!
//! A client talks to one node over a client link (a link id and a 32-byte key configured
//! on the node with `role = "client"`), described by a [`ClientLinkConfig`] file. Each
//! stream part lives on node shard `shard_of(key, node_shards)`, listening on `node port +
//! shard`, so the client addresses every datagram to the owning shard directly.
//!
//! Layers, quinn-style:
//! - [`Publisher`] (no I/O): assigns chain, sequence and previous ref, and signs messages
//!   one by one or in Merkle batches, producing encoded records.
//! - [`ClientCore`] (no I/O, time passed in): packs records into GSO-shaped runs of
//!   datagrams ([`crate::relay::Transmit`]), fragments large records, keeps subscriptions
//!   alive, and turns received datagrams into [`Delivery`]s after link tag, replay,
//!   signature and duplicate checks.
//! - [`UdpClient`]: the two above on a blocking UDP socket with GSO sends and GRO receives.
//!
//! Limits: the client trusts the node for ordering and repair (it does not reorder or NAK);
//! it suppresses duplicates only within a window of recent sequences per chain.

mod core;
mod link;
mod publisher;
mod udp;
mod window;

pub use self::core::{
    ClientCore, ClientCounters, ClientError, CoreOptions, Delivery, OwnedDelivery, CHAINS_MAX, GSO_BYTES_MAX, GSO_SEGMENTS_MAX,
    REASSEMBLIES_MAX, REASSEMBLY_TIMEOUT_US, SEND_QUEUE_BYTES_MAX, SUBSCRIBE_REFRESH_US, SUBSCRIPTIONS_MAX,
};
pub use self::link::{ClientLinkConfig, DATAGRAM_LENGTH_MIN};
pub use self::publisher::{Outgoing, PublishError, Publisher, SigningMode, BATCH_SIZE_DEFAULT, RECORDS_PENDING_BYTES_MAX};
pub use self::udp::{unix_time_ms, ClientOptions, UdpClient, PUBLISHERS_MAX};
pub use self::window::{SequenceWindow, WINDOW_LENGTH};
