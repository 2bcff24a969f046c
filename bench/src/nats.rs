//! The NATS baseline: a `nats-server` child process and a minimal, efficient client for it.
//!
//! The client speaks the NATS text protocol over a plain blocking `std::net::TcpStream` (no
//! async runtime, no `nats` crate), so the comparison measures the server, not a client
//! library's overhead:
//!
//! - connect: read `INFO`, send `CONNECT {"verbose":false,"pedantic":false}` and `PING`, wait
//!   for `PONG` (with verbose off the server sends no `+OK` per operation);
//! - publish: `PUB <subject> <n>\r\n<payload>\r\n` appended to a 256 KiB `BufWriter` (the
//!   header is formatted once per payload size), written out at batch boundaries; a reader
//!   thread on the publisher connection answers the server's `PING`s (via the next flush) and
//!   reports `-ERR`;
//! - subscribe: `SUB <subject> 1`, then `PING`/`PONG` so the subscription is registered
//!   before publishing starts; `MSG` lines are parsed in place from a 1 MiB buffer (no
//!   allocation per message), `PING` is answered with `PONG`, `-ERR` ends the subscriber
//!   with the server's text (for example `Slow Consumer`).
//!
//! [`NatsServer`] starts `nats-server -a 127.0.0.1 -p PORT` on a free loopback port, waits
//! until it accepts, and kills it when dropped (and, via the parent-death signal, if this
//! process aborts). Limits: no TLS, no auth, no headers (`HPUB`), one subject.

use crate::process::{self, ChildGuard};
use crate::workload::{Publisher, Subscriber, System};
use crate::BenchError;
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The subject every benchmark message is published on.
pub const SUBJECT: &str = "runnel.bench";
/// Longest protocol line the reader accepts (INFO lines are the longest, ~1 KiB).
const LINE_LENGTH_MAX: usize = 16 * 1024;
/// Bytes the publisher buffers between flushes before writing on its own.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Bytes of a subscriber's read buffer (one `read` call fills at most this).
const READ_BUFFER_BYTES: usize = 1 << 20;

/// A running `nats-server`, killed on drop.
pub struct NatsServer {
    child: ChildGuard,
    port: u16,
    log: PathBuf,
    payload_length_max: usize,
}

