//! The early-rejection filter in userspace: the same rules, in the same order, as the XDP
//! program (`ebpf/src/runnel_filter.c`), so a node behaves the same with XDP on or off —
//! plus one rule of its own, the client scope ([`FilterUpdate::ScopeClient`]: a client link
//! may only do what its admission allowed, on its own part), which XDP leaves to it.
//!
//! docs/xdp-filter.md is the specification both follow: the datagram header alone decides
//! whether a datagram is malformed, from an unknown link, badly tagged, from a quarantined link,
//! replayed, from a quarantined publisher, for a stream part the node has not joined, from a
//! publisher without Publish permission, or over its link's rate. Each check costs a hash
//! lookup or one SipHash; the point is that a forged datagram never reaches signature work.
//!
//! # How it works
//! Each shard's relay owns one [`Filter`] and calls [`Filter::check`] on every datagram before
//! looking at its body. Its state changes in two ways: the relay's own links and joins
//! ([`Filter::set_link`], [`Filter::join`]), and [`FilterUpdate`]s that the node's policy
//! thread broadcasts to every shard — and writes into the XDP maps — for quarantines and
//! publish permissions and client scopes. Where permissions come from (the config, or the
//! chain through the control process) only changes who produces the updates.
//!
//! Time is `CLOCK_MONOTONIC` in nanoseconds ([`runnel_proto::clock::monotonic_ns`]), the clock of
//! `bpf_ktime_get_ns`, so an expiry means the same instant in the kernel and here.
//!
//! # Limits
//! - Replay windows: one per (link, source address), at most [`REPLAY_WINDOWS_MAX`] per shard;
//!   when full they are all cleared (the kernel map is an LRU). Creating one needs a valid
//!   link tag, so only holders of a link key can fill it.
//! - Quarantines and permissions: at most [`POLICY_ENTRIES_MAX`] of each; further updates are
//!   refused and counted by the caller ([`Filter::apply`] returns false).
//! - With XDP on, the rate limit is the kernel's alone (`rate_limit = false` here), and the
//!   kernel's limit is node-wide per link while the userspace one is per shard: a link whose
//!   stream parts spread over n shards can reach n × its rate with XDP off.

use crate::link::LinkRole;
use crate::relay::replay::ReplayWindow;
use runnel_proto::linktag::{link_tag, LinkKey};
use runnel_proto::stream::StreamPartKey;
pub use runnel_proto::verdict::Verdict;
use runnel_proto::wire::{self, Kind, FLAGS_KNOWN, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH, TAGGED_HEADER_LENGTH};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Most replay windows one shard keeps (one per link and sending address).
pub const REPLAY_WINDOWS_MAX: usize = 65_536;
/// Most entries in each policy table (quarantined links, quarantined publishers, restricted
/// stream parts, permissions) — the size of the matching XDP map.
pub const POLICY_ENTRIES_MAX: usize = 65_536;
/// Most (stream part, publisher) permissions (the XDP `permissions` map's size).
pub const PERMISSIONS_MAX: usize = 262_144;

/// A link's rate limit, as GCRA parameters (docs/xdp-filter.md "Rate limit").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Nanoseconds per datagram; 0 = unlimited.
    pub emission_interval_ns: u64,
    /// How far ahead of schedule a link may run: (burst − 1) × interval.
    pub burst_tolerance_ns: u64,
}

impl RateLimit {
    /// No limit.
    pub const UNLIMITED: RateLimit = RateLimit { emission_interval_ns: 0, burst_tolerance_ns: 0 };

    /// `rate_datagrams_per_s` sustained (0 = unlimited), `burst_datagrams` back to back.
    pub fn new(rate_datagrams_per_s: u64, burst_datagrams: u64) -> Self {
        let (emission_interval_ns, burst_tolerance_ns) = runnel_proto::rate::gcra_parameters(rate_datagrams_per_s, burst_datagrams);
        Self { emission_interval_ns, burst_tolerance_ns }
    }

