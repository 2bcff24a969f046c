//! The UDP ceiling: the fastest a relay on this machine could forward, measured with a
//! forwarder that does nothing but move datagrams.
//!
//! Three threads over loopback: a **sender** writes 44 × 1472-byte datagrams per `send` with
//! `UDP_SEGMENT` (GSO) as fast as it can; a **forwarder** thread receives with `UDP_GRO` into 64 KiB
//! buffers (`recvmsg`, segment size from the `UDP_GRO` cmsg) and sends each coalesced buffer
//! on, from a second socket, with a `UDP_SEGMENT` cmsg of that segment size; a **sink** receives with `UDP_GRO` and
//! counts. Forwarded datagrams/s is what reached the sink in the measured window; messages/s
//! converts that with the wire format's packing, (1472 − 88) / (80 + size + 65) messages per
//! datagram ([`crate::messages_per_datagram`]). The forwarder thread's CPU% is read from
//! `/proc/<tid>/stat`.
//!
//! Limits: the sender and sink share the machine's cores with the forwarder, as publisher and
//! subscriber share them with a node; the forwarder parses nothing, verifies nothing and keeps
//! no state, so Runnel's relay throughput divided by this is the fraction of the raw I/O
//! ceiling it reaches, not a target of 1.0.

use crate::process::ProcessSample;
use crate::{BenchError, GSO_SEGMENTS_MAX};
use runnel_proto::wire::DATAGRAM_LENGTH_DEFAULT;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct UdpCeilingOptions {
    pub duration: Duration,
    /// Payload sizes to convert datagrams/s into messages/s for.
    pub payload_lengths: Vec<usize>,
}

impl Default for UdpCeilingOptions {
    fn default() -> Self {
        Self { duration: Duration::from_secs(5), payload_lengths: vec![64, 1024] }
    }
}

/// What the forwarder moved.
#[derive(Clone, Debug)]
pub struct UdpCeilingReport {
    pub options: UdpCeilingOptions,
    pub datagram_length: usize,
    pub sent_datagrams_per_s: f64,
    pub forwarded_datagrams_per_s: f64,
    pub delivered_datagrams_per_s: f64,
    pub delivered_bytes_per_s: f64,
    /// (payload length, messages/s the delivered datagrams carry).
    pub messages_per_s: Vec<(usize, f64)>,
    pub forwarder_cpu_percent: f64,
    /// Sends that failed (for example ENOBUFS), sender and forwarder together.
    pub send_errors: u64,
}

impl UdpCeilingReport {
    /// Messages/s at `payload_length`, computed with the same packing rule.
    pub fn messages_per_s_at(&self, payload_length: usize) -> f64 {
        self.delivered_datagrams_per_s * crate::messages_per_datagram(payload_length) as f64
    }

    pub fn to_json(&self) -> Value {
        let messages: serde_json::Map<String, Value> =
            self.messages_per_s.iter().map(|(size, rate)| (size.to_string(), json!(rate))).collect();
        json!({
            "scenario": "udp_ceiling",
            "duration_s": self.options.duration.as_secs_f64(),
            "datagram_length": self.datagram_length,
            "sent_datagrams_per_s": self.sent_datagrams_per_s,
            "forwarded_datagrams_per_s": self.forwarded_datagrams_per_s,
            "delivered_datagrams_per_s": self.delivered_datagrams_per_s,
            "delivered_bytes_per_s": self.delivered_bytes_per_s,
            "messages_per_s": messages,
            "forwarder_cpu_percent": self.forwarder_cpu_percent,
            "send_errors": self.send_errors,
        })
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "udp ceiling: GSO sender -> GRO/GSO forwarder -> GRO sink, {} B datagrams, {:.0} s\n",
            self.datagram_length,
            self.options.duration.as_secs_f64()
        );
        out += &format!("{:<34}{:>16.0}\n", "sent datagrams/s", self.sent_datagrams_per_s);
        out += &format!("{:<34}{:>16.0}\n", "forwarded datagrams/s", self.forwarded_datagrams_per_s);
        out += &format!("{:<34}{:>16.0}\n", "delivered datagrams/s", self.delivered_datagrams_per_s);
        out += &format!("{:<34}{:>16.2}\n", "delivered GB/s", self.delivered_bytes_per_s / 1e9);
        for (size, rate) in &self.messages_per_s {
            let label = format!("messages/s at {size} B ({}/datagram)", crate::messages_per_datagram(*size));
            out += &format!("{label:<34}{rate:>16.0}\n");
        }
        out += &format!("{:<34}{:>16.1}\n", "forwarder CPU %", self.forwarder_cpu_percent);
        out += &format!("{:<34}{:>16}\n", "send errors", self.send_errors);
        out
    }

    pub fn print_table(&self) {
        print!("{}", self.table());
    }
}

