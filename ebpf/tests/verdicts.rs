//! The real XDP program, verified by this kernel and run through `BPF_PROG_TEST_RUN` on crafted
//! Ethernet frames: every rule of docs/xdp-filter.md, each checked by the XDP action AND by
//! exactly one per-CPU verdict counter going up by one.
//!
//! Datagram headers are built here by hand from docs/protocol.md §2 and tagged with the
//! `siphasher` crate, independently of the C code: a layout or SipHash slip on either side
//! shows up as `bad_tag` where `pass` is expected.
//!
//! These tests need root (BPF). CI runs them as root; without it they fail and say so.

use runnel_ebpf::{
    monotonic_ns, packet, AttachMode, LinkEntry, Verdict, XdpError, XdpFilter, PORTS_MAX, ROLE_CLIENT, ROLE_NEIGHBOR, VERDICT_COUNT,
    XDP_DROP, XDP_PASS,
};
use siphasher::sip::SipHasher24;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

const PORT: u16 = 7000;
const OTHER_PORT: u16 = 7001;
const NEIGHBOR_LINK: u32 = 1;
const CLIENT_LINK: u32 = 2;
const UNKNOWN_LINK: u32 = 99;
const PART: [u8; 32] = [0xa5; 32];
const OTHER_PART: [u8; 32] = [0x5a; 32];
const PUBLISHER: [u8; 20] = [0x77; 20];

const KIND_DATA: u8 = 1;
/// v1's Fragment kind, retired in v2: a malformed datagram now.
const KIND_RETIRED: u8 = 2;
const KIND_NAK: u8 = 3;
const KIND_SUBSCRIBE: u8 = 4;
const KIND_UNSUBSCRIBE: u8 = 5;
const KIND_CREDIT: u8 = 6;
const KIND_IHAVE: u8 = 7;
const KIND_PRUNE: u8 = 8;
const FLAG_SINGLE_PUBLISHER: u16 = 0x0001;
const FLAG_REPAIR: u16 = 0x0002;

const HEADER_LENGTH: usize = 88;
const SECOND_NS: u64 = 1_000_000_000;

fn link_key(link_id: u32) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (index, byte) in key.iter_mut().enumerate() {
        *byte = (link_id as u8).wrapping_mul(31).wrapping_add(index as u8 * 7);
    }
    key
}

fn source_v4() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40_000)
}

fn destination_v4(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), port)
}

fn source_v6() -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 40_000, 0, 0)
}

fn destination_v6(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), port, 0, 0)
}

/// A datagram header as docs/protocol.md §2 lays it out, plus a zero body.
#[derive(Clone, Debug)]
struct Datagram {
    kind: u8,
    link_id: u32,
    link_seq: u64,
    part: [u8; 32],
    flags: u16,
    message_count: u16,
    publisher: [u8; 20],
    body_length: usize,
    key: [u8; 32],
}

impl Datagram {
    fn data(link_id: u32, link_seq: u64) -> Datagram {
        Datagram {
            kind: KIND_DATA,
            link_id,
            link_seq,
            part: PART,
            flags: 0,
            message_count: 1,
            publisher: [0; 20],
            body_length: 120,
            key: link_key(link_id),
        }
    }

    fn single_publisher(mut self) -> Datagram {
        self.flags |= FLAG_SINGLE_PUBLISHER;
        self.publisher = PUBLISHER;
        self
    }

    fn kind(mut self, kind: u8) -> Datagram {
        self.kind = kind;
        self
    }

    fn part(mut self, part: [u8; 32]) -> Datagram {
        self.part = part;
        self
    }

    /// The datagram's bytes, tagged under `key`.
    fn bytes(&self) -> Vec<u8> {
        let total_length = HEADER_LENGTH + self.body_length;
        let mut bytes = vec![0u8; total_length];
        bytes[0..2].copy_from_slice(b"RN");
        bytes[2] = runnel_proto::wire::VERSION;
        bytes[3] = self.kind;
        bytes[4..8].copy_from_slice(&self.link_id.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.link_seq.to_le_bytes());
        bytes[16..48].copy_from_slice(&self.part);
        bytes[48..50].copy_from_slice(&self.flags.to_le_bytes());
        bytes[50..52].copy_from_slice(&self.message_count.to_le_bytes());
        bytes[52..54].copy_from_slice(&(total_length as u16).to_le_bytes());
        // 54..60 reserved: zero.
        bytes[60..80].copy_from_slice(&self.publisher);
        retag(&mut bytes, &self.key);
        bytes
    }

    fn ipv4(&self) -> Vec<u8> {
        packet::udp_ipv4(source_v4(), destination_v4(PORT), &self.bytes())
    }
}

/// Writes the link tag (docs/protocol.md §4) of `datagram`'s first 80 bytes at byte 80.
fn retag(datagram: &mut [u8], key: &[u8; 32]) {
    let sip_key: [u8; 16] = key[..16].try_into().unwrap();
    let tag = SipHasher24::new_with_key(&sip_key).hash(&datagram[..80]);
    datagram[80..88].copy_from_slice(&tag.to_le_bytes());
}

fn ipv4_frame(datagram: &[u8]) -> Vec<u8> {
    packet::udp_ipv4(source_v4(), destination_v4(PORT), datagram)
}

fn load() -> XdpFilter {
    XdpFilter::load().unwrap_or_else(|error| {
        panic!("XdpFilter::load failed: {error}\nThese tests run the real XDP program and need root (CI runs them as root).")
    })
}

