//! # runnel-core: the sans-I/O relay and client state machines
//!
//! What a node shard and a client do with datagrams, without doing any I/O: bytes and the
//! current time go in, datagrams to send, deliveries and events come out (quinn-proto's
//! shape). A seeded simulation drives many relays deterministically
//! (`tests/relay_simulation.rs`); the node's shards (`runnel-node`) and the client library
//! (`runnel-client`) are thin glue around these types. Builds without clang.
//!
//! - [`relay`]: the relay one shard runs (dedup, ordered delivery, NAK repair).
//! - [`client`]: the client side of a client link (publisher, subscriber, repair).
//! - [`filter`]: the early-rejection checks (the XDP program's rules, run in userspace).
//! - [`credit`]: flow control (window grants), shared by relay and client links.
//! - [`counters`]: the closed set of dataplane counters.
//! - [`link`]: links and shard ownership, as plain data.

pub mod client;
pub mod counters;
pub mod credit;
pub mod filter;
pub mod link;
pub mod relay;
