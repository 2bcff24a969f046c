//! The node's configuration file (TOML): its address, shards, policies and static links.
//!
//! Until peering exists (the control process's libp2p overlay), a node's links — neighbors
//! and clients, with their ids and 32-byte keys — come from this file. Every error names the
//! field and says how to fix it.
//!
//! ```toml
//! [node]
//! listen = "127.0.0.1:7000"   # shard i listens on port 7000 + i
//! shards = 2                  # default: one per core
//! datagram_length_max = 1472  # bytes of UDP payload; more on loopback/jumbo frames
//! verify = "all"              # or "none": trust publishers (benchmarks, closed networks)
//!
//! [[links]]
//! id = 1
//! key = "<64 hex digits>"
//! role = "neighbor"           # another node; needs peer (its listen address) and peer_shards
//! peer = "127.0.0.1:7100"
//! peer_shards = 2
//!
//! [[links]]
//! id = 100
//! key = "<64 hex digits>"
//! role = "client"             # a publisher/subscriber; its address is learned from traffic
//! ```

use crate::linktag::LinkKey;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

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
    pub id: u32,
    pub key: LinkKey,
    pub role: LinkRole,
    /// The neighbor's listen (shard 0) address; `None` for clients (learned from traffic).
    pub peer: Option<SocketAddr>,
    /// How many shards (consecutive ports) the neighbor listens on.
    pub peer_shards: u16,
}

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub shards: u16,
    pub datagram_length_max: usize,
    pub verify: VerifyPolicy,
    pub links: Vec<LinkConfig>,
}

/// A configuration error: which field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    links: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    listen: String,
    shards: Option<u16>,
    datagram_length_max: Option<usize>,
    #[serde(default)]
    verify: VerifyPolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    id: u32,
    key: String,
    role: LinkRole,
    peer: Option<String>,
    peer_shards: Option<u16>,
}

/// Most shards a node runs (one per core; more than this is a typo).
pub const SHARDS_MAX: u16 = 256;
/// Most links one node configures.
pub const LINKS_MAX: usize = 65_536;

/// Parses a 32-byte link key from 64 hex digits.
pub fn parse_link_key(text: &str) -> Option<LinkKey> {
    let bytes = hex::decode(text.trim().trim_start_matches("0x")).ok()?;
    Some(LinkKey(bytes.try_into().ok()?))
}

