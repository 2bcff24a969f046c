//! The client link file: the one path a `runnel pub` / `runnel sub` user passes.
//!
//! A client link is a link id and a 32-byte key configured on the node as
//! `role = "client"` (see [`crate::link`]). The file says where the node is and how many
//! shards it runs, because a stream part lives on shard `shard_of(key, node_shards)`, which
//! listens on `node port + shard`. Every error names the field and says how to fix it.
//!
//! ```toml
//! node = "127.0.0.1:7000"      # the node's listen address (its shard 0)
//! node_shards = 2              # the node's node.shards
//! link_id = 100                # the node's [[links]] id with role = "client"
//! key = "<64 hex digits>"      # that link's key
//! datagram_length_max = 1472   # optional; bytes of UDP payload (more on loopback)
//! ```

use crate::link::{parse_link_key, shard_of, ConfigError, SHARDS_MAX};
use runnel_proto::frame::FRAME_LENGTH_MIN;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{DATAGRAM_LENGTH_DEFAULT, DATAGRAM_LENGTH_MAX, HEADER_LENGTH};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// Smallest datagram a publisher can fill with frames (one message entry with the longest
/// group key id, its signature and the deepest batch trailer); the node enforces the same floor.
pub const DATAGRAM_LENGTH_MIN: usize = HEADER_LENGTH + FRAME_LENGTH_MIN;

/// A validated client link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLinkConfig {
    /// The node's listen address: its shard 0; shard i is at port + i.
    pub node: SocketAddr,
    pub node_shards: u16,
    pub link_id: u32,
    pub key: LinkKey,
    pub datagram_length_max: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientLink {
    node: String,
    node_shards: Option<u16>,
    link_id: u32,
    key: String,
    datagram_length_max: Option<usize>,
}

impl ClientLinkConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read client link file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawClientLink = toml::from_str(text).map_err(|e| ConfigError(format!("invalid TOML: {e}")))?;
        let node: SocketAddr = raw.node.parse().map_err(|_| {
            ConfigError(format!("node = {:?} is not an address: write the node's listen ip:port, e.g. \"127.0.0.1:7000\"", raw.node))
        })?;
        let node_shards = raw.node_shards.unwrap_or(1);
        if node_shards == 0 || node_shards > SHARDS_MAX {
            return Err(ConfigError(format!("node_shards = {node_shards}: use the node's node.shards (1..={SHARDS_MAX})")));
        }
        if node.port() == 0 || node.port() as u32 + node_shards as u32 > 65_536 {
            return Err(ConfigError(format!(
                "node port {} with node_shards = {node_shards} does not fit: shards listen on port..port+node_shards, so the port must be nonzero and below {}",
                node.port(),
                65_536 - node_shards as u32
            )));
        }
        let key = parse_link_key(&raw.key).ok_or_else(|| {
            ConfigError("key: must be 64 hex digits (32 bytes), the key of the node's client link with this link_id".into())
        })?;
        let datagram_length_max = raw.datagram_length_max.unwrap_or(DATAGRAM_LENGTH_DEFAULT);
        if !(DATAGRAM_LENGTH_MIN..=DATAGRAM_LENGTH_MAX).contains(&datagram_length_max) {
            return Err(ConfigError(format!(
                "datagram_length_max = {datagram_length_max}: use {DATAGRAM_LENGTH_MIN}..={DATAGRAM_LENGTH_MAX} (1472 for Ethernet, up to 65507 on loopback), at most the node's"
            )));
        }
        Ok(Self { node, node_shards, link_id: raw.link_id, key, datagram_length_max })
    }

    /// The file text `parse` reads back to an equal value.
    pub fn to_toml(&self) -> String {
        format!(
            "node = \"{}\"\nnode_shards = {}\nlink_id = {}\nkey = \"{}\"\ndatagram_length_max = {}\n",
            self.node,
            self.node_shards,
            self.link_id,
            hex::encode(self.key.0),
            self.datagram_length_max
        )
    }

    /// The address of the node shard that owns `key`.
    pub fn destination_of(&self, key: &StreamPartKey) -> SocketAddr {
        self.shard_address(shard_of(key, self.node_shards))
    }

    /// The address of shard `shard` (validated at parse time to fit in the port range).
    pub fn shard_address(&self, shard: u16) -> SocketAddr {
        let mut address = self.node;
        address.set_port(self.node.port() + shard);
        address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: to_toml round-trips and the optional field takes its default.
    #[test]
    fn round_trips_and_defaults() {
        let link = ClientLinkConfig {
            node: "127.0.0.1:7000".parse().unwrap(),
            node_shards: 2,
            link_id: 100,
            key: LinkKey([0xab; 32]),
            datagram_length_max: 9000,
        };
        assert_eq!(ClientLinkConfig::parse(&link.to_toml()).unwrap(), link);
        let text = link.to_toml().replace("datagram_length_max = 9000\n", "");
        assert_eq!(ClientLinkConfig::parse(&text).unwrap().datagram_length_max, DATAGRAM_LENGTH_DEFAULT);
        assert_eq!(link.shard_address(1).port(), 7001);
    }
}