/// A filter for the node of these tests: port 7000, a neighbor and a client link without
/// rate limits, stream part PART joined and unrestricted.
fn fixture() -> XdpFilter {
    let mut filter = load();
    filter.add_port(PORT).unwrap();
    filter.set_link(NEIGHBOR_LINK, &LinkEntry::new(link_key(NEIGHBOR_LINK), ROLE_NEIGHBOR, 0, 0)).unwrap();
    filter.set_link(CLIENT_LINK, &LinkEntry::new(link_key(CLIENT_LINK), ROLE_CLIENT, 0, 0)).unwrap();
    filter.join(PART).unwrap();
    filter
}

/// Runs `frame` once; asserts the XDP action `verdict` implies and that exactly `verdict`'s
/// counter (summed over CPUs) went up by one.
#[track_caller]
fn expect(filter: &XdpFilter, frame: &[u8], verdict: Verdict, case: &str) {
    let before = filter.verdict_counts().unwrap();
    let outcome = filter.test_run(frame, 1).unwrap_or_else(|error| panic!("{case}: test run failed: {error}"));
    let after = filter.verdict_counts().unwrap();
    let expected_action = if verdict.is_drop() { XDP_DROP } else { XDP_PASS };
    let changed: Vec<String> = (0..VERDICT_COUNT)
        .filter(|&index| after[index] != before[index])
        .map(|index| format!("{} +{}", Verdict::from_id(index as u32).unwrap().name(), after[index] - before[index]))
        .collect();
    let mut expected_counts = before;
    expected_counts[verdict as usize] += 1;
    assert_eq!(after, expected_counts, "{case}: expected {} +1, counters changed: {changed:?}", verdict.name());
    assert_eq!(outcome.action, expected_action, "{case}: verdict {} but XDP action {}", verdict.name(), outcome.action);
}

/// Runs `frame` once and returns only the action (for long sequences).
fn action(filter: &XdpFilter, frame: &[u8]) -> u32 {
    filter.test_run(frame, 1).unwrap().action
}

type Prepare = Box<dyn Fn(&mut XdpFilter) -> Vec<u8>>;

// Goal: each of the 11 verdicts is produced by one crafted frame, with the right XDP action
// and exactly its own counter incremented. Any setup traffic (priming a replay window or a
// rate limiter) happens before the counters are compared.
#[test]
fn one_crafted_packet_per_verdict() {
    let cases: Vec<(&str, Verdict, Prepare)> = vec![
        ("pass: a Data datagram on a neighbor link", Verdict::Pass, Box::new(|_| Datagram::data(NEIGHBOR_LINK, 1).ipv4())),
        (
            "not_runnel: the same datagram to a port that is not the node's",
            Verdict::NotRunnel,
            Box::new(|_| packet::udp_ipv4(source_v4(), destination_v4(OTHER_PORT), &Datagram::data(NEIGHBOR_LINK, 1).bytes())),
        ),
        (
            "malformed: wrong magic",
            Verdict::Malformed,
            Box::new(|_| {
                let mut bytes = Datagram::data(NEIGHBOR_LINK, 1).bytes();
                bytes[0] = b'X';
                retag(&mut bytes, &link_key(NEIGHBOR_LINK));
                ipv4_frame(&bytes)
            }),
        ),
        ("unknown_link: a link id the node does not have", Verdict::UnknownLink, Box::new(|_| Datagram::data(UNKNOWN_LINK, 1).ipv4())),
        (
            "bad_tag: one tag bit flipped",
            Verdict::BadTag,
            Box::new(|_| {
                let mut bytes = Datagram::data(NEIGHBOR_LINK, 1).bytes();
                bytes[80] ^= 1;
                ipv4_frame(&bytes)
            }),
        ),
        (
            "quarantined_link: the link is quarantined until released",
            Verdict::QuarantinedLink,
            Box::new(|filter| {
                filter.quarantine_link(NEIGHBOR_LINK, u64::MAX).unwrap();
                Datagram::data(NEIGHBOR_LINK, 1).ipv4()
            }),
        ),
        (
            "replayed: the same link sequence a second time",
            Verdict::Replayed,
            Box::new(|filter| {
                let frame = Datagram::data(NEIGHBOR_LINK, 5).ipv4();
                assert_eq!(action(filter, &frame), XDP_PASS, "first copy passes");
                frame
            }),
        ),
        (
            "quarantined_publisher: the single publisher is quarantined",
            Verdict::QuarantinedPublisher,
            Box::new(|filter| {
                filter.quarantine_publisher(PUBLISHER, u64::MAX).unwrap();
                Datagram::data(NEIGHBOR_LINK, 1).single_publisher().ipv4()
            }),
        ),
        (
            "not_joined: neighbor Data for a stream part the node is not in",
            Verdict::NotJoined,
            Box::new(|_| Datagram::data(NEIGHBOR_LINK, 1).part(OTHER_PART).ipv4()),
        ),
        (
            "not_permitted: restricted stream part, publisher without permission",
            Verdict::NotPermitted,
            Box::new(|filter| {
                filter.set_restricted(PART, true).unwrap();
                Datagram::data(NEIGHBOR_LINK, 1).single_publisher().ipv4()
            }),
        ),
        (
            "rate_limited: second datagram within a burst of 1 at 1 datagram/s",
            Verdict::RateLimited,
            Box::new(|filter| {
                filter.set_link(NEIGHBOR_LINK, &LinkEntry::new(link_key(NEIGHBOR_LINK), ROLE_NEIGHBOR, 1, 1)).unwrap();
                assert_eq!(action(filter, &Datagram::data(NEIGHBOR_LINK, 1).ipv4()), XDP_PASS, "the burst passes");
                Datagram::data(NEIGHBOR_LINK, 2).ipv4()
            }),
        ),
    ];
    let mut covered = [false; VERDICT_COUNT];
    for (case, verdict, prepare) in &cases {
        let mut filter = fixture();
        let frame = prepare(&mut filter);
        expect(&filter, &frame, *verdict, case);
        covered[*verdict as usize] = true;
    }
    assert!(covered.iter().all(|&c| c), "every verdict has a case: {covered:?}");
}