impl NatsServer {
    /// Starts `nats-server` (found on PATH or in /usr/sbin unless `binary` is given) on a
    /// free loopback port and waits until it accepts connections.
    pub fn start(binary: Option<&Path>, payload_length_max: usize, work_dir: &Path) -> Result<NatsServer, BenchError> {
        let binary = process::find_executable("nats-server", binary)?;
        let port = process::free_tcp_port()?;
        let log = work_dir.join("nats-server.log");
        let mut command = Command::new(&binary);
        command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        let mut child = ChildGuard::spawn("nats-server", command, &log)?;
        if let Err(error) = process::wait_for_tcp(port, Duration::from_secs(5)) {
            child.check_running(&log)?;
            return Err(error);
        }
        Ok(NatsServer { child, port, log, payload_length_max })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl System for NatsServer {
    type Publisher = NatsPublisher;
    type Subscriber = NatsSubscriber;

    fn server_pids(&self) -> Vec<u32> {
        vec![self.child.pid()]
    }

    fn check_running(&mut self) -> Result<(), BenchError> {
        self.child.check_running(&self.log)
    }

    fn publisher(&mut self) -> Result<NatsPublisher, BenchError> {
        NatsPublisher::connect(self.port)
    }

    fn subscriber(&mut self, _index: usize) -> Result<NatsSubscriber, BenchError> {
        NatsSubscriber::connect(self.port, self.payload_length_max)
    }
}

/// What one pass over the read buffer found besides messages.
#[derive(Debug, Default, PartialEq, Eq)]
struct ParseOutcome {
    pings: u32,
    pongs: u32,
}

/// Parses server-to-client protocol operations in place from a fixed buffer.
struct ProtocolReader {
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ProtocolReader {
    fn new(capacity: usize) -> Self {
        Self { buffer: vec![0u8; capacity].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Moves unparsed bytes to the front and reads once more from `stream`. Returns the
    /// number of bytes read; `Ok(0)` means the server closed the connection.
    fn read_from(&mut self, stream: &mut TcpStream) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = stream.read(&mut self.buffer[self.end..])?;
        self.end += read;
        Ok(read)
    }

    /// Consumes every complete operation in the buffer, calling `on_message` for each `MSG`
    /// payload. A partial operation stays for the next read. Never panics on bad input.
    fn parse(&mut self, on_message: &mut dyn FnMut(&[u8])) -> Result<ParseOutcome, BenchError> {
        let mut outcome = ParseOutcome::default();
        loop {
            let data = &self.buffer[self.start..self.end];
            let Some(newline) = data.iter().position(|&b| b == b'\n') else {
                if data.len() > LINE_LENGTH_MAX {
                    return Err(BenchError::new(format!("NATS server sent a line longer than {LINE_LENGTH_MAX} bytes")));
                }
                return Ok(outcome);
            };
            let line = data[..newline].strip_suffix(b"\r").unwrap_or(&data[..newline]);
            let after_line = newline + 1;
            if line.starts_with(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let size =
                    line.rsplit(|&b| b == b' ').next().and_then(parse_decimal).ok_or_else(|| {
                        BenchError::new(format!("malformed MSG line from NATS server: {:?}", String::from_utf8_lossy(line)))
                    })?;
                let total = after_line + size + 2;
                if total > data.len() {
                    if total > self.buffer.len() {
                        return Err(BenchError::new(format!(
                            "NATS message of {size} bytes exceeds the {} byte read buffer",
                            self.buffer.len()
                        )));
                    }
                    return Ok(outcome);
                }
                on_message(&data[after_line..after_line + size]);
                self.start += total;
                continue;
            }
            if line.starts_with(b"PING") {
                outcome.pings += 1;
            } else if line.starts_with(b"PONG") {
                outcome.pongs += 1;
            } else if line.starts_with(b"-ERR") {
                return Err(BenchError::new(format!("NATS server error: {}", String::from_utf8_lossy(&line[4..]).trim())));
            } else if !(line.starts_with(b"+OK") || line.starts_with(b"INFO") || line.is_empty()) {
                return Err(BenchError::new(format!("unexpected line from NATS server: {:?}", String::from_utf8_lossy(line))));
            }
            self.start += after_line;
        }
    }
}

/// Parses an ASCII decimal number below 2^40; `None` for anything else.
fn parse_decimal(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 12 {
        return None;
    }
    text.iter().try_fold(0usize, |value, &digit| digit.is_ascii_digit().then(|| value * 10 + (digit - b'0') as usize))
}

/// Opens a connection: INFO, CONNECT, PING → PONG (the handshake is complete when the PONG
/// arrives). Returns the stream and a reader holding whatever followed the PONG.
fn handshake(port: u16, extra: &[u8], read_buffer_bytes: usize) -> Result<(TcpStream, ProtocolReader), BenchError> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| BenchError::new(format!("cannot connect to nats-server on 127.0.0.1:{port}: {e}")))?;
    stream.set_nodelay(true).map_err(|e| BenchError::new(e.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| BenchError::new(e.to_string()))?;
    let mut request = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n".to_vec();
    request.extend_from_slice(extra);
    request.extend_from_slice(b"PING\r\n");
    stream.write_all(&request).map_err(|e| BenchError::new(format!("cannot write to nats-server: {e}")))?;
    let mut reader = ProtocolReader::new(read_buffer_bytes);
    loop {
        let outcome = reader.parse(&mut |_| {})?;
        if outcome.pongs > 0 {
            return Ok((stream, reader));
        }
        match reader.read_from(&mut stream) {
            Ok(0) => return Err(BenchError::new("nats-server closed the connection during the handshake")),
            Ok(_) => {}
            Err(e) => return Err(BenchError::new(format!("no PONG from nats-server during the handshake: {e}"))),
        }
    }
}

/// One subscriber connection.
pub struct NatsSubscriber {
    stream: TcpStream,
    reader: ProtocolReader,
    read_timeout: Option<Duration>,
}

impl NatsSubscriber {
    pub fn connect(port: u16, payload_length_max: usize) -> Result<NatsSubscriber, BenchError> {
        let sub = format!("SUB {SUBJECT} 1\r\n");
        let buffer_bytes = READ_BUFFER_BYTES.max(2 * payload_length_max + 1024);
        let (stream, reader) = handshake(port, sub.as_bytes(), buffer_bytes)?;
        Ok(NatsSubscriber { stream, reader, read_timeout: None })
    }
}

impl Subscriber for NatsSubscriber {
    fn receive(&mut self, wait: Duration, on_message: &mut dyn FnMut(&[u8])) -> Result<(), BenchError> {
        if self.read_timeout != Some(wait) {
            self.stream.set_read_timeout(Some(wait)).map_err(|e| BenchError::new(e.to_string()))?;
            self.read_timeout = Some(wait);
        }
        match self.reader.read_from(&mut self.stream) {
            Ok(0) => return Err(BenchError::new("nats-server closed the connection")),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return Ok(()),
            Err(e) => return Err(BenchError::new(format!("reading from nats-server: {e}"))),
        }
        let outcome = self.reader.parse(on_message)?;
        for _ in 0..outcome.pings {
            self.stream.write_all(b"PONG\r\n").map_err(|e| BenchError::new(format!("writing to nats-server: {e}")))?;
        }
        Ok(())
    }
}

/// State the publisher's reader thread shares with the publisher.
struct PublisherInbox {
    pong_due: AtomicBool,
    stop: AtomicBool,
    error: Mutex<Option<String>>,
}

/// The publisher connection.
pub struct NatsPublisher {
    writer: BufWriter<TcpStream>,
    header: Vec<u8>,
    header_length: usize,
    inbox: Arc<PublisherInbox>,
    reader_thread: Option<std::thread::JoinHandle<()>>,
}

impl NatsPublisher {
    pub fn connect(port: u16) -> Result<NatsPublisher, BenchError> {
        let (stream, mut reader) = handshake(port, b"", 64 * 1024)?;
        let inbox = Arc::new(PublisherInbox { pong_due: AtomicBool::new(false), stop: AtomicBool::new(false), error: Mutex::new(None) });
        let mut read_stream = stream.try_clone().map_err(|e| BenchError::new(e.to_string()))?;
        read_stream.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| BenchError::new(e.to_string()))?;
        let thread_inbox = Arc::clone(&inbox);
        let reader_thread = std::thread::Builder::new()
            .name("nats-publisher-reader".into())
            .spawn(move || {
                let inbox = thread_inbox;
                while !inbox.stop.load(Ordering::Relaxed) {
                    let error = match reader.read_from(&mut read_stream) {
                        Ok(0) => Some("nats-server closed the publisher connection".to_string()),
                        Ok(_) => match reader.parse(&mut |_| {}) {
                            Ok(outcome) => {
                                if outcome.pings > 0 {
                                    inbox.pong_due.store(true, Ordering::Relaxed);
                                }
                                None
                            }
                            Err(e) => Some(e.to_string()),
                        },
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
                        Err(e) => Some(format!("reading from nats-server: {e}")),
                    };
                    if let Some(error) = error {
                        if !inbox.stop.load(Ordering::Relaxed) {
                            *inbox.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                        }
                        return;
                    }
                }
            })
            .map_err(|e| BenchError::new(format!("cannot start the publisher's reader thread: {e}")))?;
        Ok(NatsPublisher {
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream),
            header: Vec::with_capacity(64),
            header_length: usize::MAX,
            inbox,
            reader_thread: Some(reader_thread),
        })
    }
}

impl Publisher for NatsPublisher {
    #[inline]
    fn publish(&mut self, payload: &[u8]) -> Result<(), BenchError> {
        if payload.len() != self.header_length {
            self.header.clear();
            self.header.extend_from_slice(format!("PUB {SUBJECT} {}\r\n", payload.len()).as_bytes());
            self.header_length = payload.len();
        }
        let write = |writer: &mut BufWriter<TcpStream>| -> std::io::Result<()> {
            writer.write_all(&self.header)?;
            writer.write_all(payload)?;
            writer.write_all(b"\r\n")
        };
        write(&mut self.writer).map_err(|e| BenchError::new(format!("writing to nats-server: {e}")))
    }

