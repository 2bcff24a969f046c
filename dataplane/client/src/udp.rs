//! The blocking UDP client: a [`ClientCore`] and [`Publisher`]s on one `std::net::UdpSocket`.
//!
//! This is what `runnel pub`, `runnel sub` and the load generators use. Sends go out as UDP
//! GSO: each [`Transmit`] (a run of equal-size datagrams to one node shard) is one `sendmsg`
//! with a `UDP_SEGMENT` cmsg. If the kernel or device refuses GSO (EINVAL/EIO/EOPNOTSUPP),
//! the client says so once in its counters (`gso_fallbacks`) and sends one datagram per
//! syscall from then on. Receives use `UDP_GRO`, so one `recv` returns up to 64 KiB of
//! coalesced datagrams, split by `total_length` in the core.
//!
//! ```no_run
//! use runnel_client::{ClientLinkConfig, UdpClient};
//! let link = ClientLinkConfig::load("client.toml".as_ref()).unwrap();
//! let mut client = UdpClient::connect(&link).unwrap();
//! let key = runnel_proto::stream::StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/a#0").unwrap().key();
//! client.subscribe(&key).unwrap();
//! loop {
//!     client.recv(std::time::Duration::from_millis(100), |delivery| println!("{:?}", delivery.payload)).unwrap();
//! }
//! ```
//!
//! Repair needs the client to be called now and then: a publisher answers its node's NAKs
//! and sends tail probes in [`UdpClient::flush`], [`UdpClient::publish`] (when it sends) and
//! [`UdpClient::poll`], and should [`UdpClient::linger`] a moment before it exits so the
//! last messages can still be repaired; a subscriber NAKs gaps in [`UdpClient::recv`].
//!
//! Flow control: the node grants the client a window of datagrams per shard; what is beyond it
//! waits in the client. [`UdpClient::publish`] blocks while more than
//! [`PUBLISH_QUEUE_BYTES_MAX`] wait (reading the node's grants meanwhile), so an unpaced
//! publisher runs at the node's pace and loses nothing; [`UdpClient::try_publish`] returns
//! `WouldBlock` instead. A client that also subscribes reads its socket only in `recv`, so its
//! `publish` returns `WouldBlock` too when the window is used up: call `recv`, then retry.
//!
//! Limits: blocking, one thread; messages leave when a datagram fills or on [`UdpClient::flush`],
//! which the caller calls every few milliseconds (or after each message when latency matters
//! more than throughput). At most [`PUBLISHERS_MAX`] stream parts are published to. A client
//! that subscribes reads its socket only in `recv` (messages must reach the application), so
//! a client that both publishes and subscribes answers NAKs while it calls `recv`.

use runnel_core::client::ClientLinkConfig;
use runnel_core::client::{ClientCore, ClientCounters, CoreOptions, Delivery, OwnedDelivery, GSO_BYTES_MAX};
use runnel_core::client::{Outgoing, PublishError, Publisher, SigningMode, FRAMES_PER_ROOT_DEFAULT};
use runnel_core::relay::Transmit;
use runnel_proto::crypto::PublisherKey;
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::HEADER_LENGTH;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most stream parts one client publishes to (one [`Publisher`], one chain, each).
pub const PUBLISHERS_MAX: usize = 1024;
/// Receive buffer: the largest GRO-coalesced payload.
const RECEIVE_BUFFER_BYTES: usize = 1 << 16;
/// Most further non-blocking receives after the first one of a `recv` call.
const RECEIVES_PER_CALL_MAX: usize = 64;
/// Socket buffer size asked for (SO_SNDBUF/SO_RCVBUF; the FORCE variants when root).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// Bytes of Data waiting for the node's credit beyond which `publish` waits.
pub const PUBLISH_QUEUE_BYTES_MAX: usize = 1 << 20;
/// `linger` stops waiting for queued Data to leave once the node granted nothing this long.
const LINGER_STALL_MAX: Duration = Duration::from_secs(1);
/// Longest one wait for the node's credit inside `publish` (a probe may be due sooner).
const CREDIT_WAIT_MS_MAX: i32 = 5;

/// How a [`UdpClient`] publishes and receives.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Needed to publish; a subscriber-only client has none.
    pub publisher_key: Option<PublisherKey>,
    pub signing: SigningMode,
    /// Verify publisher signatures of received messages.
    pub verify: bool,
    /// Try UDP GSO for sends of several datagrams (falls back by itself if refused).
    pub gso: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { publisher_key: None, signing: SigningMode::Batch { frames_per_root_max: FRAMES_PER_ROOT_DEFAULT }, verify: true, gso: true }
    }
}

/// Milliseconds since the Unix epoch: the timestamp of a message published now.
pub fn unix_time_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn invalid_input(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error)
}