const BUFFER_BYTES: usize = 65_536;
const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;
const WARMUP: Duration = Duration::from_millis(300);

fn set_int_option(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int, what: &str) -> Result<(), BenchError> {
    runnel_client::sockopt::set_int(socket, level, name, value).map_err(|error| BenchError::new(format!("{what}: {error}")))
}

/// A loopback socket with big buffers (forced when root, else as large as allowed).
fn bench_socket() -> Result<UdpSocket, BenchError> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| BenchError::new(format!("cannot bind a UDP socket: {e}")))?;
    for (forced, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if set_int_option(&socket, libc::SOL_SOCKET, forced, SOCKET_BUFFER_BYTES, "").is_err() {
            set_int_option(&socket, libc::SOL_SOCKET, plain, SOCKET_BUFFER_BYTES, "cannot size a socket buffer")?;
        }
    }
    socket.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| BenchError::new(e.to_string()))?;
    Ok(socket)
}

/// Receives one (possibly GRO-coalesced) buffer. Returns its length and segment size;
/// `Ok(None)` on the read timeout.
pub fn recv_gro(socket: &UdpSocket, buffer: &mut [u8]) -> Result<Option<(usize, usize)>, BenchError> {
    let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: header points at one iovec over `buffer` and at `control`, both live and
    // writable for the duration of the call, with their true lengths.
    let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, 0) };
    if received < 0 {
        let error = std::io::Error::last_os_error();
        return match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted => Ok(None),
            _ => Err(BenchError::new(format!("recvmsg: {error}"))),
        };
    }
    let length = received as usize;
    let mut segment = length;
    // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, bounded by
    // msg_controllen; CMSG_DATA of a UDP_GRO cmsg holds one c_int (read unaligned).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                segment = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()).max(1) as usize;
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    Ok(Some((length, segment)))
}

/// Sends `bytes` on a connected socket as segments of `segment` bytes (one GSO send).
pub fn send_gso(socket: &UdpSocket, bytes: &[u8], segment: usize) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if bytes.len() > segment {
        header.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation; 2 bytes fit in the 32-byte buffer.
        header.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        // SAFETY: the control buffer is 32 bytes, 8-aligned, larger than CMSG_SPACE(2) = 24;
        // CMSG_FIRSTHDR returns its start and CMSG_DATA a pointer inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        }
    }
    // SAFETY: header points at live buffers with their true lengths; the kernel only reads.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &header, 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

struct Counters {
    sent: AtomicU64,
    forwarded: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    send_errors: AtomicU64,
    forwarder_tid: AtomicU32,
    stop: AtomicBool,
}