    fn flush(&mut self) -> Result<(), BenchError> {
        if self.inbox.pong_due.swap(false, Ordering::Relaxed) {
            self.writer.write_all(b"PONG\r\n").map_err(|e| BenchError::new(format!("writing to nats-server: {e}")))?;
        }
        if let Some(error) = self.inbox.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(BenchError::new(error));
        }
        self.writer.flush().map_err(|e| BenchError::new(format!("writing to nats-server: {e}")))
    }
}

impl Drop for NatsPublisher {
    fn drop(&mut self) {
        self.inbox.stop.store(true, Ordering::Relaxed);
        // Wakes the reader thread at once; errors mean the socket is already closed.
        let _ = self.writer.get_ref().shutdown(Shutdown::Both);
        if let Some(thread) = self.reader_thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> (Vec<Vec<u8>>, Result<ParseOutcome, BenchError>) {
        let mut reader = ProtocolReader::new(256);
        reader.buffer[..input.len()].copy_from_slice(input);
        reader.end = input.len();
        let mut messages = Vec::new();
        let outcome = reader.parse(&mut |payload| messages.push(payload.to_vec()));
        (messages, outcome)
    }

    // Goal: the reader splits MSG (with and without reply subject), PING, +OK and INFO, keeps a
    // partial message for the next read, and turns -ERR and garbage into errors, not panics.
    #[test]
    fn parses_server_operations() {
        let (messages, outcome) = parse_all(b"INFO {}\r\nMSG a 1 3\r\nabc\r\nPING\r\n+OK\r\nMSG a 1 r 2\r\nxy\r\nMSG a 1 5\r\nab");
        assert_eq!(messages, vec![b"abc".to_vec(), b"xy".to_vec()]);
        assert_eq!(outcome.unwrap(), ParseOutcome { pings: 1, pongs: 0 });
        let (_, outcome) = parse_all(b"-ERR 'Slow Consumer'\r\n");
        assert!(outcome.unwrap_err().to_string().contains("Slow Consumer"));
        for garbage in [&b"MSG a 1 x\r\n"[..], b"MSG\r\n", b"HELLO\r\n", b"MSG a 1 99999999999999999\r\n", b"MSG a 1 1000\r\n"] {
            assert!(parse_all(garbage).1.is_err(), "{:?} should be rejected", String::from_utf8_lossy(garbage));
        }
    }

    // Goal: against a real nats-server, a subscriber receives exactly what the publisher sent,
    // in order, and the server is gone once the guard drops.
    #[test]
    fn round_trip_through_nats_server() {
        let dir = std::env::temp_dir().join(format!("runnel-bench-nats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = NatsServer::start(None, 1024, &dir).expect("nats-server must be installed (apt-get install -y nats-server)");
        let pid = server.server_pids()[0];
        let mut subscriber = server.subscriber(0).unwrap();
        let mut publisher = server.publisher().unwrap();
        for i in 0..1000u32 {
            publisher.publish(&i.to_le_bytes()).unwrap();
        }
        publisher.flush().unwrap();
        let mut received = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while received.len() < 1000 && std::time::Instant::now() < deadline {
            subscriber.receive(Duration::from_millis(50), &mut |p| received.push(u32::from_le_bytes(p.try_into().unwrap()))).unwrap();
        }
        assert_eq!(received, (0..1000).collect::<Vec<_>>());
        drop(publisher);
        drop(subscriber);
        drop(server);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "nats-server {pid} still running");
        let _ = std::fs::remove_dir_all(dir);
    }
}