// Goal: the parser finds the datagram behind IPv6 and behind one 802.1Q tag, and Ethernet
// trailer bytes after the UDP datagram are not taken for payload.
#[test]
fn ipv6_vlan_and_trailer_pass() {
    let filter = fixture();
    let ipv6 = packet::udp_ipv6(source_v6(), destination_v6(PORT), &Datagram::data(NEIGHBOR_LINK, 1).bytes());
    expect(&filter, &ipv6, Verdict::Pass, "IPv6");
    expect(&filter, &packet::with_vlan(&Datagram::data(NEIGHBOR_LINK, 2).ipv4(), 42), Verdict::Pass, "VLAN + IPv4");
    let tagged_ipv6 = packet::with_vlan(&packet::udp_ipv6(source_v6(), destination_v6(PORT), &Datagram::data(NEIGHBOR_LINK, 3).bytes()), 7);
    expect(&filter, &tagged_ipv6, Verdict::Pass, "VLAN + IPv6");
    let tagged_other_port =
        packet::with_vlan(&packet::udp_ipv4(source_v4(), destination_v4(OTHER_PORT), &Datagram::data(NEIGHBOR_LINK, 4).bytes()), 42);
    expect(&filter, &tagged_other_port, Verdict::NotRunnel, "VLAN + other port");
    let mut padded = Datagram::data(NEIGHBOR_LINK, 5).ipv4();
    padded.extend_from_slice(&[0xee; 6]);
    expect(&filter, &padded, Verdict::Pass, "Ethernet trailer after the datagram");
}

/// `frame` (untagged IPv4) with its IPv4 header checksum recomputed after an edit.
fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let checksum = packet::internet_checksum(&[&frame[14..34]]);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
}

// Goal: what is not IPv4/IPv6 UDP to one of the node's ports, or cannot be judged from its
// first bytes, passes untouched as not_runnel.
#[test]
fn not_runnel_cases() {
    let filter = fixture();
    let datagram = Datagram::data(NEIGHBOR_LINK, 1).bytes();

    let mut arp = Vec::new();
    arp.extend_from_slice(&packet::DESTINATION_MAC);
    arp.extend_from_slice(&packet::SOURCE_MAC);
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    expect(&filter, &arp, Verdict::NotRunnel, "ARP");

    expect(&filter, &arp[..14], Verdict::NotRunnel, "a bare Ethernet header");

    let mut tcp = ipv4_frame(&datagram);
    tcp[23] = 6;
    fix_ipv4_checksum(&mut tcp);
    expect(&filter, &tcp, Verdict::NotRunnel, "IPv4 protocol TCP to the node's port");

    // A non-first fragment has no UDP header to match: the kernel reassembles it and the
    // userspace filter judges the whole datagram.
    let mut fragment = ipv4_frame(&datagram);
    fragment[20..22].copy_from_slice(&185u16.to_be_bytes()); // offset 1480 bytes, no MF
    fix_ipv4_checksum(&mut fragment);
    expect(&filter, &fragment, Verdict::NotRunnel, "IPv4 non-first fragment");

    // IPv6 with a hop-by-hop options header (PadN to 8 bytes) before UDP.
    let plain = packet::udp_ipv6(source_v6(), destination_v6(PORT), &datagram);
    let mut with_extension = plain[..54].to_vec();
    with_extension[20] = 0; // next header: hop-by-hop
    let payload_length = u16::from_be_bytes([plain[18], plain[19]]) + 8;
    with_extension[18..20].copy_from_slice(&payload_length.to_be_bytes());
    with_extension.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    with_extension.extend_from_slice(&plain[54..]);
    expect(&filter, &with_extension, Verdict::NotRunnel, "IPv6 with an extension header");

    // Two 802.1Q tags (QinQ): only one is parsed.
    let double_tagged = packet::with_vlan(&packet::with_vlan(&ipv4_frame(&datagram), 1), 2);
    expect(&filter, &double_tagged, Verdict::NotRunnel, "two VLAN tags");

    let mut truncated = ipv4_frame(&datagram);
    truncated.truncate(14 + 20 + 4);
    expect(&filter, &truncated, Verdict::NotRunnel, "IPv4 truncated inside the UDP header");
}

