//! Memory the kernel reads and writes on a shard's behalf: the provided-buffer ring for
//! multishot receives, the send slots for batched `sendmsg`, and socket address conversions.
//!
//! Everything here has a stable address for as long as the io_uring ring that uses it: the
//! buffer ring and the receive buffers are allocated once, the send slots live in a boxed
//! slice that never grows. The shard drains the ring (cancels the receive, waits for sends)
//! before any of it is dropped.

use io_uring::types::BufRingEntry;
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

/// One in-flight `sendmsg`: the datagrams, the destination, the `UDP_SEGMENT` cmsg, and the
/// `msghdr` pointing at them. Lives in a boxed slice so its address never changes.
pub(crate) struct SendSlot {
    pub(crate) buffer: Vec<u8>,
    pub(crate) segments: usize,
    pub(crate) segment_size: usize,
    /// Whether the last prepare attached a `UDP_SEGMENT` cmsg.
    pub(crate) gso: bool,
    name: libc::sockaddr_storage,
    iovec: libc::iovec,
    control: [u64; 4],
    header: libc::msghdr,
}

impl SendSlot {
    pub(crate) fn new(capacity: usize) -> Self {
        // SAFETY: sockaddr_storage and msghdr are plain C structs for which all-zero is valid.
        let (name, header) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        Self {
            buffer: Vec::with_capacity(capacity),
            segments: 0,
            segment_size: 0,
            gso: false,
            name,
            iovec: libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 },
            control: [0; 4],
            header,
        }
    }

    /// Points the `msghdr` at this slot's buffer and `destination`, with a `UDP_SEGMENT` cmsg
    /// when `gso` is set and the send has more than one segment. Returns the `msghdr` for a
    /// SendMsg SQE; it stays valid until the slot is prepared again.
    pub(crate) fn prepare(&mut self, destination: SocketAddr, segment_size: usize, segments: usize, gso: bool) -> *const libc::msghdr {
        self.segments = segments;
        self.segment_size = segment_size;
        self.gso = gso && segments > 1;
        let name_length = write_sockaddr(destination, &mut self.name);
        self.iovec = libc::iovec { iov_base: self.buffer.as_mut_ptr().cast(), iov_len: self.buffer.len() };
        self.header.msg_name = (&mut self.name as *mut libc::sockaddr_storage).cast();
        self.header.msg_namelen = name_length;
        self.header.msg_iov = &mut self.iovec;
        self.header.msg_iovlen = 1;
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

    /// The destination of the last [`SendSlot::prepare`], for the sendto fallback.
    pub(crate) fn name(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        ((&self.name as *const libc::sockaddr_storage).cast(), self.header.msg_namelen)
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

    // Goal: a prepared slot is a valid GSO sendmsg: one io_uring SendMsg of 3 segments (the
    // last one short) arrives as 3 datagrams of the right sizes at a receiver without GRO.
    #[test]
    fn send_slot_sends_gso_segments_through_io_uring() {
        use std::os::fd::AsRawFd;
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ring = io_uring::IoUring::new(8).unwrap();
        let mut slot = SendSlot::new(4096);
        slot.buffer.extend((0..2500u32).map(|i| (i / 1000) as u8));
        let header = slot.prepare(receiver.local_addr().unwrap(), 1000, 3, true);
        assert!(slot.gso);
        let entry = io_uring::opcode::SendMsg::new(io_uring::types::Fd(sender.as_raw_fd()), header).build().user_data(7);
        // SAFETY: the slot outlives the request: we wait for its completion below.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let completion = ring.completion().next().unwrap();
        assert_eq!((completion.user_data(), completion.result()), (7, 2500));
        let mut buffer = [0u8; 2048];
        for (index, expected_length) in [1000, 1000, 500].into_iter().enumerate() {
            let length = receiver.recv(&mut buffer).unwrap();
            assert_eq!(length, expected_length);
            assert!(buffer[..length].iter().all(|&b| b == index as u8));
        }
    }
}
