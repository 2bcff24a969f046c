//! Fuzz target `filter`: the early-rejection filter's header decoder and rules over arbitrary
//! bytes.
//!
//! The first input byte shapes the policy (link role, whether the stream part is joined or
//! restricted, whether to re-tag the header under the link key so the fuzzer gets past the tag
//! check); the rest is one datagram, checked twice (the second time is a replay). Nothing may
//! panic; a datagram that passes must also parse as a datagram, and its exact replay must not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_core::filter::{Filter, FilterUpdate, RateLimit, Verdict};
use runnel_node::config::LinkRole;
use runnel_proto::linktag::{link_tag, LinkKey};
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{Datagram, HEADER_LENGTH, TAGGED_HEADER_LENGTH};

const KEY: LinkKey = LinkKey([0x5a; 32]);

fuzz_target!(|input: &[u8]| {
    let Some((&control, rest)) = input.split_first() else { return };
    let mut datagram = rest.to_vec();
    let role = if control & 1 != 0 { LinkRole::Client } else { LinkRole::Neighbor };
    let mut filter = Filter::new(control & 16 != 0);
    if datagram.len() >= HEADER_LENGTH {
        let link_id = u32::from_le_bytes(datagram[4..8].try_into().unwrap());
        filter.set_link(link_id, KEY, role, RateLimit::new(1000, 1));
        let part = StreamPartKey(datagram[16..48].try_into().unwrap());
        if control & 4 != 0 {
            filter.apply(&FilterUpdate::SetRestricted { part, restricted: true });
        }
        if control & 8 != 0 {
            filter.join(part);
        }
        if control & 2 != 0 {
            let tag = link_tag(&KEY, &datagram[..TAGGED_HEADER_LENGTH]);
            datagram[80..88].copy_from_slice(&tag.to_le_bytes());
        }
    }
    let from = "10.0.0.1:4000".parse().unwrap();
    let first = filter.check(1_000_000, from, &datagram);
    let second = filter.check(1_000_000, from, &datagram);
    if first == Verdict::Pass {
        assert!(Datagram::parse(&datagram).is_ok(), "the filter passed a datagram that does not parse");
        assert_ne!(second, Verdict::Pass, "an exact replay passed");
    }
});