    /// One GCRA step: admits one unit at `now_ns` and advances the theoretical arrival time
    /// `tat_ns`, or refuses it (leaving `tat_ns`) when the burst tolerance is used up.
    #[inline]
    pub fn admit(&self, tat_ns: &mut u64, now_ns: u64) -> bool {
        if self.emission_interval_ns == 0 {
            return true;
        }
        let tat = (*tat_ns).max(now_ns);
        if tat - now_ns > self.burst_tolerance_ns {
            return false;
        }
        *tat_ns = tat + self.emission_interval_ns;
        true
    }
}

/// A change to the policy both filters enforce; the policy thread sends each one to every
/// shard and applies it to the XDP maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterUpdate {
    /// Drop the link's datagrams until `until_ns` (monotonic).
    QuarantineLink {
        link_id: u32,
        until_ns: u64,
    },
    ReleaseLink {
        link_id: u32,
    },
    /// Drop single-publisher datagrams of `publisher` until `until_ns`.
    QuarantinePublisher {
        publisher: [u8; 20],
        until_ns: u64,
    },
    ReleasePublisher {
        publisher: [u8; 20],
    },
    /// A restricted stream part accepts only publishers with a permission; others are public.
    SetRestricted {
        part: StreamPartKey,
        restricted: bool,
    },
    /// `publisher` may publish to `part` until `until_ns` (`u64::MAX` = no expiry).
    Permit {
        part: StreamPartKey,
        publisher: [u8; 20],
        until_ns: u64,
    },
    /// Binds client link `link_id` to one stream part and what its admission allowed: its
    /// Data must be for `part` and needs `publish`; its Subscribe, Unsubscribe and Nak must be
    /// for `part` and need `subscribe`. A link with no scope (static configs) is unbound. The
    /// scope outlives a re-add of the link and ends with [`Filter::remove_link`] or
    /// [`FilterUpdate::UnscopeClient`]. Userspace only: XDP passes such datagrams, the shard
    /// drops them (`datagrams_not_permitted`).
    ScopeClient {
        link_id: u32,
        part: StreamPartKey,
        publish: bool,
        subscribe: bool,
    },
    UnscopeClient {
        link_id: u32,
    },
    Revoke {
        part: StreamPartKey,
        publisher: [u8; 20],
    },
}

struct FilterLink {
    key: LinkKey,
    role: LinkRole,
    rate: RateLimit,
    /// GCRA theoretical arrival time (monotonic ns).
    tat_ns: u64,
}

/// One shard's userspace filter; see the module doc.
pub struct Filter {
    links: FastMap<u32, FilterLink>,
    replay: FastMap<(u32, SocketAddr), ReplayWindow>,
    quarantined_links: FastMap<u32, u64>,
    quarantined_publishers: FastMap<[u8; 20], u64>,
    joined: FastSet<StreamPartKey>,
    restricted: FastSet<StreamPartKey>,
    permissions: FastMap<(StreamPartKey, [u8; 20]), u64>,
    client_scopes: FastMap<u32, ClientScope>,
    rate_limit: bool,
}

/// What one client link was admitted for ([`FilterUpdate::ScopeClient`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClientScope {
    part: StreamPartKey,
    publish: bool,
    subscribe: bool,
}

impl ClientScope {
    fn allows(&self, kind: Kind, part: &StreamPartKey) -> bool {
        match kind {
            Kind::Data => self.publish && *part == self.part,
            Kind::Subscribe | Kind::Unsubscribe | Kind::Nak => self.subscribe && *part == self.part,
            Kind::Credit | Kind::IHave | Kind::Prune => true,
        }
    }
}

impl Filter {
    /// An empty filter; `rate_limit` is false when the XDP program meters links instead.
    pub fn new(rate_limit: bool) -> Self {
        Self {
            links: FastMap::default(),
            replay: FastMap::default(),
            quarantined_links: FastMap::default(),
            quarantined_publishers: FastMap::default(),
            joined: FastSet::default(),
            restricted: FastSet::default(),
            permissions: FastMap::default(),
            client_scopes: FastMap::default(),
            rate_limit,
        }
    }

    /// Does this filter meter links (false when XDP does)?
    pub fn rate_limit(&self) -> bool {
        self.rate_limit
    }

