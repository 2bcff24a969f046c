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
//! slow_consumer = "cut"       # or "skip": a subscriber that cannot keep up gets the newest data
//! propagation = "plumtree"    # or "flood": every frame to every neighbor (docs/decisions-plumtree.md)
//!
//! [[links]]
//! id = 1
//! key = "<64 hex digits>"
//! role = "neighbor"           # another node; needs peer (its listen address) and peer_shards
//! peer = "127.0.0.1:7100"
//! peer_link_id = 7           # optional: the neighbor's id for this link, when it differs (peering)
//! peer_shards = 2
//!
//! [[links]]
//! id = 100
//! key = "<64 hex digits>"
//! role = "client"             # a publisher/subscriber; its address is learned from traffic
//! rate_datagrams_per_s = 200000   # default 1000000; 0 = unlimited
//! burst_datagrams = 16384         # default 65536
//!
//! [xdp]                       # the early-rejection filter (docs/xdp-filter.md)
//! mode = "auto"               # auto: native, else generic, else off | native | generic | off
//! interface = "eth0"          # default: the interface that holds node.listen's address
//!
//! [control]                   # optional: `runnel node` then also runs and supervises
//! admin = "127.0.0.1:9464"    # `runnel control` beside this dataplane (docs/operations.md)
//! join = ["0x1234567890123456789012345678901234567890/sensors#0"]
//!
//! [[permissions]]             # makes a stream part restricted: only these may publish
//! stream_part = "0x1234567890123456789012345678901234567890/sensors#0"
//! publishers = ["0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"]
//! ```
//!
//! Stream parts without a `[[permissions]]` entry are public: anyone may publish. The
//! entries become filter updates ([`permission_updates`]); when permissions come from the
//! chain, the chain watcher produces the same updates.

pub use runnel_core::link::{
    parse_link_key, shard_of, ConfigError, LinkConfig, LinkRole, Propagation, SlowConsumerPolicy, VerifyPolicy,
    LINK_BURST_DATAGRAMS_DEFAULT, LINK_RATE_DATAGRAMS_PER_S_DEFAULT, SHARDS_MAX,
};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// Where the early-rejection filter runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native XDP if the driver has it, else generic, else userspace (says why, once).
    #[default]
    Auto,
    /// Native (driver) XDP or the node does not start.
    Native,
    /// Generic (skb) XDP or the node does not start.
    Generic,
    /// Userspace checks only.
    Off,
}

/// The `[xdp]` section.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct XdpConfig {
    pub mode: XdpMode,
    /// Interface to attach to; `None` = the one holding `node.listen`'s address.
    pub interface: Option<String>,
}

/// One `[[permissions]]` entry: a restricted stream part and who may publish to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionConfig {
    pub stream_part: runnel_proto::stream::StreamPart,
    pub publishers: Vec<[u8; 20]>,
}

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub shards: u16,
    pub datagram_length_max: usize,
    pub verify: VerifyPolicy,
    /// What happens to a subscribed client that cannot keep up (`slow_consumer = "cut" | "skip"`).
    pub slow_consumer: SlowConsumerPolicy,
    /// How frames reach neighbors (`propagation = "plumtree" | "flood"`).
    pub propagation: Propagation,
    pub links: Vec<LinkConfig>,
    pub xdp: XdpConfig,
    pub permissions: Vec<PermissionConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    links: Vec<RawLink>,
    xdp: Option<RawXdp>,
    #[serde(default)]
    permissions: Vec<RawPermission>,
    /// The control process's section: `runnel node` reads it to supervise a control process
    /// beside this dataplane; the dataplane itself ignores it.
    #[serde(default, rename = "control")]
    _control: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXdp {
    #[serde(default)]
    mode: XdpMode,
    interface: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermission {
    stream_part: String,
    publishers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    listen: String,
    shards: Option<u16>,
    datagram_length_max: Option<usize>,
    #[serde(default)]
    verify: VerifyPolicy,
    #[serde(default)]
    slow_consumer: SlowConsumerPolicy,
    #[serde(default)]
    propagation: Propagation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    id: u32,
    peer_link_id: Option<u32>,
    key: String,
    role: LinkRole,
    peer: Option<String>,
    peer_shards: Option<u16>,
    rate_datagrams_per_s: Option<u64>,
    burst_datagrams: Option<u64>,
}

impl RawLink {
    /// The link of `[[links]]` entry `index`, checked.
    fn parse(self, index: usize) -> Result<LinkConfig, ConfigError> {
        let field = |name: &str| format!("links[{index}].{name}");
        let key = parse_link_key(&self.key)
            .ok_or_else(|| ConfigError(format!("{}: must be 64 hex digits (32 bytes); `runnel keygen --link` makes one", field("key"))))?;
        let peer = match self.peer {
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|_| ConfigError(format!("{} = {text:?} is not an address: write ip:port", field("peer"))))?,
            ),
            None => None,
        };
        let link = LinkConfig {
            id: self.id,
            peer_link_id: self.peer_link_id,
            key,
            role: self.role,
            peer,
            peer_shards: self.peer_shards.unwrap_or(1),
            rate_datagrams_per_s: self.rate_datagrams_per_s.unwrap_or(LINK_RATE_DATAGRAMS_PER_S_DEFAULT),
            burst_datagrams: self.burst_datagrams.unwrap_or(LINK_BURST_DATAGRAMS_DEFAULT),
        };
        validate_link(&link, &format!("links[{index}]"))?;
        Ok(link)
    }
}

