//! # runnel-proto: Runnel's wire protocol, with no I/O
//!
//! Everything two Runnel parties must agree on byte for byte, and nothing else: the datagram
//! and its link header, message records, the link tag, stream part names and keys, publisher
//! signatures (per message and Merkle batches), and the filter's shared vocabulary (verdict
//! ids, the rate-limit parameters, the clock). docs/protocol.md specifies it; the test
//! vectors there are computed by this crate's tests. The XDP loader (`runnel-ebpf`), the
//! sans-I/O core, the node and the client all build on this crate; it builds without clang,
//! aya or serde.
//!
//! - [`wire`]: datagrams and message records, read in place with rkyv.
//! - [`crypto`]: Ethereum-style publisher signatures and blake3 Merkle batch signatures.
//! - [`linktag`]: the keyed header tag that authenticates datagrams on a link.
//! - [`stream`]: stream and stream part names and keys.
//! - [`receipt`]: signed per-epoch traffic reports, what settlement pays from.
//! - [`verdict`], [`rate`], [`clock`]: what the XDP and userspace filters share.
//! - [`testing`]: the seeded generator tests and simulations use.

pub mod clock;
pub mod crypto;
pub mod frame;
pub mod linktag;
pub mod rate;
pub mod receipt;
pub mod stream;
pub mod testing;
pub mod verdict;
pub mod wire;