// Goal: every header rule of docs/xdp-filter.md's `malformed` row drops the datagram. Each
// edited header is re-tagged, so only the rule under test can object.
#[test]
fn malformed_cases() {
    let filter = fixture();
    let key = link_key(NEIGHBOR_LINK);
    let edited = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = Datagram::data(NEIGHBOR_LINK, 1).bytes();
        edit(&mut bytes);
        retag(&mut bytes, &key);
        ipv4_frame(&bytes)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("magic byte 1", edited(&|b| b[1] = b'M')),
        ("version 1 (v1)", edited(&|b| b[2] = 1)),
        ("version 3", edited(&|b| b[2] = 3)),
        ("kind 2 (retired Fragment)", edited(&|b| b[3] = KIND_RETIRED)),
        ("version 0", edited(&|b| b[2] = 0)),
        ("kind 0", edited(&|b| b[3] = 0)),
        ("kind 9", edited(&|b| b[3] = 9)),
        ("kind 255", edited(&|b| b[3] = 255)),
        ("flag bit 2", edited(&|b| b[48] |= 0x04)),
        ("flag bit 15", edited(&|b| b[49] |= 0x80)),
        ("reserved byte 54", edited(&|b| b[54] = 1)),
        ("reserved byte 59", edited(&|b| b[59] = 0x80)),
        (
            "total_length one more than the payload",
            edited(&|b| {
                let total = u16::from_le_bytes([b[52], b[53]]) + 1;
                b[52..54].copy_from_slice(&total.to_le_bytes());
            }),
        ),
        (
            "total_length one less than the payload (trailing bytes)",
            edited(&|b| {
                let total = u16::from_le_bytes([b[52], b[53]]) - 1;
                b[52..54].copy_from_slice(&total.to_le_bytes());
            }),
        ),
        (
            "payload of 87 bytes",
            ipv4_frame(&{
                let mut bytes = Datagram { body_length: 0, ..Datagram::data(NEIGHBOR_LINK, 1) }.bytes();
                bytes.truncate(87);
                bytes
            }),
        ),
        ("empty UDP payload", ipv4_frame(&[])),
        ("UDP length field larger than the packet", {
            let mut frame = Datagram::data(NEIGHBOR_LINK, 1).ipv4();
            let udp_length = u16::from_be_bytes([frame[38], frame[39]]) + 1;
            frame[38..40].copy_from_slice(&udp_length.to_be_bytes());
            frame
        }),
        ("UDP length field below the UDP header", {
            let mut frame = Datagram::data(NEIGHBOR_LINK, 1).ipv4();
            frame[38..40].copy_from_slice(&4u16.to_be_bytes());
            frame
        }),
        ("IPv4 first fragment (more fragments set) to the node's port", {
            let mut frame = Datagram::data(NEIGHBOR_LINK, 1).ipv4();
            frame[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
            fix_ipv4_checksum(&mut frame);
            frame
        }),
    ];
    for (case, frame) in &cases {
        expect(&filter, frame, Verdict::Malformed, case);
    }
    // The kinds and flags the protocol defines are all accepted (the boundary of the rules).
    let kinds = [KIND_DATA, KIND_NAK, KIND_SUBSCRIBE, KIND_UNSUBSCRIBE, KIND_CREDIT, KIND_IHAVE, KIND_PRUNE];
    for (seq, kind) in kinds.into_iter().enumerate() {
        let mut datagram = Datagram::data(CLIENT_LINK, 100 + seq as u64).kind(kind);
        datagram.flags = FLAG_REPAIR;
        expect(&filter, &datagram.ipv4(), Verdict::Pass, &format!("kind {kind} with FLAG_REPAIR"));
    }
}

// Goal: the tag covers every header byte but itself, under the link's own key.
#[test]
fn bad_tag_cases() {
    let filter = fixture();
    let mut other_key = Datagram::data(NEIGHBOR_LINK, 1);
    other_key.key = link_key(CLIENT_LINK);
    expect(&filter, &other_key.ipv4(), Verdict::BadTag, "tagged with another link's key");
    // (total_length, bytes 52..54, is checked before the tag: see malformed_cases.)
    for byte in [4, 8, 15, 16, 47, 50, 60, 79] {
        let mut bytes = Datagram::data(NEIGHBOR_LINK, 1).single_publisher().bytes();
        bytes[byte] ^= 0x01;
        let verdict = if byte == 4 { Verdict::UnknownLink } else { Verdict::BadTag };
        expect(&filter, &ipv4_frame(&bytes), verdict, &format!("header byte {byte} changed after tagging"));
    }
    // Only the first 16 key bytes key the tag: the rest may differ without effect.
    let mut tail_changed = Datagram::data(NEIGHBOR_LINK, 1);
    tail_changed.key[16..].fill(0xff);
    expect(&filter, &tail_changed.ipv4(), Verdict::Pass, "key bytes 16..32 are not used");
}

