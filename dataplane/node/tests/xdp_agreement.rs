//! The XDP program and the userspace filter agree on every datagram.
//!
//! Both are loaded with the same policy (links, joined and restricted stream parts, permissions,
//! quarantines); then seeded random datagrams — valid ones, replays, and mutations of valid
//! ones (flipped header bytes, truncations, extensions, wrong lengths) — go through both: the
//! real XDP program by BPF_PROG_TEST_RUN (its verdict read from the per-CPU verdict counters),
//! the userspace [`Filter`] directly. Needs root (CI has it). Replay with `RUNNEL_SEED=<n>`.

use runnel_core::filter::{Filter, FilterUpdate, RateLimit, Verdict};
use runnel_ebpf::{packet, LinkEntry, XdpFilter, ROLE_CLIENT, ROLE_NEIGHBOR, VERDICT_COUNT};
use runnel_node::config::LinkRole;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPartKey;
use runnel_proto::testing::Rng;
use runnel_proto::wire::{write_header, HeaderFields, Kind, HEADER_LENGTH};
use std::net::{SocketAddr, SocketAddrV4};

const PORT: u16 = 7000;
const NEIGHBOR: u32 = 11;
const CLIENT: u32 = 12;
const QUARANTINED: u32 = 13;
const UNKNOWN: u32 = 14;
const JOINED: StreamPartKey = StreamPartKey([1; 32]);
const RESTRICTED: StreamPartKey = StreamPartKey([2; 32]);
const NOT_JOINED: StreamPartKey = StreamPartKey([3; 32]);
const PERMITTED: [u8; 20] = [0xa1; 20];
const EXPIRED: [u8; 20] = [0xa2; 20];
const BANNED: [u8; 20] = [0xa3; 20];
const STRANGER: [u8; 20] = [0xa4; 20];
const INPUTS: usize = 20_000;

fn key_of(link: u32) -> LinkKey {
    LinkKey([link as u8; 32])
}

/// The same policy in both filters.
fn load_both() -> (XdpFilter, Filter) {
    let mut xdp = XdpFilter::load().unwrap_or_else(|error| panic!("loading the XDP program (needs root): {error}"));
    let mut filter = Filter::new(true);
    xdp.add_port(PORT).unwrap();
    for (link, role) in [(NEIGHBOR, LinkRole::Neighbor), (CLIENT, LinkRole::Client), (QUARANTINED, LinkRole::Neighbor)] {
        let code = if role == LinkRole::Neighbor { ROLE_NEIGHBOR } else { ROLE_CLIENT };
        xdp.set_link(link, &LinkEntry { key: key_of(link).0, role: code, emission_interval_ns: 0, burst_tolerance_ns: 0 }).unwrap();
        filter.set_link(link, key_of(link), role, RateLimit::UNLIMITED);
    }
    for part in [JOINED, RESTRICTED] {
        xdp.join(part.0).unwrap();
        filter.join(part);
    }
    let updates = [
        FilterUpdate::SetRestricted { part: RESTRICTED, restricted: true },
        FilterUpdate::Permit { part: RESTRICTED, publisher: PERMITTED, until_ns: u64::MAX },
        FilterUpdate::Permit { part: RESTRICTED, publisher: EXPIRED, until_ns: 1 },
        FilterUpdate::QuarantineLink { link_id: QUARANTINED, until_ns: u64::MAX },
        FilterUpdate::QuarantinePublisher { publisher: BANNED, until_ns: u64::MAX },
    ];
    for update in &updates {
        assert!(filter.apply(update));
        match *update {
            FilterUpdate::SetRestricted { part, restricted } => xdp.set_restricted(part.0, restricted).unwrap(),
            FilterUpdate::Permit { part, publisher, until_ns } => xdp.permit(part.0, publisher, until_ns).unwrap(),
            FilterUpdate::QuarantineLink { link_id, until_ns } => xdp.quarantine_link(link_id, until_ns).unwrap(),
            FilterUpdate::QuarantinePublisher { publisher, until_ns } => xdp.quarantine_publisher(publisher, until_ns).unwrap(),
            _ => unreachable!("not in the list"),
        }
    }
    (xdp, filter)
}

/// A datagram with a valid tag under its link's key (or a random key for the unknown link).
fn datagram(rng: &mut Rng, sequences: &mut [u64; 4]) -> Vec<u8> {
    let link = rng.pick(&[NEIGHBOR, NEIGHBOR, CLIENT, CLIENT, QUARANTINED, UNKNOWN]);
    let slot = (link - NEIGHBOR) as usize;
    let link_seq = match rng.below(10) {
        0 => sequences[slot].saturating_sub(rng.below(2000)), // a replay or an old sequence
        1 => {
            sequences[slot] += rng.below(5000); // a jump ahead
            sequences[slot]
        }
        2 => u64::MAX,
        _ => {
            sequences[slot] += 1;
            sequences[slot]
        }
    };
    let kind = rng.pick(&[Kind::Data, Kind::Data, Kind::Data, Kind::Nak, Kind::Subscribe, Kind::Unsubscribe, Kind::IHave, Kind::Prune]);
    let flags = rng.pick(&[0u16, 1, 1, 2, 3]);
    let publisher = if flags & 1 != 0 { rng.pick(&[PERMITTED, EXPIRED, BANNED, STRANGER]) } else { [0; 20] };
    let body_length = rng.below(120) as usize;
    let length = HEADER_LENGTH + body_length;
    let fields = HeaderFields {
        kind,
        link_id: link,
        link_seq,
        stream_part_key: rng.pick(&[JOINED, RESTRICTED, NOT_JOINED]).0,
        flags,
        message_count: rng.below(3) as u16,
        total_length: length as u16,
        publisher,
    };
    let mut bytes = vec![0u8; length];
    for byte in &mut bytes[HEADER_LENGTH..] {
        *byte = rng.next_u64() as u8;
    }
    let key = if link == UNKNOWN { LinkKey([rng.next_u64() as u8; 32]) } else { key_of(link) };
    write_header(&fields, &key, &mut bytes);
    bytes
}