    /// Adds or replaces a link. Its rate state starts afresh; its replay windows stay (as in
    /// the XDP map), so a link whose sender restarts its sequences must be removed first.
    pub fn set_link(&mut self, link_id: u32, key: LinkKey, role: LinkRole, rate: RateLimit) {
        self.links.insert(link_id, FilterLink { key, role, rate, tat_ns: 0 });
    }

    /// Removes a link and forgets its replay windows and its client scope.
    pub fn remove_link(&mut self, link_id: u32) {
        self.links.remove(&link_id);
        self.client_scopes.remove(&link_id);
        self.replay.retain(|(id, _), _| *id != link_id);
    }

    pub fn join(&mut self, part: StreamPartKey) {
        self.joined.insert(part);
    }

    pub fn leave(&mut self, part: &StreamPartKey) {
        self.joined.remove(part);
    }

    /// Applies a policy update; false if a table is full and the update was refused.
    pub fn apply(&mut self, update: &FilterUpdate) -> bool {
        fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut FastMap<K, V>, key: K, value: V, max: usize) -> bool {
            if map.len() >= max && !map.contains_key(&key) {
                return false;
            }
            map.insert(key, value);
            true
        }
        match *update {
            FilterUpdate::QuarantineLink { link_id, until_ns } => {
                bounded_insert(&mut self.quarantined_links, link_id, until_ns, POLICY_ENTRIES_MAX)
            }
            FilterUpdate::ReleaseLink { link_id } => {
                self.quarantined_links.remove(&link_id);
                true
            }
            FilterUpdate::QuarantinePublisher { publisher, until_ns } => {
                bounded_insert(&mut self.quarantined_publishers, publisher, until_ns, POLICY_ENTRIES_MAX)
            }
            FilterUpdate::ReleasePublisher { publisher } => {
                self.quarantined_publishers.remove(&publisher);
                true
            }
            FilterUpdate::SetRestricted { part, restricted: true } => {
                if self.restricted.len() >= POLICY_ENTRIES_MAX && !self.restricted.contains(&part) {
                    return false;
                }
                self.restricted.insert(part);
                true
            }
            FilterUpdate::SetRestricted { part, restricted: false } => {
                self.restricted.remove(&part);
                true
            }
            FilterUpdate::Permit { part, publisher, until_ns } => {
                bounded_insert(&mut self.permissions, (part, publisher), until_ns, PERMISSIONS_MAX)
            }
            FilterUpdate::Revoke { part, publisher } => {
                self.permissions.remove(&(part, publisher));
                true
            }
            FilterUpdate::ScopeClient { link_id, part, publish, subscribe } => {
                bounded_insert(&mut self.client_scopes, link_id, ClientScope { part, publish, subscribe }, POLICY_ENTRIES_MAX)
            }
            FilterUpdate::UnscopeClient { link_id } => {
                self.client_scopes.remove(&link_id);
                true
            }
        }
    }

    /// Is `publisher` allowed to publish to `part` at `now_ns`? (Public stream parts: yes.)
    /// The relay asks this per record for datagrams without a single publisher.
    pub fn may_publish(&self, now_ns: u64, part: &StreamPartKey, publisher: &[u8; 20]) -> bool {
        may_publish(&self.restricted, &self.permissions, now_ns, part, publisher)
    }

    /// Decides about one datagram (exactly one: `datagram.len()` must equal its
    /// `total_length`) that arrived from `from` at `now_ns`. Accepting records its link
    /// sequence as seen and charges the link's rate.
    pub fn check(&mut self, now_ns: u64, from: SocketAddr, datagram: &[u8]) -> Verdict {
        let Some(header) = Header::parse(datagram) else {
            return Verdict::Malformed;
        };
        let Some(link) = self.links.get_mut(&header.link_id) else {
            return Verdict::UnknownLink;
        };
        if link_tag(&link.key, &datagram[..TAGGED_HEADER_LENGTH]) != header.link_tag {
            return Verdict::BadTag;
        }
        if self.quarantined_links.get(&header.link_id).is_some_and(|&until| now_ns < until) {
            return Verdict::QuarantinedLink;
        }
        let single_publisher = header.flags & FLAG_SINGLE_PUBLISHER != 0;
        if single_publisher && self.quarantined_publishers.get(&header.publisher).is_some_and(|&until| now_ns < until) {
            return Verdict::QuarantinedPublisher;
        }
        let key = (header.link_id, from);
        if !self.replay.contains_key(&key) && self.replay.len() >= REPLAY_WINDOWS_MAX {
            self.replay.clear();
        }
        if !self.replay.entry(key).or_default().accept(header.link_seq) {
            return Verdict::Replayed;
        }
        if link.role == LinkRole::Client
            && self.client_scopes.get(&header.link_id).is_some_and(|scope| !scope.allows(header.kind, &header.part))
        {
            return Verdict::NotPermitted;
        }
        let carries_data = header.kind == Kind::Data;
        let tree_or_repair = matches!(header.kind, Kind::Nak | Kind::IHave | Kind::Prune);
        let needs_join = (carries_data && link.role == LinkRole::Neighbor) || tree_or_repair;
        if needs_join && !self.joined.contains(&header.part) {
            return Verdict::NotJoined;
        }
        if carries_data && single_publisher && !may_publish(&self.restricted, &self.permissions, now_ns, &header.part, &header.publisher) {
            return Verdict::NotPermitted;
        }
        if self.rate_limit && !link.rate.admit(&mut link.tat_ns, now_ns) {
            return Verdict::RateLimited;
        }
        Verdict::Pass
    }

    /// Forgets quarantines that have expired by `now_ns` (bounds the tables; expired entries
    /// already do not apply).
    pub fn expire(&mut self, now_ns: u64) {
        self.quarantined_links.retain(|_, until| now_ns < *until);
        self.quarantined_publishers.retain(|_, until| now_ns < *until);
    }
}

