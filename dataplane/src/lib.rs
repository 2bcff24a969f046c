//! # runnel-dataplane
//!
//! The fast path of a Runnel node: everything a message touches between the wire and a
//! subscriber. It depends on nothing in `control/`.
//!
//! - [`wire`]: datagrams and message records, read in place with rkyv (no I/O).
//! - [`crypto`]: Ethereum-style publisher signatures and blake3 Merkle batch signatures.
//! - [`linktag`]: the keyed header tag that authenticates datagrams on a link.
//! - [`stream`]: stream and stream part names and keys.
//! - [`filter`]: the early-rejection checks (the XDP program's rules, run in userspace).
//! - [`relay`]: the sans-I/O relay core one shard runs (time passed in).
//! - [`counters`]: the closed set of dataplane counters.
//! - [`config`]: the node's TOML configuration and static links.
//! - [`client`]: the publisher/subscriber side of a client link (sans-I/O core + UDP client).

pub mod client;
pub mod config;
pub mod counters;
pub mod crypto;
pub mod filter;
pub mod linktag;
pub mod node;
pub mod policy;
pub mod relay;
pub mod shard;
pub mod sockopt;
pub mod stream;
pub mod testing;
pub mod wire;