// Goal: the kernel's replay window behaves as dataplane/src/relay/replay.rs: once per
// sequence, reordering within 1024 is fine, older is refused, u64::MAX is refused, large
// jumps reset, and each (link, source address, source port) has its own window.
#[test]
fn replay_window() {
    let filter = fixture();
    let frame = |seq: u64| Datagram::data(NEIGHBOR_LINK, seq).ipv4();
    expect(&filter, &frame(0), Verdict::Pass, "seq 0");
    expect(&filter, &frame(0), Verdict::Replayed, "seq 0 again");
    expect(&filter, &frame(5), Verdict::Pass, "seq 5");
    expect(&filter, &frame(3), Verdict::Pass, "seq 3 (reordered within the window)");
    expect(&filter, &frame(3), Verdict::Replayed, "seq 3 again");
    expect(&filter, &frame(5000), Verdict::Pass, "seq 5000 (a jump beyond the window)");
    let top = 5001; // highest accepted + 1
    expect(&filter, &frame(top - 1025), Verdict::Replayed, "top - 1025: older than the window");
    expect(&filter, &frame(top - 1024), Verdict::Pass, "top - 1024: the oldest slot still in the window");
    expect(&filter, &frame(5), Verdict::Replayed, "seq 5 after the jump");

    // Advancing by less than the window clears exactly the slots passed over: 5001 shares
    // its slot with 3977 (accepted above), so it passes only if the advance cleared it.
    expect(&filter, &frame(5100), Verdict::Pass, "advance by 99");
    expect(&filter, &frame(5001), Verdict::Pass, "a slot passed over by the advance was cleared");
    expect(&filter, &frame(5001), Verdict::Replayed, "... and is used once");
    expect(&filter, &frame(5000), Verdict::Replayed, "5000 is still remembered");
    // Advancing by the window or more clears every slot: 6124 shares its slot with 5100.
    expect(&filter, &frame(6134), Verdict::Pass, "advance by 1034");
    expect(&filter, &frame(6124), Verdict::Pass, "a stale slot after a long jump");

    // A different source port or address is another window.
    let datagram = Datagram::data(NEIGHBOR_LINK, 0).bytes();
    let other_port = packet::udp_ipv4(SocketAddrV4::new(*source_v4().ip(), 40_001), destination_v4(PORT), &datagram);
    expect(&filter, &other_port, Verdict::Pass, "seq 0 from another source port");
    let other_address = packet::udp_ipv4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 40_000), destination_v4(PORT), &datagram);
    expect(&filter, &other_address, Verdict::Pass, "seq 0 from another source address");
    let ipv6 = packet::udp_ipv6(source_v6(), destination_v6(PORT), &datagram);
    expect(&filter, &ipv6, Verdict::Pass, "seq 0 over IPv6");
    expect(&filter, &ipv6, Verdict::Replayed, "seq 0 over IPv6 again");
    // And another link from the same source is another window.
    expect(&filter, &Datagram::data(CLIENT_LINK, 0).ipv4(), Verdict::Pass, "seq 0 on the client link");

    // The top of the sequence space: u64::MAX would wrap the window's top to "empty".
    expect(&filter, &frame(u64::MAX), Verdict::Replayed, "u64::MAX is always refused");
    let fresh_window = packet::udp_ipv4(
        SocketAddrV4::new(*source_v4().ip(), 40_002),
        destination_v4(PORT),
        &Datagram::data(NEIGHBOR_LINK, u64::MAX).bytes(),
    );
    expect(&filter, &fresh_window, Verdict::Replayed, "u64::MAX is refused by an empty window too");
    expect(&filter, &frame(u64::MAX - 1), Verdict::Pass, "u64::MAX - 1 is a sequence like any other");
    expect(&filter, &frame(u64::MAX - 1), Verdict::Replayed, "... once");
    expect(&filter, &frame(6200), Verdict::Replayed, "everything below the new top's window is old");
}

// Goal: against a naive set-based model on seeded random sequences (as replay.rs's own model
// test), the kernel window agrees on every datagram. RUNNEL_SEED replays a failure.
#[test]
fn replay_window_agrees_with_model() {
    const WINDOW: u64 = 1024;
    let seed = std::env::var("RUNNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    println!("seed {seed}");
    let mut state = seed.max(1);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let filter = fixture();
    let mut seen = std::collections::HashSet::new();
    let mut highest: Option<u64> = None;
    let mut base = 0u64;
    let (mut passed, mut replayed) = (0u64, 0u64);
    let before = filter.verdict_counts().unwrap();
    for step in 0..20_000 {
        // Mostly forward, with reordering, duplicates and occasional long jumps.
        base += next() % 4;
        if next() % 2000 == 0 {
            base += 900 + next() % 300;
        }
        let sequence = base + next() % 64 - 32.min(base);
        let expected = match highest {
            Some(h) if sequence + WINDOW < h + 1 => false,
            _ => !seen.contains(&sequence),
        };
        let got = action(&filter, &Datagram::data(NEIGHBOR_LINK, sequence).ipv4()) == XDP_PASS;
        assert_eq!(got, expected, "step {step} sequence {sequence} highest {highest:?} seed {seed}");
        if expected {
            seen.insert(sequence);
            highest = Some(highest.map_or(sequence, |h| h.max(sequence)));
            passed += 1;
        } else {
            replayed += 1;
        }
    }
    let after = filter.verdict_counts().unwrap();
    assert_eq!(after[Verdict::Pass as usize] - before[Verdict::Pass as usize], passed);
    assert_eq!(after[Verdict::Replayed as usize] - before[Verdict::Replayed as usize], replayed);
    assert!(replayed > 1000 && passed > 1000, "the sequences exercise both outcomes: {passed} passed, {replayed} replayed");
}

// Goal: the GCRA admits the burst back to back, then refuses until the rate allows;
// refusals do not consume the schedule; set_link resets it; interval 0 means unlimited.
#[test]
fn gcra_burst_then_rate() {
    let mut filter = fixture();
    // Burst 3 at 1 datagram/s: T = 1 s, tau = 2 s. The test runs in far less than a second.
    filter.set_link(NEIGHBOR_LINK, &LinkEntry::new(link_key(NEIGHBOR_LINK), ROLE_NEIGHBOR, 1, 3)).unwrap();
    for seq in 1..=3 {
        expect(&filter, &Datagram::data(NEIGHBOR_LINK, seq).ipv4(), Verdict::Pass, &format!("burst datagram {seq}"));
    }
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 4).ipv4(), Verdict::RateLimited, "4th datagram");
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 5).ipv4(), Verdict::RateLimited, "5th datagram");
    // The rate limit is the last rule: a refused datagram's sequence was still recorded.
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 4).ipv4(), Verdict::Replayed, "4th datagram resent");

    // The limit is per link: the client link is unaffected.
    expect(&filter, &Datagram::data(CLIENT_LINK, 1).ipv4(), Verdict::Pass, "another link");

    // set_link resets the schedule: a full burst again.
    filter.set_link(NEIGHBOR_LINK, &LinkEntry::new(link_key(NEIGHBOR_LINK), ROLE_NEIGHBOR, 1, 3)).unwrap();
    for seq in 6..=8 {
        expect(&filter, &Datagram::data(NEIGHBOR_LINK, seq).ipv4(), Verdict::Pass, &format!("burst after reset, datagram {seq}"));
    }
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 9).ipv4(), Verdict::RateLimited, "4th after reset");

    // A schedule that lets time pass: 20 datagrams/s, burst 1 (T = 50 ms).
    filter.set_link(NEIGHBOR_LINK, &LinkEntry::new(link_key(NEIGHBOR_LINK), ROLE_NEIGHBOR, 20, 1)).unwrap();
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 10).ipv4(), Verdict::Pass, "first at 20/s");
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 11).ipv4(), Verdict::RateLimited, "second right after");
    std::thread::sleep(std::time::Duration::from_millis(60));
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 12).ipv4(), Verdict::Pass, "after one emission interval");

    // Unlimited: no datagram is ever rate limited.
    filter.set_link(NEIGHBOR_LINK, &LinkEntry::new(link_key(NEIGHBOR_LINK), ROLE_NEIGHBOR, 0, 0)).unwrap();
    for seq in 100..400 {
        assert_eq!(action(&filter, &Datagram::data(NEIGHBOR_LINK, seq).ipv4()), XDP_PASS, "unlimited, seq {seq}");
    }
}