fn may_publish(
    restricted: &FastSet<StreamPartKey>,
    permissions: &FastMap<(StreamPartKey, [u8; 20]), u64>,
    now_ns: u64,
    part: &StreamPartKey,
    publisher: &[u8; 20],
) -> bool {
    !restricted.contains(part) || permissions.get(&(*part, *publisher)).is_some_and(|&until| now_ns < until)
}

/// The header fields the filter reads, checked the way the XDP program checks them.
struct Header {
    kind: Kind,
    link_id: u32,
    link_seq: u64,
    part: StreamPartKey,
    flags: u16,
    publisher: [u8; 20],
    link_tag: u64,
}

impl Header {
    fn parse(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_LENGTH {
            return None;
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let kind = Kind::from_u8(bytes[3])?;
        let flags = u16_at(48);
        let valid = u16_at(0) == wire::MAGIC
            && bytes[2] == wire::VERSION
            && flags & !FLAGS_KNOWN == 0
            && bytes[54..60] == [0; 6]
            && u16_at(52) as usize == bytes.len();
        valid.then(|| Header {
            kind,
            link_id: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
            link_seq: u64_at(8),
            part: StreamPartKey(bytes[16..48].try_into().expect("32 bytes")),
            flags,
            publisher: bytes[60..80].try_into().expect("20 bytes"),
            link_tag: u64_at(80),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_proto::wire::{write_header, HeaderFields};

    const LINK: u32 = 7;
    const KEY: LinkKey = LinkKey([9; 32]);
    const PUBLISHER: [u8; 20] = [0xab; 20];

    fn from() -> SocketAddr {
        "10.0.0.1:4000".parse().unwrap()
    }

    fn datagram(kind: Kind, link_seq: u64, part: StreamPartKey, flags: u16) -> Vec<u8> {
        let publisher = if flags & FLAG_SINGLE_PUBLISHER != 0 { PUBLISHER } else { [0; 20] };
        let fields = HeaderFields {
            kind,
            link_id: LINK,
            link_seq,
            stream_part_key: part.0,
            flags,
            message_count: 0,
            total_length: HEADER_LENGTH as u16,
            publisher,
        };
        let mut bytes = vec![0; HEADER_LENGTH];
        write_header(&fields, &KEY, &mut bytes);
        bytes
    }

    // Goal: each rule of docs/xdp-filter.md gives its verdict, in the documented order.
    #[test]
    fn each_rule_gives_its_verdict() {
        let part = StreamPartKey([1; 32]);
        let other = StreamPartKey([2; 32]);
        let mut filter = Filter::new(true);
        filter.set_link(LINK, KEY, LinkRole::Neighbor, RateLimit::new(1, 3));
        filter.join(part);
        let now = 1_000_000_000;
        let data = |seq| datagram(Kind::Data, seq, part, FLAG_SINGLE_PUBLISHER);
        assert_eq!(filter.check(now, from(), &data(1)), Verdict::Pass);
        assert_eq!(filter.check(now, from(), &data(1)), Verdict::Replayed);
        let mut bad_tag = data(2);
        bad_tag[80] ^= 1;
        assert_eq!(filter.check(now, from(), &bad_tag), Verdict::BadTag);
        let mut truncated = data(3);
        truncated.pop();
        assert_eq!(filter.check(now, from(), &truncated), Verdict::Malformed);
        assert_eq!(filter.check(now, from(), &datagram(Kind::Data, 4, other, 0)), Verdict::NotJoined);
        assert_eq!(filter.check(now, from(), &datagram(Kind::Nak, 5, other, 0)), Verdict::NotJoined);
        // Plumtree's announcements and prunes are for a joined stream part too (like NAKs).
        assert_eq!(filter.check(now, from(), &datagram(Kind::IHave, 50, other, 0)), Verdict::NotJoined);
        assert_eq!(filter.check(now, from(), &datagram(Kind::Prune, 51, other, 0)), Verdict::NotJoined);
        // Third datagram of a burst of 3 passes; the fourth is over the rate.
        assert_eq!(filter.check(now, from(), &data(6)), Verdict::Pass);
        assert_eq!(filter.check(now, from(), &data(7)), Verdict::Pass);
        assert_eq!(filter.check(now, from(), &data(8)), Verdict::RateLimited);
        assert_eq!(filter.check(now + 1_000_000_000, from(), &data(9)), Verdict::Pass);
        let later = now + 10_000_000_000;
        assert!(filter.apply(&FilterUpdate::SetRestricted { part, restricted: true }));
        assert_eq!(filter.check(later, from(), &data(10)), Verdict::NotPermitted);
        assert!(filter.apply(&FilterUpdate::Permit { part, publisher: PUBLISHER, until_ns: later + 1 }));
        assert_eq!(filter.check(later, from(), &data(11)), Verdict::Pass);
        assert_eq!(filter.check(later + 1, from(), &data(12)), Verdict::NotPermitted);
        assert!(filter.apply(&FilterUpdate::QuarantinePublisher { publisher: PUBLISHER, until_ns: u64::MAX }));
        assert_eq!(filter.check(later, from(), &data(13)), Verdict::QuarantinedPublisher);
        // Checked before the replay window: the sequence was not used up.
        assert_eq!(filter.check(later, from(), &data(13)), Verdict::QuarantinedPublisher);
        assert!(filter.apply(&FilterUpdate::QuarantineLink { link_id: LINK, until_ns: later + 5 }));
        assert_eq!(filter.check(later, from(), &data(14)), Verdict::QuarantinedLink);
        filter.expire(later + 5);
        assert_eq!(filter.check(later + 5, from(), &data(15)), Verdict::QuarantinedPublisher);
        filter.remove_link(LINK);
        assert_eq!(filter.check(later, from(), &data(16)), Verdict::UnknownLink);
    }

    // Goal: a client link may publish to a stream part the node has not joined (publishing
    // makes the node join it), a neighbor may not; Subscribe always passes.
    #[test]
    fn client_data_and_subscribes_need_no_join() {
        let part = StreamPartKey([3; 32]);
        let mut filter = Filter::new(false);
        filter.set_link(LINK, KEY, LinkRole::Client, RateLimit::new(1, 1));
        assert_eq!(filter.check(0, from(), &datagram(Kind::Data, 1, part, FLAG_SINGLE_PUBLISHER)), Verdict::Pass);
        // Rate limit off (XDP meters): a second datagram at the same instant passes.
        assert_eq!(filter.check(0, from(), &datagram(Kind::Subscribe, 2, part, 0)), Verdict::Pass);
        // Replacing a link keeps its replay windows; removing it forgets them.
        filter.set_link(LINK, KEY, LinkRole::Neighbor, RateLimit::UNLIMITED);
        assert_eq!(filter.check(0, from(), &datagram(Kind::Subscribe, 2, part, 0)), Verdict::Replayed);
        assert_eq!(filter.check(0, from(), &datagram(Kind::Data, 3, part, 0)), Verdict::NotJoined);
        filter.remove_link(LINK);
        filter.set_link(LINK, KEY, LinkRole::Neighbor, RateLimit::UNLIMITED);
        assert_eq!(filter.check(0, from(), &datagram(Kind::Subscribe, 2, part, 0)), Verdict::Pass);
    }

    // Goal: a scoped client link may do only what its admission allowed, on its own part:
    // a publisher's link cannot subscribe, a subscriber's cannot publish, neither can touch
    // another part; credit passes; removing the link ends the scope.
    #[test]
    fn client_scopes_bind_a_link_to_its_part_and_access() {
        let (part, other) = (StreamPartKey([3; 32]), StreamPartKey([4; 32]));
        let mut filter = Filter::new(false);
        filter.join(part); // a Nak needs the part joined
                           // The scope may arrive before the link (control sends it first).
        assert!(filter.apply(&FilterUpdate::ScopeClient { link_id: LINK, part, publish: true, subscribe: false }));
        filter.set_link(LINK, KEY, LinkRole::Client, RateLimit::UNLIMITED);
        let mut seq = 0;
        let mut check = |filter: &mut Filter, kind, part, flags| {
            seq += 1;
            filter.check(0, from(), &datagram(kind, seq, part, flags))
        };
        assert_eq!(check(&mut filter, Kind::Data, part, FLAG_SINGLE_PUBLISHER), Verdict::Pass);
        assert_eq!(check(&mut filter, Kind::Data, other, FLAG_SINGLE_PUBLISHER), Verdict::NotPermitted);
        assert_eq!(check(&mut filter, Kind::Subscribe, part, 0), Verdict::NotPermitted);
        assert_eq!(check(&mut filter, Kind::Nak, part, 0), Verdict::NotPermitted);
        assert_eq!(check(&mut filter, Kind::Credit, part, 0), Verdict::Pass);
        assert!(filter.apply(&FilterUpdate::ScopeClient { link_id: LINK, part, publish: false, subscribe: true }));
        assert_eq!(check(&mut filter, Kind::Data, part, FLAG_SINGLE_PUBLISHER), Verdict::NotPermitted);
        assert_eq!(check(&mut filter, Kind::Subscribe, part, 0), Verdict::Pass);
        assert_eq!(check(&mut filter, Kind::Unsubscribe, other, 0), Verdict::NotPermitted);
        assert_eq!(check(&mut filter, Kind::Nak, part, 0), Verdict::Pass);
        // A neighbor link with the same id is not a client: scopes do not apply.
        filter.set_link(LINK, KEY, LinkRole::Neighbor, RateLimit::UNLIMITED);
        filter.join(other);
        assert_eq!(check(&mut filter, Kind::Subscribe, other, 0), Verdict::Pass);
        filter.remove_link(LINK);
        filter.set_link(LINK, KEY, LinkRole::Client, RateLimit::UNLIMITED);
        assert_eq!(check(&mut filter, Kind::Data, other, FLAG_SINGLE_PUBLISHER), Verdict::Pass);
        assert!(filter.apply(&FilterUpdate::ScopeClient { link_id: LINK, part, publish: true, subscribe: true }));
        assert!(filter.apply(&FilterUpdate::UnscopeClient { link_id: LINK }));
        assert_eq!(check(&mut filter, Kind::Subscribe, other, 0), Verdict::Pass);
    }
}