/// Runs the ceiling measurement: `duration` after a short warm-up.
pub fn udp_ceiling(options: UdpCeilingOptions) -> Result<UdpCeilingReport, BenchError> {
    let datagram_length = DATAGRAM_LENGTH_DEFAULT;
    let sender = bench_socket()?;
    // Two forwarder sockets: a connected UDP socket only accepts datagrams from its peer.
    let forwarder = bench_socket()?;
    let forwarder_out = bench_socket()?;
    let sink = bench_socket()?;
    for socket in [&forwarder, &sink] {
        set_int_option(socket, libc::SOL_UDP, libc::UDP_GRO, 1, "cannot enable UDP_GRO (needs Linux >= 5.0)")?;
    }
    let address = |socket: &UdpSocket| socket.local_addr().map_err(|e| BenchError::new(e.to_string()));
    sender.connect(address(&forwarder)?).map_err(|e| BenchError::new(e.to_string()))?;
    forwarder_out.connect(address(&sink)?).map_err(|e| BenchError::new(e.to_string()))?;
    let counters = Arc::new(Counters {
        sent: AtomicU64::new(0),
        forwarded: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        delivered_bytes: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
        forwarder_tid: AtomicU32::new(0),
        stop: AtomicBool::new(false),
    });

    let spawn = |name: &str, body: Box<dyn FnOnce() -> Result<(), BenchError> + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map_err(|e| BenchError::new(format!("cannot start the {name} thread: {e}")))
    };
    let mut threads = Vec::new();
    let c = Arc::clone(&counters);
    threads.push(spawn(
        "ceiling-sink",
        Box::new(move || {
            let mut buffer = vec![0u8; BUFFER_BYTES];
            while !c.stop.load(Ordering::Relaxed) {
                if let Some((length, segment)) = recv_gro(&sink, &mut buffer)? {
                    c.delivered.fetch_add(length.div_ceil(segment) as u64, Ordering::Relaxed);
                    c.delivered_bytes.fetch_add(length as u64, Ordering::Relaxed);
                }
            }
            Ok(())
        }),
    )?);
    let c = Arc::clone(&counters);
    threads.push(spawn(
        "ceiling-forwarder",
        Box::new(move || {
            // SAFETY: gettid has no preconditions.
            c.forwarder_tid.store(unsafe { libc::gettid() } as u32, Ordering::Relaxed);
            let mut buffer = vec![0u8; BUFFER_BYTES];
            while !c.stop.load(Ordering::Relaxed) {
                if let Some((length, segment)) = recv_gro(&forwarder, &mut buffer)? {
                    match send_gso(&forwarder_out, &buffer[..length], segment) {
                        Ok(()) => c.forwarded.fetch_add(length.div_ceil(segment) as u64, Ordering::Relaxed),
                        Err(_) => c.send_errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
            Ok(())
        }),
    )?);
    let c = Arc::clone(&counters);
    threads.push(spawn(
        "ceiling-sender",
        Box::new(move || {
            let batch = vec![0x5au8; datagram_length * GSO_SEGMENTS_MAX];
            while !c.stop.load(Ordering::Relaxed) {
                match send_gso(&sender, &batch, datagram_length) {
                    Ok(()) => c.sent.fetch_add(GSO_SEGMENTS_MAX as u64, Ordering::Relaxed),
                    Err(_) => c.send_errors.fetch_add(1, Ordering::Relaxed),
                };
            }
            Ok(())
        }),
    )?);

    let measured = (|| -> Result<_, BenchError> {
        std::thread::sleep(WARMUP);
        let tid = counters.forwarder_tid.load(Ordering::Relaxed);
        let snapshot = |c: &Counters| {
            [&c.sent, &c.forwarded, &c.delivered, &c.delivered_bytes, &c.send_errors].map(|counter| counter.load(Ordering::Relaxed))
        };
        let cpu_before = ProcessSample::read_own_thread(tid)?;
        let before = snapshot(&counters);
        let start = Instant::now();
        std::thread::sleep(options.duration);
        let after = snapshot(&counters);
        let window_s = start.elapsed().as_secs_f64();
        let cpu_after = ProcessSample::read_own_thread(tid)?;
        let rate = |i: usize| (after[i] - before[i]) as f64 / window_s;
        Ok((rate(0), rate(1), rate(2), rate(3), after[4] - before[4], cpu_after.cpu_percent_since(&cpu_before)))
    })();
    counters.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().map_err(|_| BenchError::new("a UDP ceiling thread panicked"))??;
    }
    let (sent, forwarded, delivered, delivered_bytes, send_errors, forwarder_cpu_percent) = measured?;
    let mut report = UdpCeilingReport {
        datagram_length,
        sent_datagrams_per_s: sent,
        forwarded_datagrams_per_s: forwarded,
        delivered_datagrams_per_s: delivered,
        delivered_bytes_per_s: delivered_bytes,
        messages_per_s: Vec::new(),
        forwarder_cpu_percent,
        send_errors,
        options,
    };
    report.messages_per_s = report.options.payload_lengths.iter().map(|&size| (size, report.messages_per_s_at(size))).collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the forwarder really moves GSO/GRO traffic on this kernel: in a short run the
    // sink receives datagrams at a rate well above what one-datagram-per-send could reach
    // (~390k/s here), the GRO segment size is the sender's, and counts are consistent.
    #[test]
    fn ceiling_moves_coalesced_datagrams() {
        let report = udp_ceiling(UdpCeilingOptions { duration: Duration::from_millis(500), payload_lengths: vec![64] }).unwrap();
        println!("{}", report.table());
        assert!(report.delivered_datagrams_per_s > 100_000.0, "only {} datagrams/s", report.delivered_datagrams_per_s);
        assert!(report.delivered_datagrams_per_s <= report.sent_datagrams_per_s * 1.05);
        let bytes_per_datagram = report.delivered_bytes_per_s / report.delivered_datagrams_per_s;
        assert!((bytes_per_datagram - 1472.0).abs() < 1.0, "{bytes_per_datagram} bytes per datagram");
        assert_eq!(report.messages_per_s[0].1, report.delivered_datagrams_per_s * crate::messages_per_datagram(64) as f64);
    }
}
