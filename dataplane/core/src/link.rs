//! Links as the relay and the client core see them: who is at the far end, its key, its
//! rate, and which shard of a node owns a stream part. Plain data: the node's TOML file
//! (`runnel-node`'s `config`) and the client's link file (`runnel-client`) parse into these,
//! and later the control process will hand them over its command interface.

use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPartKey;
use serde::Deserialize;
use std::net::SocketAddr;

/// Whether records' publisher signatures are verified before delivery and forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerifyPolicy {
    /// Verify each record's signature once, before it is delivered or forwarded.
    #[default]
    All,
    /// Trust publishers: no verification (closed networks, benchmarks of the relay alone).
    None,
}

/// What a node does with a subscribed client that cannot keep up with its stream parts
/// (docs/decisions-flow-control.md). Either way the other subscribers never wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Complete or nothing: a client that grants no credit for the slow-consumer timeout is
    /// cut off (its queue dropped, its interest forgotten until its next Subscribe).
    #[default]
    Cut,
    /// Freshest first: a client's queue never holds more than the backlog bound — the oldest
    /// datagrams make room for new ones — and one silent for the timeout has its queue
    /// dropped but stays subscribed, resuming at the live position when it grants again.
    Skip,
}

/// How a relay passes frames to its neighbors in a stream part (docs/decisions-plumtree.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Plumtree (eager/lazy push): full frames along a spanning tree of the stream part's
    /// overlay, frame ids (IHave) to the other neighbors, so a lost route is grafted from an
    /// announcement and a frame reaches a node about once.
    #[default]
    Plumtree,
    /// Every frame to every neighbor but its source: the most robust, about degree − 1
    /// duplicates per delivery. For comparison (benchmarks, the simulator).
    Flood,
}

/// What the far end of a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkRole {
    /// Another node: stream parts are exchanged both ways, messages forwarded immediately.
    Neighbor,
    /// A publisher or subscriber: it gets ordered delivery and never forwards.
    Client,
}

/// One configured link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// The id this node knows the link by: the id in the headers of datagrams it receives.
    pub id: u32,
    /// The id the far end knows the link by, stamped on datagrams sent on it; `None` when
    /// both ends use `id` (static configs, client links). Peering lets each node choose its
    /// own ids, so a neighbor link found by peering has two.
    pub peer_link_id: Option<u32>,
    pub key: LinkKey,
    pub role: LinkRole,
    /// The neighbor's listen (shard 0) address; `None` for clients (learned from traffic).
    pub peer: Option<SocketAddr>,
    /// How many shards (consecutive ports) the neighbor listens on.
    pub peer_shards: u16,
    /// Datagrams per second this link may send us, sustained (0 = unlimited); the filter
    /// drops the excess (`rate_limited`).
    pub rate_datagrams_per_s: u64,
    /// Datagrams the link may send back to back above its rate.
    pub burst_datagrams: u64,
}

impl LinkConfig {
    /// The link id stamped on datagrams this node sends on the link.
    pub fn send_id(&self) -> u32 {
        self.peer_link_id.unwrap_or(self.id)
    }
}

/// Default per-link rate limit: above what one link needs on this class of machine (its UDP
/// receive ceiling is ~1.1M datagrams/s), so it only bites a link that floods.
pub const LINK_RATE_DATAGRAMS_PER_S_DEFAULT: u64 = 1_000_000;
/// Default per-link burst: 64 ms at the default rate, enough for a GSO train of any size.
pub const LINK_BURST_DATAGRAMS_DEFAULT: u64 = 65_536;

/// A configuration error: which field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Most shards a node runs (one per core; more than this is a typo).
pub const SHARDS_MAX: u16 = 256;
/// Parses a 32-byte link key from 64 hex digits.
pub fn parse_link_key(text: &str) -> Option<LinkKey> {
    let bytes = hex::decode(text.trim().trim_start_matches("0x")).ok()?;
    Some(LinkKey(bytes.try_into().ok()?))
}

/// The shard that owns a stream part on a node with `shards` shards.
pub fn shard_of(key: &StreamPartKey, shards: u16) -> u16 {
    u16::from_le_bytes([key.0[0], key.0[1]]) % shards
}