// Goal: quarantines hold while their expiry is in the future (CLOCK_MONOTONIC, as
// monotonic_ns reads it), not once it has passed, and end on release; a publisher
// quarantine applies only to datagrams that name a single publisher.
#[test]
fn quarantine_expiry() {
    let mut filter = fixture();
    let mut seq = 0;
    let mut next_frame = |datagram: fn(u64) -> Datagram| {
        seq += 1;
        datagram(seq).ipv4()
    };
    let plain = |seq| Datagram::data(NEIGHBOR_LINK, seq);
    let single = |seq| Datagram::data(NEIGHBOR_LINK, seq).single_publisher();

    filter.quarantine_link(NEIGHBOR_LINK, monotonic_ns() - 1).unwrap();
    expect(&filter, &next_frame(plain), Verdict::Pass, "link quarantine expired");
    filter.quarantine_link(NEIGHBOR_LINK, monotonic_ns() + 60 * SECOND_NS).unwrap();
    expect(&filter, &next_frame(plain), Verdict::QuarantinedLink, "link quarantined for a minute");
    expect(&filter, &Datagram::data(CLIENT_LINK, 1).ipv4(), Verdict::Pass, "another link");
    filter.release_link(NEIGHBOR_LINK).unwrap();
    expect(&filter, &next_frame(plain), Verdict::Pass, "link released");
    filter.release_link(NEIGHBOR_LINK).unwrap(); // absent: fine

    filter.quarantine_publisher(PUBLISHER, monotonic_ns() - 1).unwrap();
    expect(&filter, &next_frame(single), Verdict::Pass, "publisher quarantine expired");
    filter.quarantine_publisher(PUBLISHER, u64::MAX).unwrap();
    expect(&filter, &next_frame(single), Verdict::QuarantinedPublisher, "publisher quarantined");
    expect(&filter, &next_frame(plain), Verdict::Pass, "no single publisher named: judged in userspace");
    filter.release_publisher(PUBLISHER).unwrap();
    expect(&filter, &next_frame(single), Verdict::Pass, "publisher released");
    filter.release_publisher(PUBLISHER).unwrap(); // absent: fine
}

// Goal: the joined rule applies to neighbors' Data and to NAKs, IHaves and Prunes from anyone;
// clients may publish to a stream part the node has not joined, and Subscribe/Unsubscribe
// are never refused by it.
#[test]
fn not_joined_rules() {
    let mut filter = fixture();
    let cases = [
        (NEIGHBOR_LINK, KIND_DATA, Verdict::NotJoined),
        (NEIGHBOR_LINK, KIND_NAK, Verdict::NotJoined),
        (NEIGHBOR_LINK, KIND_SUBSCRIBE, Verdict::Pass),
        (NEIGHBOR_LINK, KIND_UNSUBSCRIBE, Verdict::Pass),
        (NEIGHBOR_LINK, KIND_IHAVE, Verdict::NotJoined),
        (NEIGHBOR_LINK, KIND_PRUNE, Verdict::NotJoined),
        (CLIENT_LINK, KIND_DATA, Verdict::Pass),
        (CLIENT_LINK, KIND_NAK, Verdict::NotJoined),
        (CLIENT_LINK, KIND_IHAVE, Verdict::NotJoined),
        (CLIENT_LINK, KIND_PRUNE, Verdict::NotJoined),
        (CLIENT_LINK, KIND_SUBSCRIBE, Verdict::Pass),
    ];
    let mut seq = 0;
    for (link, kind, verdict) in cases {
        seq += 1;
        let frame = Datagram::data(link, seq).kind(kind).part(OTHER_PART).ipv4();
        expect(&filter, &frame, verdict, &format!("link {link} kind {kind}, stream part not joined"));
    }
    filter.join(OTHER_PART).unwrap();
    seq += 1;
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, seq).part(OTHER_PART).ipv4(), Verdict::Pass, "after join");
    filter.leave(OTHER_PART).unwrap();
    seq += 1;
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, seq).part(OTHER_PART).ipv4(), Verdict::NotJoined, "after leave");
    filter.leave(OTHER_PART).unwrap(); // absent: fine
}