/// One core per shard by default.
pub fn default_shards() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(SHARDS_MAX as usize) as u16)
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError(format!("invalid TOML: {e}")))?;
        let listen: SocketAddr = raw.node.listen.parse().map_err(|_| {
            ConfigError(format!("node.listen = {:?} is not an address: write ip:port, e.g. \"127.0.0.1:7000\"", raw.node.listen))
        })?;
        let shards = raw.node.shards.unwrap_or_else(default_shards);
        if shards == 0 || shards > SHARDS_MAX {
            return Err(ConfigError(format!("node.shards = {shards}: use 1..={SHARDS_MAX}, normally one per core")));
        }
        if listen.port() as u32 + shards as u32 > 65_536 || listen.port() == 0 {
            return Err(ConfigError(format!(
                "node.listen port {} with {shards} shards does not fit: shards use ports port..port+shards, pick a nonzero port below {}",
                listen.port(),
                65_536 - shards as u32
            )));
        }
        let datagram_length_max = raw.node.datagram_length_max.unwrap_or(crate::wire::DATAGRAM_LENGTH_DEFAULT);
        let minimum = crate::wire::HEADER_LENGTH + crate::wire::MESSAGE_HEADER_LENGTH + crate::wire::SIGNATURE_LENGTH + 64;
        if !(minimum..=crate::wire::DATAGRAM_LENGTH_MAX).contains(&datagram_length_max) {
            return Err(ConfigError(format!(
                "node.datagram_length_max = {datagram_length_max}: use {minimum}..={} (1472 for Ethernet, up to 65507 on loopback)",
                crate::wire::DATAGRAM_LENGTH_MAX
            )));
        }
        if raw.links.len() > LINKS_MAX {
            return Err(ConfigError(format!("{} links configured: at most {LINKS_MAX}", raw.links.len())));
        }
        let mut links = Vec::with_capacity(raw.links.len());
        let mut seen = std::collections::HashSet::new();
        for (index, link) in raw.links.into_iter().enumerate() {
            let field = |name: &str| format!("links[{index}].{name}");
            if !seen.insert(link.id) {
                return Err(ConfigError(format!("{} = {}: link ids must be unique, another link uses it", field("id"), link.id)));
            }
            let key = parse_link_key(&link.key).ok_or_else(|| {
                ConfigError(format!("{}: must be 64 hex digits (32 bytes); `runnel keygen --link` makes one", field("key")))
            })?;
            let peer = match (&link.role, link.peer) {
                (LinkRole::Neighbor, None) => {
                    return Err(ConfigError(format!(
                        "{}: a neighbor link needs the neighbor's listen address, e.g. \"127.0.0.1:7100\"",
                        field("peer")
                    )))
                }
                (LinkRole::Neighbor, Some(text)) => Some(
                    text.parse::<SocketAddr>()
                        .map_err(|_| ConfigError(format!("{} = {text:?} is not an address: write ip:port", field("peer"))))?,
                ),
                (LinkRole::Client, Some(_)) => {
                    return Err(ConfigError(format!("{}: client links learn their address from traffic; remove peer", field("peer"))))
                }
                (LinkRole::Client, None) => None,
            };
            let peer_shards = link.peer_shards.unwrap_or(1);
            if peer_shards == 0 || peer_shards > SHARDS_MAX {
                return Err(ConfigError(format!(
                    "{} = {peer_shards}: use the neighbor's node.shards (1..={SHARDS_MAX})",
                    field("peer_shards")
                )));
            }
            links.push(LinkConfig { id: link.id, key, role: link.role, peer, peer_shards });
        }
        Ok(Self { listen, shards, datagram_length_max, verify: raw.node.verify, links })
    }
}

/// The shard that owns a stream part on a node with `shards` shards.
pub fn shard_of(key: &crate::stream::StreamPartKey, shards: u16) -> u16 {
    u16::from_le_bytes([key.0[0], key.0[1]]) % shards
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    // Goal: a full config parses, and each kind of mistake names its field and the fix.
    #[test]
    fn parses_and_names_bad_fields() {
        let good = format!(
            "[node]\nlisten = \"127.0.0.1:7000\"\nshards = 2\n[[links]]\nid = 1\nkey = \"{KEY}\"\nrole = \"neighbor\"\npeer = \"127.0.0.1:7100\"\npeer_shards = 2\n[[links]]\nid = 2\nkey = \"{KEY}\"\nrole = \"client\"\n"
        );
        let config = NodeConfig::parse(&good).unwrap();
        assert_eq!(config.links.len(), 2);
        assert_eq!(config.verify, VerifyPolicy::All);
        let cases = [
            (good.replace("127.0.0.1:7000", "nowhere"), "node.listen"),
            (good.replace("shards = 2\n[[", "shards = 0\n[["), "node.shards"),
            (good.replacen(KEY, "abc", 1), "links[0].key"),
            (good.replace("id = 2", "id = 1"), "links[1].id"),
            (good.replace("peer = \"127.0.0.1:7100\"\n", ""), "links[0].peer"),
            (good.replace("role = \"client\"", "role = \"client\"\npeer = \"1.2.3.4:5\""), "links[1].peer"),
            (good.replace("[node]", "[node]\ncolour = 1"), "colour"),
        ];
        for (text, field) in cases {
            let error = NodeConfig::parse(&text).unwrap_err().0;
            assert!(error.contains(field), "error {error:?} should name {field}");
        }
    }
}