/// A client link over a blocking UDP socket.
#[derive(Debug)]
pub struct UdpClient {
    socket: UdpSocket,
    core: ClientCore,
    options: ClientOptions,
    publishers: Vec<Publisher>,
    send_buffer: Vec<u8>,
    receive_buffer: Vec<u8>,
    read_timeout: Option<Duration>,
    started: Instant,
}

/// A socket address in the kernel's representation.
struct RawAddress {
    storage: libc::sockaddr_storage,
    length: libc::socklen_t,
}

impl RawAddress {
    fn new(address: &SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let length = match address {
            SocketAddr::V4(v4) => {
                let raw = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), raw) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let raw = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), raw) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self { storage, length: length as libc::socklen_t }
    }
}

/// One `sendmsg` of `bytes` cut by the kernel into `segment_size` datagrams (UDP GSO).
fn send_segmented(socket: &UdpSocket, destination: &SocketAddr, bytes: &[u8], segment_size: u16) -> io::Result<()> {
    let mut address = RawAddress::new(destination);
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let control_length = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    assert!(control_length <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain old data; zeroes are valid and every used field is set below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_name = (&mut address.storage as *mut libc::sockaddr_storage).cast();
    message.msg_namelen = address.length;
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = control_length;
    // SAFETY: msg_control points at `control`, which is large enough (asserted) and aligned
    // for one cmsghdr with a u16 payload; CMSG_FIRSTHDR/CMSG_DATA stay inside it, and
    // sendmsg only reads the buffers, which all live until it returns.
    let sent = unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_UDP;
        (*header).cmsg_type = libc::UDP_SEGMENT;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<u16>(), segment_size);
        libc::sendmsg(socket.as_raw_fd(), &message, 0)
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Errors that mean "this kernel/device cannot do UDP GSO here", not "the send failed".
fn is_gso_unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EIO | libc::EOPNOTSUPP | libc::ENOPROTOOPT))
}

/// Sends one transmit: GSO when possible, one datagram per syscall otherwise.
fn send_transmit(socket: &UdpSocket, transmit: &Transmit, bytes: &[u8], gso: &mut bool, counters: &mut ClientCounters) -> io::Result<()> {
    if transmit.segments > 1 && *gso {
        match send_segmented(socket, &transmit.destination, bytes, transmit.segment_size as u16) {
            Ok(()) => return Ok(()),
            Err(error) if is_gso_unsupported(&error) => {
                *gso = false;
                counters.gso_fallbacks += 1;
            }
            Err(error) => {
                counters.datagrams_send_failed += transmit.segments as u64;
                return Err(error);
            }
        }
    }
    for (index, datagram) in bytes.chunks(transmit.segment_size).enumerate() {
        if let Err(error) = socket.send_to(datagram, transmit.destination) {
            counters.datagrams_send_failed += (transmit.segments - index) as u64;
            return Err(error);
        }
    }
    Ok(())
}

impl UdpClient {
    /// A subscriber (no publisher key) with default options.
    pub fn connect(link: &ClientLinkConfig) -> io::Result<Self> {
        Self::connect_with(link, ClientOptions::default())
    }

    /// Binds an ephemeral UDP port of the node's address family, with GRO and large buffers.
    pub fn connect_with(link: &ClientLinkConfig, options: ClientOptions) -> io::Result<Self> {
        let bind: SocketAddr = if link.node.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        Self::with_socket(UdpSocket::bind(bind)?, link, options)
    }