// Goal: publishing a single-publisher Data datagram to a restricted stream part
// needs an unexpired permission; permissions end at their expiry and on revoke; other
// datagrams and unrestricted stream parts are not held to it.
#[test]
fn permission_rules() {
    let mut filter = fixture();
    let mut seq = 0;
    let mut single = |kind: u8| {
        seq += 1;
        Datagram::data(NEIGHBOR_LINK, seq).kind(kind).single_publisher().ipv4()
    };
    expect(&filter, &single(KIND_DATA), Verdict::Pass, "unrestricted stream part");
    filter.set_restricted(PART, true).unwrap();
    expect(&filter, &single(KIND_DATA), Verdict::NotPermitted, "restricted, no permission");
    expect(&filter, &single(KIND_SUBSCRIBE), Verdict::Pass, "Subscribe carries no frames");
    filter.permit(PART, PUBLISHER, monotonic_ns() - 1).unwrap();
    expect(&filter, &single(KIND_DATA), Verdict::NotPermitted, "permission expired");
    filter.permit(PART, PUBLISHER, monotonic_ns() + 60 * SECOND_NS).unwrap();
    expect(&filter, &single(KIND_DATA), Verdict::Pass, "permission for a minute");
    filter.permit(OTHER_PART, [0x11; 20], u64::MAX).unwrap();
    filter.revoke(PART, PUBLISHER).unwrap();
    expect(&filter, &single(KIND_DATA), Verdict::NotPermitted, "permission revoked");
    filter.revoke(PART, PUBLISHER).unwrap(); // absent: fine
    let mixed = Datagram::data(NEIGHBOR_LINK, 1000).ipv4();
    expect(&filter, &mixed, Verdict::Pass, "no single publisher: frames judged in userspace");
    filter.set_restricted(PART, false).unwrap();
    expect(&filter, &single(KIND_DATA), Verdict::Pass, "no longer restricted");
    filter.set_restricted(PART, false).unwrap(); // absent: fine
}

// Goal: the rules apply in the documented order: a datagram that breaks several is counted
// under the first.
#[test]
fn first_rule_decides() {
    let mut filter = fixture();
    filter.quarantine_link(NEIGHBOR_LINK, u64::MAX).unwrap();
    filter.quarantine_publisher(PUBLISHER, u64::MAX).unwrap();
    filter.set_restricted(OTHER_PART, true).unwrap();
    let everything_wrong = Datagram::data(NEIGHBOR_LINK, 1).single_publisher().part(OTHER_PART);
    let mut bad_tag = everything_wrong.bytes();
    bad_tag[81] ^= 0x10;
    expect(&filter, &ipv4_frame(&bad_tag), Verdict::BadTag, "bad tag before quarantine");
    expect(&filter, &everything_wrong.ipv4(), Verdict::QuarantinedLink, "link quarantine first");
    filter.release_link(NEIGHBOR_LINK).unwrap();
    expect(&filter, &everything_wrong.ipv4(), Verdict::QuarantinedPublisher, "publisher quarantine before the replay window");
    filter.release_publisher(PUBLISHER).unwrap();
    expect(&filter, &everything_wrong.ipv4(), Verdict::NotJoined, "the quarantined datagram left its sequence unused");
    expect(&filter, &everything_wrong.ipv4(), Verdict::Replayed, "replay before joined");
    filter.join(OTHER_PART).unwrap();
    let latest = Datagram { link_seq: 3, ..everything_wrong };
    expect(&filter, &latest.ipv4(), Verdict::NotPermitted, "permission last but the rate");
}

// Goal: test_run's repeat count runs the program that many times, and the counters (summed
// over CPUs) count each run.
#[test]
fn counters_count_every_run() {
    let filter = fixture();
    let mut bytes = Datagram::data(NEIGHBOR_LINK, 1).bytes();
    bytes[85] ^= 0xff;
    let before = filter.verdict_counts().unwrap();
    let outcome = filter.test_run(&ipv4_frame(&bytes), 1000).unwrap();
    let after = filter.verdict_counts().unwrap();
    assert_eq!(outcome.action, XDP_DROP);
    assert_eq!(after[Verdict::BadTag as usize] - before[Verdict::BadTag as usize], 1000);
    assert_eq!(after.iter().sum::<u64>() - before.iter().sum::<u64>(), 1000);
}

// Goal: remove_link forgets the link's replay windows (a link set again under its id starts
// its sequences over) and nothing else's; set_link alone keeps them.
#[test]
fn remove_link_forgets_replay_windows() {
    let mut filter = fixture();
    let entry = LinkEntry::new(link_key(NEIGHBOR_LINK), ROLE_NEIGHBOR, 0, 0);
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 10).ipv4(), Verdict::Pass, "seq 10");
    expect(&filter, &Datagram::data(CLIENT_LINK, 10).ipv4(), Verdict::Pass, "client seq 10");
    filter.set_link(NEIGHBOR_LINK, &entry).unwrap();
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 10).ipv4(), Verdict::Replayed, "set_link keeps the window");
    filter.remove_link(NEIGHBOR_LINK).unwrap();
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 11).ipv4(), Verdict::UnknownLink, "removed");
    filter.set_link(NEIGHBOR_LINK, &entry).unwrap();
    expect(&filter, &Datagram::data(NEIGHBOR_LINK, 10).ipv4(), Verdict::Pass, "set again: a fresh window");
    expect(&filter, &Datagram::data(CLIENT_LINK, 10).ipv4(), Verdict::Replayed, "the client link's window stays");
    filter.remove_link(UNKNOWN_LINK).unwrap(); // absent: fine
}

