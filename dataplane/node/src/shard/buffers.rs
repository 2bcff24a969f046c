//! Memory the kernel reads and writes on a shard's behalf: the provided-buffer ring for
//! multishot receives, the send slots for batched scatter-gather `sendmsg`, and socket
//! address conversions.
//!
//! Everything here has a stable address for as long as the io_uring ring that uses it: the
//! buffer ring and the receive buffers are allocated once, the send slots live in a boxed
//! slice that never grows. The shard drains the ring (cancels the receive, waits for sends)
//! before any of it is dropped.

use io_uring::types::BufRingEntry;
use runnel_core::relay::{Gather, GSO_SEGMENTS_MAX};
use std::alloc::{self, Layout};
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// Bytes of payload one receive buffer holds: a whole GRO-coalesced receive (the kernel caps
/// one coalesced skb at 64 KiB).
pub(crate) const RECEIVE_PAYLOAD_LENGTH_MAX: usize = 65_536;
/// Bytes reserved for the cmsg area of a multishot recvmsg (the `UDP_GRO` segment size is one
/// `int` cmsg, 24 bytes with its header on 64-bit).
pub(crate) const RECEIVE_CONTROL_LENGTH: usize = 32;
/// Bytes reserved for the sender's address (a `sockaddr_in6` holds IPv4 and IPv6 alike).
pub(crate) const RECEIVE_NAME_LENGTH: usize = size_of::<libc::sockaddr_in6>();
/// Bytes of one provided buffer: the kernel's `io_uring_recvmsg_out` (16 bytes), the name and
/// control areas, then the payload.
pub(crate) const RECEIVE_BUFFER_LENGTH: usize = 16 + RECEIVE_NAME_LENGTH + RECEIVE_CONTROL_LENGTH + RECEIVE_PAYLOAD_LENGTH_MAX;

/// The ring of receive buffers the kernel picks from (`IORING_REGISTER_PBUF_RING`).
///
/// `count` buffers of [`RECEIVE_BUFFER_LENGTH`] bytes each. The kernel consumes entries at the
/// head; [`BufferRing::provide`] hands a buffer back at the tail and [`BufferRing::publish`]
/// makes the new tail visible, once per batch.
pub(crate) struct BufferRing {
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    buffers: Box<[u8]>,
    count: u16,
    tail: u16,
    group_id: u16,
}

impl BufferRing {
    /// Allocates `count` (a power of two, at most 32768) buffers and fills the ring with all
    /// of them. Nothing is registered yet.
    pub(crate) fn new(count: u16, group_id: u16) -> Self {
        assert!(count.is_power_of_two() && count <= 32_768, "buffer ring count {count} must be a power of two ≤ 32768");
        // The kernel requires the ring to start on a page boundary.
        let entries_layout = Layout::from_size_align(count as usize * size_of::<BufRingEntry>(), 4096).expect("buffer ring layout");
        // SAFETY: the layout has a nonzero size (count ≥ 1, entries are 16 bytes).
        let raw = unsafe { alloc::alloc_zeroed(entries_layout) };
        let entries = NonNull::new(raw.cast::<BufRingEntry>()).unwrap_or_else(|| alloc::handle_alloc_error(entries_layout));
        let buffers = vec![0u8; count as usize * RECEIVE_BUFFER_LENGTH].into_boxed_slice();
        let mut ring = Self { entries, entries_layout, buffers, count, tail: 0, group_id };
        for id in 0..count {
            ring.provide(id);
        }
        ring.publish();
        ring
    }

    /// Registers the ring with `submitter`'s io_uring.
    ///
    /// # Safety
    /// The ring must outlive its registration: the caller unregisters it, or destroys the
    /// io_uring, before dropping `self`.
    pub(crate) unsafe fn register(&self, submitter: &io_uring::Submitter<'_>) -> std::io::Result<()> {
        // SAFETY: the entries are a live, page-aligned allocation of `count` entries that stays
        // put until `self` is dropped, which the caller's contract places after unregistering.
        unsafe { submitter.register_buf_ring_with_flags(self.entries.as_ptr() as u64, self.count, self.group_id, 0) }
    }

    /// The first `length` bytes of buffer `id`, as the kernel filled them.
    pub(crate) fn buffer(&self, id: u16, length: usize) -> &[u8] {
        let start = id as usize * RECEIVE_BUFFER_LENGTH;
        &self.buffers[start..start + length.min(RECEIVE_BUFFER_LENGTH)]
    }