    /// A client on a socket the caller bound (to a chosen address or port); GRO and large
    /// buffers are set as in [`UdpClient::connect_with`].
    pub fn with_socket(socket: UdpSocket, link: &ClientLinkConfig, options: ClientOptions) -> io::Result<Self> {
        // Best effort: without GRO datagrams arrive one per recv; without the FORCE options
        // (not root) the buffers are capped at net.core.{r,w}mem_max.
        let _ = crate::sockopt::set_int(&socket, libc::SOL_UDP, libc::UDP_GRO, 1);
        let size = SOCKET_BUFFER_BYTES as libc::c_int;
        if crate::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            let _ = crate::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        if crate::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size).is_err() {
            let _ = crate::sockopt::set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUF, size);
        }
        // Link sequences start at Unix time in ns: a restarted client is ahead of its
        // previous run in the node's replay window (unless it sent over 10^9 datagrams/s).
        let link_seq_start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let core = ClientCore::new(link, CoreOptions { verify: options.verify, link_seq_start });
        Ok(Self {
            socket,
            core,
            options,
            publishers: Vec::new(),
            send_buffer: Vec::with_capacity(GSO_BYTES_MAX),
            receive_buffer: vec![0; RECEIVE_BUFFER_BYTES],
            read_timeout: None,
            started: Instant::now(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn counters(&self) -> &ClientCounters {
        self.core.counters()
    }

    /// Whether sends still use GSO (false after the kernel refused it once).
    pub fn gso(&self) -> bool {
        self.options.gso
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// The publisher of `key`, created on first use with a fresh chain.
    pub fn publisher(&mut self, key: &StreamPartKey) -> io::Result<&mut Publisher> {
        let index = match self.publishers.iter().position(|p| p.stream_part_key() == *key) {
            Some(index) => index,
            None => {
                let publisher_key = self.options.publisher_key.clone().ok_or_else(|| invalid_input(PublishError::NoPublisherKey))?;
                if self.publishers.len() >= PUBLISHERS_MAX {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("at most {PUBLISHERS_MAX} stream parts per client: use another client"),
                    ));
                }
                let mut publisher = Publisher::new(publisher_key, *key, self.options.signing);
                publisher.set_frame_length_max(self.core.link().datagram_length_max - HEADER_LENGTH);
                self.publishers.push(publisher);
                self.publishers.len() - 1
            }
        };
        Ok(&mut self.publishers[index])
    }

    /// Publishes one message to `key`. It leaves when its datagram fills or on `flush`, as
    /// far as the node's credit allows; while more than [`PUBLISH_QUEUE_BYTES_MAX`] wait for
    /// credit this blocks until the node grants more (a client that also subscribes gets
    /// `WouldBlock` instead, see the module docs).
    pub fn publish(&mut self, key: &StreamPartKey, message: &Outgoing<'_>) -> io::Result<()> {
        loop {
            match self.try_publish(key, message) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock && !self.core.is_subscribed() => self.wait_for_credit()?,
                outcome => return outcome,
            }
        }
    }

    /// [`UdpClient::publish`] without blocking: `WouldBlock` (the message not taken) while
    /// more than [`PUBLISH_QUEUE_BYTES_MAX`] wait for the node's credit.
    pub fn try_publish(&mut self, key: &StreamPartKey, message: &Outgoing<'_>) -> io::Result<()> {
        if self.core.data_queue_bytes() >= PUBLISH_QUEUE_BYTES_MAX {
            self.service()?;
            if self.core.data_queue_bytes() >= PUBLISH_QUEUE_BYTES_MAX {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "the node's credit is used up: wait, then retry"));
            }
        }
        let publisher = self.publisher(key)?;
        publisher.publish(message).map_err(invalid_input)?;
        if publisher.frame_count() > 0 {
            let index = self.publishers.iter().position(|p| p.stream_part_key() == *key).expect("created above");
            self.queue_publisher(index)?;
        }
        if self.core.send_queue_bytes() >= GSO_BYTES_MAX {
            self.service()?;
        }
        Ok(())
    }

    /// Waits until the socket has something to read (the node's Credit, or a NAK) or a timer
    /// (a credit probe) is due, at most [`CREDIT_WAIT_MS_MAX`].
    fn wait_for_credit(&mut self) -> io::Result<()> {
        let due_ms = self.core.poll_timeout().map_or(CREDIT_WAIT_MS_MAX as u64, |due| due.saturating_sub(self.now_us()).div_ceil(1000));
        let timeout = (due_ms as i32).clamp(0, CREDIT_WAIT_MS_MAX);
        let mut poll = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for a live socket, and its count.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        self.service()
    }

    fn queue_publisher(&mut self, index: usize) -> io::Result<()> {
        let now_us = self.now_us();
        let publisher = &mut self.publishers[index];
        self.core.queue_frames(now_us, &publisher.stream_part_key(), publisher.frames()).map_err(invalid_input)?;
        publisher.clear_frames();
        Ok(())
    }

    /// Signs pending batches, closes open datagrams and sends what is queued, as far as the
    /// node's credit allows (the rest leaves as credit arrives: in `publish`, `poll`,
    /// `flush`, `recv` or `linger`).
    pub fn flush(&mut self) -> io::Result<()> {
        for index in 0..self.publishers.len() {
            self.publishers[index].flush();
            if self.publishers[index].frame_count() > 0 {
                self.queue_publisher(index)?;
            }
        }
        self.core.flush();
        self.service()
    }

    /// Publisher upkeep, without waiting: answers the NAKs already received (unless the
    /// client subscribes: then `recv` reads the socket), sends due tail probes and whatever
    /// is queued. A publisher that goes quiet calls this every few milliseconds.
    pub fn poll(&mut self) -> io::Result<()> {
        self.service()
    }

    /// Sends what still waits for credit, then keeps answering NAKs and sends the tail
    /// probes for `duration`: call before closing a
    /// publisher so that its last messages can still be repaired (a few tens of ms covers
    /// the tail probe and a NAK round trip). Messages received meanwhile are dropped.
    pub fn linger(&mut self, duration: Duration) -> io::Result<()> {
        // What still waits for the node's credit leaves first, for as long as the node keeps
        // granting (a node that stopped granting for LINGER_STALL_MAX is given up on).
        let mut queued = self.core.data_queue_bytes();
        let mut progress = Instant::now();
        while queued > 0 && progress.elapsed() < LINGER_STALL_MAX {
            self.recv(Duration::from_millis(5), |_| {})?;
            let now_queued = self.core.data_queue_bytes();
            if now_queued < queued {
                progress = Instant::now();
            }
            queued = now_queued;
        }
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            self.recv(left, |_| {})?;
        }
        Ok(())
    }

    fn service(&mut self) -> io::Result<()> {
        if !self.core.is_subscribed() {
            let now_us = self.now_us();
            for _ in 0..RECEIVES_PER_CALL_MAX {
                match self.recv_nonblocking() {
                    // Nothing but NAKs is expected here; messages for a client without
                    // subscriptions have nowhere to go.
                    Ok(length) => self.core.handle_receive(now_us, &self.receive_buffer[..length], &mut |_| {}),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => return Err(error),
                }
            }
        }
        self.handle_timers()?;
        self.send_pending()
    }

    fn send_pending(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        while let Some(transmit) = self.core.poll_transmit(&mut self.send_buffer) {
            let outcome = send_transmit(&self.socket, &transmit, &self.send_buffer, &mut self.options.gso, self.core.counters_mut());
            // Keep sending the rest: one refused destination must not stall the others.
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }

    fn handle_timers(&mut self) -> io::Result<()> {
        let now_us = self.now_us();
        if self.core.poll_timeout().is_some_and(|due| due <= now_us) {
            self.core.handle_timeout(now_us);
            self.send_pending()?;
        }
        Ok(())
    }

    /// Subscribes to a stream part (refreshed every second while `recv` is called).
    pub fn subscribe(&mut self, key: &StreamPartKey) -> io::Result<()> {
        let now_us = self.now_us();
        self.core.subscribe(now_us, key).map_err(invalid_input)?;
        self.send_pending()
    }

    pub fn unsubscribe(&mut self, key: &StreamPartKey) -> io::Result<()> {
        self.core.unsubscribe(key);
        self.send_pending()
    }

    /// Waits up to `timeout` for datagrams, then takes what else is already queued (without
    /// waiting), calling `on_delivery` per message, borrowed from the receive buffer (or
    /// from the reorder buffer after a repaired gap). Returns the number of messages
    /// delivered (0 on timeout). Also refreshes subscriptions, NAKs gaps, answers NAKs.
    pub fn recv(&mut self, timeout: Duration, mut on_delivery: impl FnMut(Delivery<'_>)) -> io::Result<usize> {
        let mut delivered = 0;
        let mut count = |delivery: Delivery<'_>| {
            delivered += 1;
            on_delivery(delivery);
        };
        self.handle_timers()?;
        self.core.deliver_released(&mut count);
        let wait = self.core.poll_timeout().map_or(timeout, |due| timeout.min(Duration::from_micros(due.saturating_sub(self.now_us()))));
        let first = if wait.is_zero() {
            self.recv_nonblocking()
        } else {
            if self.read_timeout != Some(wait) {
                self.socket.set_read_timeout(Some(wait))?;
                self.read_timeout = Some(wait);
            }
            self.socket.recv(&mut self.receive_buffer)
        };
        match first {
            Ok(length) => {
                let now_us = self.now_us();
                self.core.handle_receive(now_us, &self.receive_buffer[..length], &mut count);
                for _ in 0..RECEIVES_PER_CALL_MAX {
                    match self.recv_nonblocking() {
                        Ok(length) => self.core.handle_receive(now_us, &self.receive_buffer[..length], &mut count),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) => return Err(error),
                    }
                }
            }
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(error) => return Err(error),
        }
        // NAK answers queued while receiving.
        self.send_pending()?;
        self.handle_timers()?;
        self.core.deliver_released(&mut count);
        Ok(delivered)
    }

    /// [`UdpClient::recv`] collecting owned messages (one allocation each).
    pub fn recv_owned(&mut self, timeout: Duration) -> io::Result<Vec<OwnedDelivery>> {
        let mut deliveries = Vec::new();
        self.recv(timeout, |delivery| deliveries.push(delivery.to_owned()))?;
        Ok(deliveries)
    }

    fn recv_nonblocking(&mut self) -> io::Result<usize> {
        // SAFETY: the buffer is ours, writable, and its length is passed; the fd is live.
        let received = unsafe {
            libc::recv(self.socket.as_raw_fd(), self.receive_buffer.as_mut_ptr().cast(), self.receive_buffer.len(), libc::MSG_DONTWAIT)
        };
        if received < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(received as usize)
        }
    }
}