// Goal: map capacity and argument errors come back as errors that name the map and the
// bound, and removing what is absent is not an error.
#[test]
fn map_bounds_and_bad_arguments() {
    let mut filter = load();
    for port in 0..PORTS_MAX as u16 {
        filter.add_port(10_000 + port).unwrap();
    }
    filter.add_port(10_000).unwrap(); // replacing an entry needs no room
    match filter.add_port(20_000) {
        Err(error @ XdpError::MapFull { map: "ports", max_entries: PORTS_MAX }) => {
            assert!(error.to_string().contains("`ports` is full"), "{error}")
        }
        other => panic!("expected ports to be full, got {other:?}"),
    }
    filter.remove_port(10_000).unwrap();
    filter.add_port(20_000).unwrap();
    filter.remove_port(10_000).unwrap(); // absent: fine

    let bad_role = LinkEntry { role: 7, ..LinkEntry::new([0; 32], ROLE_CLIENT, 0, 0) };
    assert!(matches!(filter.set_link(1, &bad_role), Err(XdpError::InvalidRole { role: 7 })));

    match filter.test_run(&[0u8; 10], 1) {
        Err(XdpError::TestRun { message }) => assert!(message.contains("10 bytes"), "{message}"),
        other => panic!("a 10-byte frame is shorter than Ethernet: {other:?}"),
    }
}

// Goal: the independent tag implementation these tests use is the reference SipHash-2-4
// (the paper's vector: key 00..0f, message 00..0e), the same anchor as dataplane's linktag.
#[test]
fn siphash_reference_vector() {
    let key: [u8; 16] = std::array::from_fn(|i| i as u8);
    let message: Vec<u8> = (0u8..15).collect();
    assert_eq!(SipHasher24::new_with_key(&key).hash(&message), 0xa129_ca61_49be_45e5);
}

/// A veth pair that exists for one test and is deleted when dropped.
struct VethPair {
    name: String,
}

impl VethPair {
    fn create() -> VethPair {
        let name = format!("rnx{}", std::process::id() % 1_000_000);
        let peer = format!("{name}p");
        let _ = std::process::Command::new("ip").args(["link", "del", &name]).output();
        run_ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        run_ip(&["link", "set", &name, "up"]);
        run_ip(&["link", "set", &peer, "up"]);
        VethPair { name }
    }

    /// `ip -d link show` of the interface, where an attached program shows up as `xdp`.
    fn link_details(&self) -> String {
        run_ip(&["-d", "link", "show", "dev", &self.name])
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.name]).output();
    }
}

fn run_ip(arguments: &[&str]) -> String {
    let output = std::process::Command::new("ip")
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("running `ip {}`: {error} (install iproute2: scripts/setup.sh)", arguments.join(" ")));
    assert!(output.status.success(), "`ip {}` failed: {}", arguments.join(" "), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// Goal: the program attaches to a real interface in native and in generic mode, reports
// where it is attached, refuses a second attachment, detaches on request and on drop, and
// explains the usual attach failures (no such interface, no native XDP).
#[test]
fn attach_native_and_generic_on_veth() {
    let veth = VethPair::create();
    let mut filter = load();
    assert_eq!(filter.attached(), None);

    filter.attach(&veth.name, AttachMode::Native).unwrap();
    assert_eq!(filter.attached(), Some((veth.name.clone(), AttachMode::Native)));
    assert!(veth.link_details().contains("xdp"), "native program visible: {}", veth.link_details());
    assert!(matches!(filter.attach(&veth.name, AttachMode::Generic), Err(XdpError::AlreadyAttached { .. })));
    filter.detach().unwrap();
    assert_eq!(filter.attached(), None);
    assert!(!veth.link_details().contains("prog/xdp"), "detached: {}", veth.link_details());

    filter.attach(&veth.name, AttachMode::Generic).unwrap();
    assert_eq!(filter.attached(), Some((veth.name.clone(), AttachMode::Generic)));
    assert!(veth.link_details().contains("xdpgeneric"), "generic program visible: {}", veth.link_details());
    drop(filter);
    assert!(!veth.link_details().contains("prog/xdp"), "drop detaches: {}", veth.link_details());

    let mut filter = load();
    match filter.attach("rnx-no-such-if", AttachMode::Generic) {
        Err(XdpError::UnknownInterface { interface }) => assert_eq!(interface, "rnx-no-such-if"),
        other => panic!("expected an unknown interface, got {other:?}"),
    }
    // The loopback driver has no native XDP (attaching fails before anything changes on lo).
    match filter.attach("lo", AttachMode::Native) {
        Err(error @ XdpError::NativeUnsupported { .. }) => {
            assert!(error.to_string().contains("interface lo has no native XDP: use generic"), "{error}")
        }
        other => panic!("expected no native XDP on lo, got {other:?}"),
    }
    assert_eq!(filter.attached(), None);
}
