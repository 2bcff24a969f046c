//! The filter's verdicts: stable ids shared by the C program (`enum verdict` in
//! `runnel_filter.c`), the per-CPU `verdicts` map, the userspace filter and the counters.
//! docs/xdp-filter.md gives each rule; the order of [`Verdict::ALL`] after `Pass` and
//! `NotRunnel` is the order the rules are checked in.

/// What the filter decided about one UDP packet. Ids are stable: they index the `verdicts`
/// map and are what operators see in counter dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Verdict {
    /// A Runnel datagram that passed every check: on to userspace.
    Pass = 0,
    /// Not UDP to one of the node's ports: the kernel handles it as if there were no filter.
    NotRunnel = 1,
    /// The datagram header is not a valid Runnel header.
    Malformed = 2,
    /// The link id is not one of the node's links.
    UnknownLink = 3,
    /// The link tag does not match the header under the link's key (spoofed or corrupted).
    BadTag = 4,
    /// The link is quarantined (it delivered a record with a bad publisher signature).
    QuarantinedLink = 5,
    /// The link sequence was seen before or is older than the replay window.
    Replayed = 6,
    /// The datagram's single publisher is quarantined.
    QuarantinedPublisher = 7,
    /// The stream part is not one this node has joined.
    NotJoined = 8,
    /// The single publisher has no Publish permission for this restricted stream part.
    NotPermitted = 9,
    /// The link is over its rate limit.
    RateLimited = 10,
}

/// Number of verdicts (entries of the `verdicts` map).
pub const VERDICT_COUNT: usize = 11;

impl Verdict {
    /// Every verdict, by id.
    pub const ALL: [Verdict; VERDICT_COUNT] = [
        Verdict::Pass,
        Verdict::NotRunnel,
        Verdict::Malformed,
        Verdict::UnknownLink,
        Verdict::BadTag,
        Verdict::QuarantinedLink,
        Verdict::Replayed,
        Verdict::QuarantinedPublisher,
        Verdict::NotJoined,
        Verdict::NotPermitted,
        Verdict::RateLimited,
    ];

    /// The verdict with id `id`, if any.
    pub fn from_id(id: u32) -> Option<Verdict> {
        Self::ALL.get(id as usize).copied()
    }

    /// Stable snake_case name, used in counter dumps (`xdp_<name>`, `filter_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::NotRunnel => "not_runnel",
            Verdict::Malformed => "malformed",
            Verdict::UnknownLink => "unknown_link",
            Verdict::BadTag => "bad_tag",
            Verdict::QuarantinedLink => "quarantined_link",
            Verdict::Replayed => "replayed",
            Verdict::QuarantinedPublisher => "quarantined_publisher",
            Verdict::NotJoined => "not_joined",
            Verdict::NotPermitted => "not_permitted",
            Verdict::RateLimited => "rate_limited",
        }
    }

    /// Does the XDP program drop packets with this verdict (`XDP_DROP`) rather than pass them?
    pub fn is_drop(self) -> bool {
        !matches!(self, Verdict::Pass | Verdict::NotRunnel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: ids are dense and match their position, so the map index and the enum agree.
    #[test]
    fn ids_are_dense() {
        for (index, verdict) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*verdict as usize, index);
            assert_eq!(Verdict::from_id(index as u32), Some(*verdict));
        }
        assert_eq!(Verdict::from_id(VERDICT_COUNT as u32), None);
    }
}
