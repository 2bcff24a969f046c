//! # runnel-client: the client side of a client link: what `runnel pub`, `runnel sub` and load generators use.
//!
//! A client talks to one node over a client link (a link id and a 32-byte key configured
//! on the node with `role = "client"`), described by a [`ClientLinkConfig`] file. Each
//! stream part lives on node shard `shard_of(key, node_shards)`, listening on `node port +
//! shard`, so the client addresses every datagram to the owning shard directly.
//!
//! Layers, quinn-style:
//! - [`Publisher`] (no I/O): assigns chain, sequence and previous ref, and signs messages
//!   one by one or under Merkle roots of frames, producing encoded frames.
//! - [`ClientCore`] (no I/O, time passed in): packs frames into GSO-shaped runs of
//!   datagrams ([`runnel_core::relay::Transmit`]), keeps subscriptions
//!   alive, and turns received datagrams into [`Delivery`]s after link tag, replay,
//!   signature and duplicate checks. It makes both client hops reliable like the node↔node
//!   hops: as a publisher it keeps a repair ring of what it published, answers the node's
//!   NAKs from it and probes idle chains' tails; as a subscriber it detects gaps on the
//!   node→client hop, NAKs them, and delivers every chain in order.
//! - [`UdpClient`]: the two above on a blocking UDP socket with GSO sends and GRO receives.
//! - [`PublisherThread`]: a publishing `UdpClient` on its own thread that signs and sends as
//!   soon as it is free, so batches are as large as the load makes them (no flush timers).
//!
//! Limits: repair covers the last few seconds ([`REPAIR_AGE_MAX_US`]) and a bounded number
//! of bytes; a subscriber gives a hole up after [`NAK_RETRIES_MAX`] NAKs and counts it lost.

mod pipeline;
pub mod sockopt;
mod udp;

pub use crate::pipeline::{PublisherThread, BATCH_MESSAGES_MAX, QUEUE_MESSAGES_MAX};
pub use crate::udp::{unix_time_ms, ClientOptions, UdpClient, PUBLISHERS_MAX, PUBLISH_QUEUE_BYTES_MAX};
// The sans-I/O layers, under the names this crate's users know them by (one list: core's).
pub use runnel_core::client::*;
