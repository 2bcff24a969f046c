//! Ethernet frames for tests and benchmarks of the filter through `BPF_PROG_TEST_RUN`.
//!
//! Real encodings, not just enough bytes to get past the parser: the IPv4 header checksum and
//! the UDP checksum (over the pseudo-header, mandatory for IPv6) are computed, so a frame built
//! here could be put on a wire. MAC addresses are fixed locally administered ones; the filter
//! does not look at them.
//!
//! Limits: one UDP datagram per frame, no IP options, no fragmentation (tests that need
//! fragments edit the IPv4 header of a frame built here).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

/// Destination MAC of every frame built here (locally administered).
pub const DESTINATION_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Source MAC of every frame built here (locally administered).
pub const SOURCE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// EtherType of IPv4.
pub const ETHER_TYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHER_TYPE_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETHER_TYPE_VLAN: u16 = 0x8100;

const ETHERNET_HEADER_LENGTH: usize = 14;
const IPV4_HEADER_LENGTH: usize = 20;
const UDP_HEADER_LENGTH: usize = 8;
const PROTOCOL_UDP: u8 = 17;

/// Ethernet + IPv4 (no options, DF set, TTL 64, valid header checksum) + UDP (valid checksum)
/// carrying `payload`.
///
/// # Panics
/// If `payload` is longer than an IPv4 UDP datagram can be (65 507 bytes).
pub fn udp_ipv4(source: SocketAddrV4, destination: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_length = UDP_HEADER_LENGTH + payload.len();
    let ip_length = IPV4_HEADER_LENGTH + udp_length;
    assert!(ip_length <= usize::from(u16::MAX), "payload of {} bytes does not fit one IPv4 UDP datagram", payload.len());

    let mut frame = ethernet_header(ETHER_TYPE_IPV4);
    let ip_start = frame.len();
    frame.extend_from_slice(&[0x45, 0]); // version 4, IHL 5; DSCP/ECN 0
    frame.extend_from_slice(&(ip_length as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // identification
    frame.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, fragment offset 0
    frame.extend_from_slice(&[64, PROTOCOL_UDP]);
    frame.extend_from_slice(&[0, 0]); // header checksum, filled below
    frame.extend_from_slice(&source.ip().octets());
    frame.extend_from_slice(&destination.ip().octets());
    let checksum = internet_checksum(&[&frame[ip_start..]]);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());

    let pseudo_header = ipv4_pseudo_header(*source.ip(), *destination.ip(), udp_length);
    push_udp(&mut frame, &pseudo_header, source.port(), destination.port(), payload);
    frame
}

/// Ethernet + IPv6 (no extension headers, hop limit 64) + UDP (valid checksum) carrying
/// `payload`.
///
/// # Panics
/// If `payload` is longer than a UDP datagram without jumbograms can be (65 527 bytes).
pub fn udp_ipv6(source: SocketAddrV6, destination: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    let udp_length = UDP_HEADER_LENGTH + payload.len();
    assert!(udp_length <= usize::from(u16::MAX), "payload of {} bytes does not fit one UDP datagram", payload.len());

    let mut frame = ethernet_header(ETHER_TYPE_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    frame.extend_from_slice(&(udp_length as u16).to_be_bytes());
    frame.extend_from_slice(&[PROTOCOL_UDP, 64]);
    frame.extend_from_slice(&source.ip().octets());
    frame.extend_from_slice(&destination.ip().octets());

    let pseudo_header = ipv6_pseudo_header(source.ip(), destination.ip(), udp_length);
    push_udp(&mut frame, &pseudo_header, source.port(), destination.port(), payload);
    frame
}

/// `frame` with one 802.1Q tag (priority 0, the given VLAN id) inserted after the MAC
/// addresses.
///
/// # Panics
/// If `frame` is shorter than an Ethernet header or `vlan_id` does not fit 12 bits.
pub fn with_vlan(frame: &[u8], vlan_id: u16) -> Vec<u8> {
    assert!(frame.len() >= ETHERNET_HEADER_LENGTH, "a frame has at least an Ethernet header");
    assert!(vlan_id < 4096, "VLAN ids are 12 bits");
    let mut tagged = Vec::with_capacity(frame.len() + 4);
    tagged.extend_from_slice(&frame[..12]);
    tagged.extend_from_slice(&ETHER_TYPE_VLAN.to_be_bytes());
    tagged.extend_from_slice(&vlan_id.to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, as a host-order u16
/// to be written big-endian. Each part but the last must have even length.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet_header(ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1514);
    frame.extend_from_slice(&DESTINATION_MAC);
    frame.extend_from_slice(&SOURCE_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

fn ipv4_pseudo_header(source: Ipv4Addr, destination: Ipv4Addr, udp_length: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&[0, PROTOCOL_UDP]);
    pseudo.extend_from_slice(&(udp_length as u16).to_be_bytes());
    pseudo
}

fn ipv6_pseudo_header(source: &Ipv6Addr, destination: &Ipv6Addr, udp_length: usize) -> Vec<u8> {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&(udp_length as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTOCOL_UDP]);
    pseudo
}

fn push_udp(frame: &mut Vec<u8>, pseudo_header: &[u8], source_port: u16, destination_port: u16, payload: &[u8]) {
    let udp_start = frame.len();
    let udp_length = (UDP_HEADER_LENGTH + payload.len()) as u16;
    frame.extend_from_slice(&source_port.to_be_bytes());
    frame.extend_from_slice(&destination_port.to_be_bytes());
    frame.extend_from_slice(&udp_length.to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // checksum, filled below
    frame.extend_from_slice(payload);
    let mut checksum = internet_checksum(&[pseudo_header, &frame[udp_start..]]);
    // A computed 0 is sent as all ones: 0 on the wire means "no checksum" (IPv4) or is invalid (IPv6).
    if checksum == 0 {
        checksum = 0xffff;
    }
    frame[udp_start + 6..udp_start + 8].copy_from_slice(&checksum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the checksums are right, judged the way a receiver judges them: summing a header
    // or datagram that includes its checksum gives zero.
    #[test]
    fn checksums_verify() {
        let source = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 40000);
        let destination = SocketAddrV4::new(Ipv4Addr::new(10, 4, 5, 6), 7000);
        let frame = udp_ipv4(source, destination, b"hello, runnel");
        let ip = &frame[14..34];
        assert_eq!(internet_checksum(&[ip]), 0);
        let udp = &frame[34..];
        let pseudo = ipv4_pseudo_header(*source.ip(), *destination.ip(), udp.len());
        assert_eq!(internet_checksum(&[&pseudo, udp]), 0);

        let source = SocketAddrV6::new("fd00::1".parse().unwrap(), 40000, 0, 0);
        let destination = SocketAddrV6::new("fd00::2".parse().unwrap(), 7000, 0, 0);
        let frame = udp_ipv6(source, destination, b"odd length payload!");
        let udp = &frame[54..];
        let pseudo = ipv6_pseudo_header(source.ip(), destination.ip(), udp.len());
        assert_eq!(internet_checksum(&[&pseudo, udp]), 0);
        assert_eq!(u16::from_be_bytes([frame[18], frame[19]]) as usize, udp.len());
    }

    // Goal: the RFC 1071 §3 example: the words sum to 0xddf2 (carries folded), whose
    // complement 0x220d is the checksum.
    #[test]
    fn rfc1071_example() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&[&bytes]), 0x220d);
    }

    // Goal: a VLAN tag lands between the MAC addresses and the original EtherType.
    #[test]
    fn vlan_tag_position() {
        let frame = udp_ipv4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2), &[]);
        let tagged = with_vlan(&frame, 42);
        assert_eq!(tagged.len(), frame.len() + 4);
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0x00, 42, 0x08, 0x00]);
        assert_eq!(&tagged[18..], &frame[14..]);
    }
}