/// Mutations of the kinds an attacker or a broken sender produces.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.len() < HEADER_LENGTH {
        bytes.extend((0..rng.below(40) + 1).map(|_| rng.next_u64() as u8));
        return;
    }
    match rng.below(6) {
        0 => {
            let at = rng.below(HEADER_LENGTH as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }
        1 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
        2 => bytes.extend((0..rng.below(40) + 1).map(|_| rng.next_u64() as u8)),
        3 => {
            let wrong = rng.next_u64() as u16;
            bytes[52..54].copy_from_slice(&wrong.to_le_bytes());
        }
        4 => {
            let at = 54 + rng.below(6) as usize;
            bytes[at] = rng.next_u64() as u8 | 1;
        }
        _ => {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
    }
}

fn xdp_verdict(xdp: &XdpFilter, frame: &[u8]) -> Verdict {
    let before = xdp.verdict_counts().unwrap();
    let outcome = xdp.test_run(frame, 1).unwrap();
    let after = xdp.verdict_counts().unwrap();
    let moved: Vec<usize> = (0..VERDICT_COUNT).filter(|&i| after[i] != before[i]).collect();
    assert_eq!(moved.len(), 1, "one test run must count exactly one verdict, moved: {moved:?}");
    assert_eq!(after[moved[0]] - before[moved[0]], 1);
    let verdict = Verdict::from_id(moved[0] as u32).unwrap();
    let expected_action = if verdict.is_drop() { runnel_ebpf::XDP_DROP } else { runnel_ebpf::XDP_PASS };
    assert_eq!(outcome.action, expected_action, "verdict {verdict:?} with action {}", outcome.action);
    verdict
}

// Goal: on 20,000 seeded random, replayed and mutated datagrams from two source ports, the XDP
// program's verdict equals the userspace filter's verdict every time (and each test run counts
// exactly one verdict whose XDP action matches it).
#[test]
fn xdp_and_userspace_agree_on_every_datagram() {
    let seed = runnel_proto::testing::seed(0x00c0_ffee);
    let mut rng = Rng::new(seed);
    let (xdp, mut filter) = load_both();
    let destination = SocketAddrV4::new([10, 0, 0, 2].into(), PORT);
    let mut sequences = [1000u64; 4];
    let mut seen = std::collections::HashMap::new();
    let mut previous: Vec<Vec<u8>> = Vec::new();
    for index in 0..INPUTS {
        let mut payload = if !previous.is_empty() && rng.below(8) == 0 {
            previous[rng.below(previous.len() as u64) as usize].clone() // an exact replay
        } else {
            datagram(&mut rng, &mut sequences)
        };
        if rng.below(3) == 0 {
            mutate(&mut rng, &mut payload);
        }
        if previous.len() < 256 {
            previous.push(payload.clone());
        }
        let source = SocketAddrV4::new([10, 0, 0, 1].into(), rng.pick(&[4000, 4001]));
        let expected = filter.check(runnel_ebpf::monotonic_ns(), SocketAddr::V4(source), &payload);
        let actual = xdp_verdict(&xdp, &packet::udp_ipv4(source, destination, &payload));
        assert_eq!(
            actual, expected,
            "input {index} (seed {seed}) from {source}: XDP says {actual:?}, userspace {expected:?}; payload {payload:02x?}"
        );
        *seen.entry(expected).or_insert(0u32) += 1;
    }
    println!("verdicts: {seen:?}");
    // The generator must exercise every verdict the userspace filter can give, or agreement
    // proves little.
    for verdict in Verdict::ALL {
        if !matches!(verdict, Verdict::NotRunnel | Verdict::RateLimited) {
            assert!(seen.get(&verdict).copied().unwrap_or(0) > 20, "verdict {verdict:?} barely exercised: {seen:?}");
        }
    }
}

// Goal: packets the filter must leave alone (another UDP port, TCP-sized garbage, IPv6 to
// another port) pass with the not_runnel verdict.
#[test]
fn other_traffic_is_not_runnel() {
    let (xdp, _) = load_both();
    let payload = vec![0x52u8; 120];
    let source = SocketAddrV4::new([10, 0, 0, 1].into(), 4000);
    let other_port = SocketAddrV4::new([10, 0, 0, 2].into(), PORT + 1);
    assert_eq!(xdp_verdict(&xdp, &packet::udp_ipv4(source, other_port, &payload)), Verdict::NotRunnel);
    let v6_source = "[fd00::1]:4000".parse().unwrap();
    let v6_other = "[fd00::2]:53".parse().unwrap();
    assert_eq!(xdp_verdict(&xdp, &packet::udp_ipv6(v6_source, v6_other, &payload)), Verdict::NotRunnel);
    let short_frame = vec![0u8; 20];
    assert_eq!(xdp_verdict(&xdp, &short_frame), Verdict::NotRunnel);
}