    /// Hands buffer `id` back to the kernel (visible after [`BufferRing::publish`]).
    pub(crate) fn provide(&mut self, id: u16) {
        debug_assert!(id < self.count);
        let index = (self.tail & (self.count - 1)) as usize;
        // SAFETY: index < count, so the entry lies inside the allocation; the kernel only reads
        // entries between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        let address = self.buffers.as_ptr() as u64 + (id as usize * RECEIVE_BUFFER_LENGTH) as u64;
        entry.set_addr(address);
        entry.set_len(RECEIVE_BUFFER_LENGTH as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail so the kernel sees every buffer provided since the last publish.
    pub(crate) fn publish(&self) {
        // SAFETY: the tail field overlays entry 0's reserved field inside our allocation; the
        // kernel reads it with acquire ordering, and u16 is naturally aligned there (offset 14).
        let tail = unsafe { &*(BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout; the shard has unregistered the
        // ring or destroyed its io_uring before dropping it.
        unsafe { alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout) };
    }
}

/// One in-flight `sendmsg`: the relay's [`Gather`] (per datagram a header stamped for the
/// link and a body shared with the other links it goes to), one iovec per part, the
/// destination, the `UDP_SEGMENT` cmsg, and the `msghdr` pointing at them. Lives in a boxed
/// slice so its address never changes; the gather goes back to the relay only when the send
/// has completed (the next `poll_gather` into this slot).
pub(crate) struct SendSlot {
    pub(crate) gather: Gather,
    pub(crate) segments: usize,
    pub(crate) segment_size: usize,
    /// Whether the last prepare attached a `UDP_SEGMENT` cmsg.
    pub(crate) gso: bool,
    name: libc::sockaddr_storage,
    /// Two per datagram (header, body); never grows past its first capacity, so the
    /// `msghdr`'s pointer into it stays valid while the send is in flight.
    iovecs: Vec<libc::iovec>,
    control: [u64; 4],
    header: libc::msghdr,
}

impl SendSlot {
    pub(crate) fn new() -> Self {
        // SAFETY: sockaddr_storage and msghdr are plain C structs for which all-zero is valid.
        let (name, header) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        Self {
            gather: Gather::default(),
            segments: 0,
            segment_size: 0,
            gso: false,
            name,
            iovecs: Vec::with_capacity(2 * GSO_SEGMENTS_MAX),
            control: [0; 4],
            header,
        }
    }

    /// Points the `msghdr` at this slot's gather and `destination`, with a `UDP_SEGMENT` cmsg
    /// when `gso` is set and the send has more than one segment. Returns the `msghdr` for a
    /// SendMsg SQE; it stays valid until the slot is prepared again.
    pub(crate) fn prepare(&mut self, destination: SocketAddr, segment_size: usize, gso: bool) -> *const libc::msghdr {
        let segments = self.gather.len();
        assert!(segments <= GSO_SEGMENTS_MAX, "a relay transmit holds at most {GSO_SEGMENTS_MAX} datagrams");
        self.segments = segments;
        self.segment_size = segment_size;
        self.gso = gso && segments > 1;
        let name_length = write_sockaddr(destination, &mut self.name);
        self.iovecs.clear();
        for (header, body) in self.gather.segments() {
            // The kernel only reads through these (sendmsg); the casts drop `const` for the C type.
            self.iovecs.push(libc::iovec { iov_base: header.as_ptr() as *mut libc::c_void, iov_len: header.len() });
            self.iovecs.push(libc::iovec { iov_base: body.as_ptr() as *mut libc::c_void, iov_len: body.len() });
        }
        self.header.msg_name = (&mut self.name as *mut libc::sockaddr_storage).cast();
        self.header.msg_namelen = name_length;
        self.header.msg_iov = self.iovecs.as_mut_ptr();
        self.header.msg_iovlen = self.iovecs.len();
        self.header.msg_flags = 0;
        if self.gso {
            self.header.msg_control = self.control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure size computation.
            self.header.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
            // SAFETY: msg_control points at `control` (32 bytes, 8-aligned), which holds
            // CMSG_SPACE(2) = 24 bytes, so the first header and its data fit.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&self.header);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_size as u16);
            }
        } else {
            self.header.msg_control = std::ptr::null_mut();
            self.header.msg_controllen = 0;
        }
        &self.header
    }

    /// A `msghdr` for datagram `index` alone (its two iovecs, no cmsg), for the no-GSO
    /// fallback; valid while the slot is not prepared again.
    pub(crate) fn single(&self, index: usize) -> libc::msghdr {
        let mut header = self.header;
        // SAFETY: `prepare` pushed two iovecs per datagram, so 2 * index + 1 is in bounds.
        header.msg_iov = unsafe { self.iovecs.as_ptr().add(2 * index) }.cast_mut();
        header.msg_iovlen = 2;
        header.msg_control = std::ptr::null_mut();
        header.msg_controllen = 0;
        header
    }
}

/// Writes `address` as a C sockaddr into `storage`; returns its length.
pub(crate) fn write_sockaddr(address: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a C sockaddr as the kernel wrote it into a receive buffer (any alignment).
/// `None` for a family other than IPv4/IPv6 or a truncated address.
pub(crate) fn read_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    if family == libc::AF_INET as u16 && bytes.len() >= size_of::<libc::sockaddr_in>() {
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
        Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    } else if family == libc::AF_INET6 as u16 && bytes.len() >= size_of::<libc::sockaddr_in6>() {
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let flowinfo = u32::from_ne_bytes(bytes[4..8].try_into().ok()?);
        let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
        let scope_id = u32::from_ne_bytes(bytes[24..28].try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, flowinfo, scope_id)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: addresses survive the trip through C sockaddrs, and short or foreign ones are refused.
    #[test]
    fn sockaddr_round_trip() {
        for text in ["127.0.0.1:7000", "[::1]:9", "[fe80::1%3]:65535"] {
            let address: SocketAddr = text.parse().unwrap();
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let length = write_sockaddr(address, &mut storage) as usize;
            // SAFETY: storage is a plain struct of at least `length` initialized bytes.
            let bytes = unsafe { std::slice::from_raw_parts((&storage as *const libc::sockaddr_storage).cast::<u8>(), length) };
            assert_eq!(read_sockaddr(bytes), Some(address));
            assert_eq!(read_sockaddr(&bytes[..length - 1]), None);
        }
        assert_eq!(read_sockaddr(&[]), None);
        assert_eq!(read_sockaddr(&[0xff; 28]), None);
    }

    // Goal: a prepared slot is a valid scatter-gather GSO sendmsg: a relay's gather of three
    // Subscribe datagrams to one neighbor (one header template each, stamped for the link)
    // leaves in one io_uring SendMsg and arrives as three datagrams, each with the link's id,
    // its own link sequence and a tag that checks; and the no-GSO path sends the same bytes.
    #[test]
    fn send_slot_sends_a_relay_gather_through_io_uring() {
        use runnel_core::link::{LinkConfig, LinkRole, VerifyPolicy};
        use runnel_core::relay::{Relay, RelayConfig};
        use runnel_proto::linktag::LinkKey;
        use runnel_proto::stream::StreamPartKey;
        use runnel_proto::wire::{Datagram, Kind, HEADER_LENGTH};
        use std::os::fd::AsRawFd;
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let key = LinkKey([5; 32]);
        let mut relay = Relay::new(RelayConfig::new(0, 1, 1472, VerifyPolicy::All));
        relay.add_link(&LinkConfig {
            id: 42,
            peer_link_id: None,
            key,
            role: LinkRole::Neighbor,
            peer: Some(receiver.local_addr().unwrap()),
            peer_shards: 1,
            rate_datagrams_per_s: 0,
            burst_datagrams: 0,
        });
        let parts = [StreamPartKey([1; 32]), StreamPartKey([2; 32]), StreamPartKey([3; 32])];
        for part in parts {
            assert!(relay.join(0, part));
        }
        let mut ring = io_uring::IoUring::new(8).unwrap();
        let mut slot = SendSlot::new();
        let transmit = relay.poll_gather(&mut slot.gather).expect("three Subscribes queued");
        assert_eq!((transmit.segments, transmit.segment_size, transmit.length), (3, HEADER_LENGTH, 3 * HEADER_LENGTH));
        let header = slot.prepare(transmit.destination, transmit.segment_size, true);
        assert!(slot.gso);
        let entry = io_uring::opcode::SendMsg::new(io_uring::types::Fd(sender.as_raw_fd()), header).build().user_data(7);
        // SAFETY: the slot outlives the request: we wait for its completion below.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let completion = ring.completion().next().unwrap();
        assert_eq!((completion.user_data(), completion.result()), (7, 3 * HEADER_LENGTH as i32));
        let mut buffer = [0u8; 2048];
        let mut received = Vec::new();
        for (sequence, part) in parts.iter().enumerate() {
            let length = receiver.recv(&mut buffer).unwrap();
            let datagram = Datagram::parse(&buffer[..length]).unwrap();
            assert_eq!((datagram.kind, datagram.link_id(), datagram.link_seq()), (Kind::Subscribe, 42, sequence as u64));
            assert!(received.iter().all(|earlier: &StreamPartKey| earlier != &datagram.stream_part_key()));
            assert!(parts.contains(&datagram.stream_part_key()), "part {part:?}");
            assert!(datagram.tag_matches(&key));
            received.push(datagram.stream_part_key());
        }
        // The no-GSO path: each datagram alone from the same iovecs.
        for index in 0..3 {
            let single = slot.single(index);
            // SAFETY: `single` points at the slot's live iovecs and sockaddr.
            let sent = unsafe { libc::sendmsg(sender.as_raw_fd(), &single, 0) };
            assert_eq!(sent, HEADER_LENGTH as isize);
            let length = receiver.recv(&mut buffer).unwrap();
            assert_eq!(Datagram::parse(&buffer[..length]).unwrap().link_seq(), index as u64);
        }
        assert!(relay.poll_gather(&mut slot.gather).is_none(), "nothing else queued");
        assert!(slot.gather.is_empty(), "the sent datagrams went back to the relay");
    }
}
