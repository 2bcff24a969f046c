//! # runnel-dataplane
//!
//! The fast path of a Runnel node: everything a message touches between the wire and a
//! subscriber. It depends on nothing in `control/`.
//!
//! - [`wire`]: datagrams and message records, read in place with rkyv (no I/O).
//! - [`crypto`]: Ethereum-style publisher signatures and blake3 Merkle batch signatures.
//! - [`linktag`]: the keyed header tag that authenticates datagrams on a link.
//! - [`stream`]: stream and stream part names and keys.

pub mod crypto;
pub mod linktag;
pub mod stream;
pub mod wire;