/// Most links one node configures.
pub const LINKS_MAX: usize = 65_536;

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
        let datagram_length_max = raw.node.datagram_length_max.unwrap_or(runnel_proto::wire::DATAGRAM_LENGTH_DEFAULT);
        let minimum = runnel_core::client::DATAGRAM_LENGTH_MIN;
        if !(minimum..=runnel_proto::wire::DATAGRAM_LENGTH_MAX).contains(&datagram_length_max) {
            return Err(ConfigError(format!(
                "node.datagram_length_max = {datagram_length_max}: use {minimum}..={} (1472 for Ethernet, up to 65507 on loopback)",
                runnel_proto::wire::DATAGRAM_LENGTH_MAX
            )));
        }
        if raw.links.len() > LINKS_MAX {
            return Err(ConfigError(format!("{} links configured: at most {LINKS_MAX}", raw.links.len())));
        }
        let mut links = Vec::with_capacity(raw.links.len());
        let mut seen = std::collections::HashSet::new();
        for (index, link) in raw.links.into_iter().enumerate() {
            if !seen.insert(link.id) {
                return Err(ConfigError(format!("links[{index}].id = {}: link ids must be unique, another link uses it", link.id)));
            }
            links.push(link.parse(index)?);
        }
        let xdp = raw.xdp.map_or_else(XdpConfig::default, |x| XdpConfig { mode: x.mode, interface: x.interface });
        if xdp.interface.as_ref().is_some_and(|name| name.is_empty() || name.len() >= libc::IF_NAMESIZE) {
            return Err(ConfigError(format!("xdp.interface: an interface name has 1..{} characters, e.g. \"eth0\"", libc::IF_NAMESIZE)));
        }
        let mut permissions = Vec::with_capacity(raw.permissions.len());
        for (index, entry) in raw.permissions.into_iter().enumerate() {
            let stream_part = runnel_proto::stream::StreamPart::parse(&entry.stream_part).map_err(|e| {
                ConfigError(format!(
                    "permissions[{index}].stream_part = {:?}: {} (write 0x<owner>/<path>#<partition>)",
                    entry.stream_part, e.0
                ))
            })?;
            let publishers = entry
                .publishers
                .iter()
                .map(|text| {
                    parse_address(text).ok_or_else(|| {
                        ConfigError(format!("permissions[{index}].publishers: {text:?} is not an address (0x and 40 hex digits)"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            permissions.push(PermissionConfig { stream_part, publishers });
        }
        Ok(Self {
            listen,
            shards,
            datagram_length_max,
            verify: raw.node.verify,
            slow_consumer: raw.node.slow_consumer,
            propagation: raw.node.propagation,
            links,
            xdp,
            permissions,
        })
    }
}

/// Checks what a link's fields must satisfy beyond their types, for the config file and for
/// `AddLink` commands alike; errors name the field as `{prefix}.field`.
pub fn validate_link(link: &LinkConfig, prefix: &str) -> Result<(), ConfigError> {
    match (link.role, link.peer) {
        (LinkRole::Neighbor, None) => {
            return Err(ConfigError(format!("{prefix}.peer: a neighbor link needs the neighbor's listen address, e.g. \"127.0.0.1:7100\"")))
        }
        (LinkRole::Client, Some(_)) => {
            return Err(ConfigError(format!("{prefix}.peer: client links learn their address from traffic; remove peer")))
        }
        _ => {}
    }
    if link.role == LinkRole::Client && link.peer_link_id.is_some() {
        return Err(ConfigError(format!("{prefix}.peer_link_id: only neighbor links have one (a client uses the link's id); remove it")));
    }
    if link.peer_shards == 0 || link.peer_shards > SHARDS_MAX {
        return Err(ConfigError(format!("{prefix}.peer_shards = {}: use the neighbor's node.shards (1..={SHARDS_MAX})", link.peer_shards)));
    }
    if link.rate_datagrams_per_s > 1_000_000_000 {
        return Err(ConfigError(format!(
            "{prefix}.rate_datagrams_per_s = {}: at most 1000000000 datagrams/s, or 0 for no limit",
            link.rate_datagrams_per_s
        )));
    }
    if link.burst_datagrams == 0 || link.burst_datagrams > 1 << 32 {
        return Err(ConfigError(format!(
            "{prefix}.burst_datagrams = {}: use 1..=4294967296 (datagrams a link may send back to back)",
            link.burst_datagrams
        )));
    }
    Ok(())
}

/// Parses an Ethereum address (`0x` + 40 hex digits).
pub fn parse_address(text: &str) -> Option<[u8; 20]> {
    let digits = text.trim().strip_prefix("0x")?;
    hex::decode(digits).ok()?.try_into().ok()
}

/// The filter updates that the config's `[[permissions]]` stand for: each listed stream part
/// becomes restricted, each listed publisher permitted without expiry.
pub fn permission_updates(config: &NodeConfig) -> Vec<runnel_core::filter::FilterUpdate> {
    use runnel_core::filter::FilterUpdate;
    let mut updates = Vec::new();
    for entry in &config.permissions {
        let part = entry.stream_part.key();
        updates.push(FilterUpdate::SetRestricted { part, restricted: true });
        for publisher in &entry.publishers {
            updates.push(FilterUpdate::Permit { part, publisher: *publisher, until_ns: u64::MAX });
        }
    }
    updates
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
        assert_eq!(config.slow_consumer, SlowConsumerPolicy::Cut);
        assert_eq!(config.xdp, XdpConfig::default());
        let skipping = NodeConfig::parse(&good.replace("[node]", "[node]\nslow_consumer = \"skip\"")).unwrap();
        assert_eq!(skipping.slow_consumer, SlowConsumerPolicy::Skip);
        assert_eq!(config.propagation, Propagation::Plumtree);
        let flooding = NodeConfig::parse(&good.replace("[node]", "[node]\npropagation = \"flood\"")).unwrap();
        assert_eq!(flooding.propagation, Propagation::Flood);
        let restricted = format!(
            "{good}[xdp]\nmode = \"off\"\n[[permissions]]\nstream_part = \"0x1234567890123456789012345678901234567890/a#3\"\npublishers = [\"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266\"]\n"
        );
        let config = NodeConfig::parse(&restricted).unwrap();
        assert_eq!(config.xdp.mode, XdpMode::Off);
        assert_eq!(permission_updates(&config).len(), 2);
        let cases = [
            (good.replace("127.0.0.1:7000", "nowhere"), "node.listen"),
            (good.replace("shards = 2\n[[", "shards = 0\n[["), "node.shards"),
            (good.replacen(KEY, "abc", 1), "links[0].key"),
            (good.replace("id = 2", "id = 1"), "links[1].id"),
            (good.replace("peer = \"127.0.0.1:7100\"\n", ""), "links[0].peer"),
            (good.replace("role = \"client\"", "role = \"client\"\npeer = \"1.2.3.4:5\""), "links[1].peer"),
            (good.replace("[node]", "[node]\ncolour = 1"), "colour"),
            (good.replace("[node]", "[node]\nslow_consumer = \"wait\""), "slow_consumer"),
            (good.replace("[node]", "[node]\npropagation = \"gossip\""), "propagation"),
            (good.replace("role = \"client\"", "role = \"client\"\npeer_link_id = 3"), "links[1].peer_link_id"),
            (format!("{good}[xdp]\nmode = \"fast\"\n"), "mode"),
            (format!("{good}[[permissions]]\nstream_part = \"nope\"\npublishers = []\n"), "permissions[0].stream_part"),
            (
                format!(
                    "{good}[[permissions]]\nstream_part = \"0x1234567890123456789012345678901234567890/a#0\"\npublishers = [\"0x12\"]\n"
                ),
                "permissions[0].publishers",
            ),
            (good.replace("role = \"client\"", "role = \"client\"\nburst_datagrams = 0"), "links[1].burst_datagrams"),
            (good.replace("role = \"client\"", "role = \"client\"\nrate_datagrams_per_s = 2000000000"), "links[1].rate_datagrams_per_s"),
        ];
        for (text, field) in cases {
            let error = NodeConfig::parse(&text).unwrap_err().0;
            assert!(error.contains(field), "error {error:?} should name {field}");
        }
    }
}
