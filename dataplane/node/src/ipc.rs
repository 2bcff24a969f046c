//! The dataplane's IPC: how the control process drives a node that runs in another process.
//!
//! A unix stream socket, one control connection at a time. Each message is a frame: a `u32`
//! little-endian length (1..=[`FRAME_LENGTH_MAX`]) and then an rkyv archive of a [`Request`]
//! (control → dataplane) or a [`Reply`] (dataplane → control), validated with bytecheck
//! before anything is read from it ([`decode_request`], [`decode_reply`]; both are fuzzed).
//!
//! ```text
//! control                               dataplane (`runnel node --ipc PATH`)
//!   Hello { version }            ─────▶
//!                                ◀─────   Hello { version, listen, shards, links }
//!   Command { id, command }      ─────▶   NodeHandle::submit
//!                                ◀─────   Response { id, error }      (exactly one per id)
//!                                ◀─────   Event (signature failure, join, slow consumer)
//!   Status { id }                ─────▶
//!                                ◀─────   Status { id, counters }
//! ```
//!
//! # How it works
//! [`serve`] accepts a connection, answers its `Hello`, and then runs two loops:
//! - a reader that decodes requests and submits commands, mapping the control's ids to the
//!   node's [`CommandId`]s;
//! - a writer that forwards the node's responses under the control's ids, the shards'
//!   events, and status replies.
//!
//! Commands keep the node's order and its one-response rule ([`crate::command`]).
//!
//! **If control dies, the dataplane keeps forwarding** on its last state: links, joins and
//! permissions live in the node, not in the connection. The next control process connects
//! and re-syncs by replaying the state it wants. An `AddLink` identical to an existing link
//! and a `Join` of a joined stream part are `Ok`, so a replay changes nothing that is already
//! right. Responses to commands of a connection that has gone are dropped and counted.
//!
//! # Limits
//! - Bounded both ways:
//!   - frames ≤ [`FRAME_LENGTH_MAX`];
//!   - at most [`REPLIES_QUEUED_MAX`] replies wait for the writer. A control process that
//!     stops reading first fills that queue, then its socket; the reader then stops taking
//!     commands, and after [`WRITE_TIMEOUT`] the connection is closed;
//!   - the node's own queues bound the rest.
//! - A frame that does not decode closes the connection with a `ProtocolError` reply. The
//!   node is unaffected.
//! - The socket file is created mode 0600 (in a directory the caller keeps private): only
//!   the node's user may drive it.
//! - Events are those the shards raise today: signature failures, joins, slow consumers.
//!   Per-link statistics come from `Status` (node-wide counter totals), not from events.

use crate::command::{Command, CommandCounter, CommandError, CommandId};
use crate::node::{NodeError, NodeHandle};
use crate::shard::{RuntimeCounter, ShardEvent};
use crossbeam_channel::{bounded, select, Receiver, Sender};
use rkyv::rancor::Error as RkyvError;
use runnel_core::counters::Counters;
use runnel_core::filter::{FilterUpdate, Verdict};
use runnel_core::link::{LinkConfig, LinkRole};
use runnel_core::relay::Event;
use runnel_proto::linktag::LinkKey;
use runnel_proto::stream::StreamPartKey;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The protocol version both sides must speak (2: `WireEvent::NeighborSilent`; 3: the
/// commanded links in `Reply::Hello`; 4: client scopes and per-link traffic in `Status`).
pub const IPC_VERSION: u32 = 4;
/// Largest frame (archive bytes after the length prefix).
pub const FRAME_LENGTH_MAX: usize = 64 * 1024;
/// Replies (responses, events, status) waiting for the writer.
pub const REPLIES_QUEUED_MAX: usize = 1024;
/// A write to the control socket that takes longer than this closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the server looks at its stop flag while idle.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Control → dataplane.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First message of a connection.
    Hello { version: u32 },
    /// A command; `id` is the control's own, echoed in the response.
    Command { id: u64, command: WireCommand },
    /// Node-wide counter totals.
    Status { id: u64 },
}

/// A [`Command`] as it crosses the socket.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireCommand {
    AddLink {
        link_id: u32,
        /// The far end's id for the link, when it differs (links found by peering).
        peer_link_id: Option<u32>,
        key: [u8; 32],
        /// "neighbor" or "client".
        neighbor: bool,
        /// `ip:port` of a neighbor's shard 0; none for a client.
        peer: Option<String>,
        peer_shards: u16,
        rate_datagrams_per_s: u64,
        burst_datagrams: u64,
    },
    RemoveLink {
        link_id: u32,
    },
    Join {
        part: [u8; 32],
    },
    Leave {
        part: [u8; 32],
    },
    QuarantineLink {
        link_id: u32,
        until_ns: u64,
    },
    ReleaseLink {
        link_id: u32,
    },
    QuarantinePublisher {
        publisher: [u8; 20],
        until_ns: u64,
    },
    ReleasePublisher {
        publisher: [u8; 20],
    },
    SetRestricted {
        part: [u8; 32],
        restricted: bool,
    },
    Permit {
        part: [u8; 32],
        publisher: [u8; 20],
        until_ns: u64,
    },
    Revoke {
        part: [u8; 32],
        publisher: [u8; 20],
    },
    ScopeClient {
        link_id: u32,
        part: [u8; 32],
        publish: bool,
        subscribe: bool,
    },
    UnscopeClient {
        link_id: u32,
    },
}

/// One link's [`runnel_core::relay::LinkTraffic`] as it crosses the socket.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLinkTraffic {
    pub link_id: u32,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
}

/// Dataplane → control.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Hello {
        version: u32,
        listen: Vec<String>,
        shards: u16,
        /// Ids of the links earlier commands added ([`NodeHandle::commanded_links`]): a
        /// control process that does not know them inherits them from its predecessor.
        links: Vec<u32>,
    },
    /// The one answer to `Command { id }`: `error` is none on success.
    Response {
        id: u64,
        error: Option<WireError>,
    },
    Event(WireEvent),
    Status {
        id: u64,
        counters: Vec<(String, u64)>,
        /// Each link's traffic since it was added, summed over the shards (settlement's
        /// traffic reports are deltas of these).
        links: Vec<WireLinkTraffic>,
    },
    /// The request could not be decoded or was out of place; the connection closes.
    ProtocolError {
        message: String,
    },
}

/// Why a command failed: a stable `kind` (the [`CommandError`] variant in snake case, or
/// `invalid_command`, `queue_full`, `stopped`) and the message that says what to fix.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub kind: String,
    pub message: String,
}

/// A shard's [`Event`] as it crosses the socket.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum WireEvent {
    SignatureFailure {
        shard: u16,
        link_id: u32,
        publisher: [u8; 20],
        publisher_proven: bool,
    },
    Joined {
        shard: u16,
        part: [u8; 32],
    },
    SlowConsumer {
        shard: u16,
        link_id: u32,
    },
    /// A neighbor missed its Subscribe heartbeats in a stream part (`Event::NeighborSilent`).
    NeighborSilent {
        shard: u16,
        link_id: u32,
        part: [u8; 32],
    },
}

/// What is wrong with bytes on the IPC socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpcError {
    /// The length prefix is 0 or above [`FRAME_LENGTH_MAX`].
    FrameLength(usize),
    /// The archive does not validate.
    Malformed(String),
    /// A command whose fields do not make a valid command (e.g. an unparsable address).
    InvalidCommand(String),
    /// The peer speaks another protocol version, or did not start with `Hello`.
    Handshake(String),
    Io(String),
}

impl std::fmt::Display for IpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpcError::FrameLength(length) => write!(f, "IPC frame of {length} bytes: frames are 1..={FRAME_LENGTH_MAX} bytes"),
            IpcError::Malformed(reason) => write!(f, "IPC frame is not a valid message: {reason}"),
            IpcError::InvalidCommand(reason) => write!(f, "IPC command is invalid: {reason}"),
            IpcError::Handshake(reason) => write!(f, "IPC handshake failed: {reason}"),
            IpcError::Io(reason) => write!(f, "IPC socket: {reason}"),
        }
    }
}

impl std::error::Error for IpcError {}

impl From<io::Error> for IpcError {
    fn from(error: io::Error) -> Self {
        IpcError::Io(error.to_string())
    }
}

/// Decodes and validates one request archive (the bytes after the length prefix).
pub fn decode_request(bytes: &[u8]) -> Result<Request, IpcError> {
    rkyv::from_bytes::<Request, RkyvError>(bytes).map_err(|e| IpcError::Malformed(e.to_string()))
}

/// Decodes and validates one reply archive (the bytes after the length prefix).
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, IpcError> {
    rkyv::from_bytes::<Reply, RkyvError>(bytes).map_err(|e| IpcError::Malformed(e.to_string()))
}

/// Writes one message as a frame.
pub fn write_frame<T>(out: &mut impl Write, message: &T) -> Result<(), IpcError>
where
    T: for<'a> rkyv::Serialize<rkyv::api::high::HighSerializer<rkyv::util::AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, RkyvError>>,
{
    let bytes = rkyv::to_bytes::<RkyvError>(message).map_err(|e| IpcError::Malformed(e.to_string()))?;
    if bytes.is_empty() || bytes.len() > FRAME_LENGTH_MAX {
        return Err(IpcError::FrameLength(bytes.len()));
    }
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    frame.extend_from_slice(&bytes);
    out.write_all(&frame)?;
    Ok(())
}

/// Reads one frame's archive bytes into `buffer`; `Ok(false)` at a clean end of stream.
pub fn read_frame(input: &mut impl Read, buffer: &mut Vec<u8>) -> Result<bool, IpcError> {
    let mut prefix = [0u8; 4];
    match input.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_le_bytes(prefix) as usize;
    if length == 0 || length > FRAME_LENGTH_MAX {
        return Err(IpcError::FrameLength(length));
    }
    buffer.resize(length, 0);
    input.read_exact(buffer)?;
    Ok(true)
}

impl WireCommand {
    /// The node command, checked: addresses parse, roles and peers agree.
    pub fn to_command(&self) -> Result<Command, IpcError> {
        Ok(match self {
            WireCommand::AddLink { link_id, peer_link_id, key, neighbor, peer, peer_shards, rate_datagrams_per_s, burst_datagrams } => {
                let peer = match peer {
                    Some(text) => Some(
                        text.parse::<SocketAddr>()
                            .map_err(|_| IpcError::InvalidCommand(format!("AddLink {link_id}: peer {text:?} is not ip:port")))?,
                    ),
                    None => None,
                };
                Command::AddLink(LinkConfig {
                    id: *link_id,
                    peer_link_id: *peer_link_id,
                    key: LinkKey(*key),
                    role: if *neighbor { LinkRole::Neighbor } else { LinkRole::Client },
                    peer,
                    peer_shards: *peer_shards,
                    rate_datagrams_per_s: *rate_datagrams_per_s,
                    burst_datagrams: *burst_datagrams,
                })
            }
            WireCommand::RemoveLink { link_id } => Command::RemoveLink { link_id: *link_id },
            WireCommand::Join { part } => Command::Join { part: StreamPartKey(*part) },
            WireCommand::Leave { part } => Command::Leave { part: StreamPartKey(*part) },
            WireCommand::QuarantineLink { link_id, until_ns } => {
                Command::Policy(FilterUpdate::QuarantineLink { link_id: *link_id, until_ns: *until_ns })
            }
            WireCommand::ReleaseLink { link_id } => Command::Policy(FilterUpdate::ReleaseLink { link_id: *link_id }),
            WireCommand::QuarantinePublisher { publisher, until_ns } => {
                Command::Policy(FilterUpdate::QuarantinePublisher { publisher: *publisher, until_ns: *until_ns })
            }
            WireCommand::ReleasePublisher { publisher } => Command::Policy(FilterUpdate::ReleasePublisher { publisher: *publisher }),
            WireCommand::SetRestricted { part, restricted } => {
                Command::Policy(FilterUpdate::SetRestricted { part: StreamPartKey(*part), restricted: *restricted })
            }
            WireCommand::Permit { part, publisher, until_ns } => {
                Command::Policy(FilterUpdate::Permit { part: StreamPartKey(*part), publisher: *publisher, until_ns: *until_ns })
            }
            WireCommand::Revoke { part, publisher } => {
                Command::Policy(FilterUpdate::Revoke { part: StreamPartKey(*part), publisher: *publisher })
            }
            WireCommand::ScopeClient { link_id, part, publish, subscribe } => Command::Policy(FilterUpdate::ScopeClient {
                link_id: *link_id,
                part: StreamPartKey(*part),
                publish: *publish,
                subscribe: *subscribe,
            }),
            WireCommand::UnscopeClient { link_id } => Command::Policy(FilterUpdate::UnscopeClient { link_id: *link_id }),
        })
    }

    /// The wire form of a node command.
    pub fn from_command(command: &Command) -> WireCommand {
        match command {
            Command::AddLink(link) => WireCommand::AddLink {
                link_id: link.id,
                peer_link_id: link.peer_link_id,
                key: link.key.0,
                neighbor: link.role == LinkRole::Neighbor,
                peer: link.peer.map(|address| address.to_string()),
                peer_shards: link.peer_shards,
                rate_datagrams_per_s: link.rate_datagrams_per_s,
                burst_datagrams: link.burst_datagrams,
            },
            Command::RemoveLink { link_id } => WireCommand::RemoveLink { link_id: *link_id },
            Command::Join { part } => WireCommand::Join { part: part.0 },
            Command::Leave { part } => WireCommand::Leave { part: part.0 },
            Command::Policy(update) => match *update {
                FilterUpdate::QuarantineLink { link_id, until_ns } => WireCommand::QuarantineLink { link_id, until_ns },
                FilterUpdate::ReleaseLink { link_id } => WireCommand::ReleaseLink { link_id },
                FilterUpdate::QuarantinePublisher { publisher, until_ns } => WireCommand::QuarantinePublisher { publisher, until_ns },
                FilterUpdate::ReleasePublisher { publisher } => WireCommand::ReleasePublisher { publisher },
                FilterUpdate::SetRestricted { part, restricted } => WireCommand::SetRestricted { part: part.0, restricted },
                FilterUpdate::Permit { part, publisher, until_ns } => WireCommand::Permit { part: part.0, publisher, until_ns },
                FilterUpdate::Revoke { part, publisher } => WireCommand::Revoke { part: part.0, publisher },
                FilterUpdate::ScopeClient { link_id, part, publish, subscribe } => {
                    WireCommand::ScopeClient { link_id, part: part.0, publish, subscribe }
                }
                FilterUpdate::UnscopeClient { link_id } => WireCommand::UnscopeClient { link_id },
            },
        }
    }
}

impl WireError {
    fn new(kind: &str, message: impl Into<String>) -> Self {
        WireError { kind: kind.to_string(), message: message.into() }
    }

    fn from_command_error(error: &CommandError) -> Self {
        let kind = match error {
            CommandError::InvalidLink { .. } => "invalid_link",
            CommandError::LinkExists { .. } => "link_exists",
            CommandError::TooManyLinks { .. } => "too_many_links",
            CommandError::UnknownLink { .. } => "unknown_link",
            CommandError::NotJoined { .. } => "not_joined",
            CommandError::StreamPartsFull { .. } => "stream_parts_full",
            CommandError::FilterTableFull { .. } => "filter_table_full",
            CommandError::Xdp { .. } => "xdp",
            CommandError::ShardStopped { .. } => "shard_stopped",
            CommandError::Stopped => "stopped",
        };
        WireError::new(kind, error.to_string())
    }
}

impl WireEvent {
    fn from_shard_event(event: &ShardEvent) -> Self {
        let shard = event.shard;
        match event.event {
            Event::SignatureFailure { link_id, publisher, publisher_proven } => {
                WireEvent::SignatureFailure { shard, link_id, publisher, publisher_proven }
            }
            Event::Joined { part } => WireEvent::Joined { shard, part: part.0 },
            Event::SlowConsumer { link_id } => WireEvent::SlowConsumer { shard, link_id },
            Event::NeighborSilent { link_id, part } => WireEvent::NeighborSilent { shard, link_id, part: part.0 },
        }
    }
}

/// What the IPC server counts (relaxed atomics; read them any time).
#[derive(Debug, Default)]
pub struct IpcCounters {
    /// Control connections accepted.
    pub connections: AtomicU64,
    /// Connections closed because a frame did not decode or the handshake failed.
    pub protocol_errors: AtomicU64,
    /// Commands submitted to the node over IPC.
    pub commands: AtomicU64,
    /// Responses dropped: their connection had gone.
    pub responses_orphaned: AtomicU64,
}

/// Creates the IPC socket at `path` (replacing a stale socket file), mode 0600.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !metadata.file_type().is_socket() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists and is not a socket", path.display())));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves control connections on `listener`, one at a time, until `stop` is set. Returns
/// only on a listener error; a connection's errors close that connection.
pub fn serve(node: &NodeHandle, listener: &UnixListener, stop: &AtomicBool, counters: &IpcCounters) -> io::Result<()> {
    // Maps the node's command ids to (connection number, the control's id).
    let pending: Mutex<HashMap<CommandId, (u64, u64)>> = Mutex::new(HashMap::new());
    let mut connection = 0u64;
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                connection += 1;
                counters.connections.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = serve_connection(node, stream, connection, &pending, stop, counters) {
                    if matches!(error, IpcError::Malformed(_) | IpcError::FrameLength(_) | IpcError::Handshake(_)) {
                        counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                drain_orphans(node, &pending, counters);
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Without a connection, responses to an earlier one's commands have nowhere to go.
fn drain_orphans(node: &NodeHandle, pending: &Mutex<HashMap<CommandId, (u64, u64)>>, counters: &IpcCounters) {
    while let Ok(response) = node.responses().try_recv() {
        pending.lock().expect("no panics while holding it").remove(&response.id);
        counters.responses_orphaned.fetch_add(1, Ordering::Relaxed);
    }
}

fn serve_connection(
    node: &NodeHandle,
    stream: UnixStream,
    connection: u64,
    pending: &Mutex<HashMap<CommandId, (u64, u64)>>,
    stop: &AtomicBool,
    counters: &IpcCounters,
) -> Result<(), IpcError> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let mut buffer = Vec::new();
    // The handshake, before anything else.
    reader.set_read_timeout(Some(WRITE_TIMEOUT))?;
    let hello = if read_frame(&mut reader, &mut buffer)? { decode_request(&buffer)? } else { return Ok(()) };
    match hello {
        Request::Hello { version } if version == IPC_VERSION => {}
        other => {
            let message = format!("expected Hello {{ version: {IPC_VERSION} }} first, got {other:?}");
            let _ = write_frame(&mut writer, &Reply::ProtocolError { message: message.clone() });
            return Err(IpcError::Handshake(message));
        }
    }
    let listen = node.local_addrs().iter().map(|address| address.to_string()).collect();
    let hello = Reply::Hello { version: IPC_VERSION, listen, shards: node.local_addrs().len() as u16, links: node.commanded_links() };
    write_frame(&mut writer, &hello)?;
    // The reader blocks; the writer, which polls the stop flag, shuts the socket down to
    // wake it (a read timeout could fire mid-frame and lose the framing).
    reader.set_read_timeout(None)?;

    let (replies, queued) = bounded::<Reply>(REPLIES_QUEUED_MAX);
    let closed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| {
            // Ends on end of stream, a bad frame, or the writer's shutdown.
            let result = read_requests(node, &mut reader, connection, pending, &replies, stop, &closed, counters);
            closed.store(true, Ordering::Release);
            result
        });
        let written = write_replies(node, &mut writer, connection, pending, &queued, stop, &closed, counters);
        closed.store(true, Ordering::Release);
        // Wakes the reader if it waits on the socket.
        let _ = writer.shutdown(std::net::Shutdown::Both);
        let read = reading.join().unwrap_or_else(|_| Err(IpcError::Io("the IPC reader panicked".into())));
        read.and(written)
    })
}

#[allow(clippy::too_many_arguments)]
fn read_requests(
    node: &NodeHandle,
    reader: &mut UnixStream,
    connection: u64,
    pending: &Mutex<HashMap<CommandId, (u64, u64)>>,
    replies: &Sender<Reply>,
    stop: &AtomicBool,
    closed: &AtomicBool,
    counters: &IpcCounters,
) -> Result<(), IpcError> {
    let mut buffer = Vec::new();
    while !stop.load(Ordering::Acquire) && !closed.load(Ordering::Acquire) {
        match read_frame(reader, &mut buffer) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            // The writer shut the socket down (stop, or its write failed).
            Err(IpcError::Io(_)) if closed.load(Ordering::Acquire) || stop.load(Ordering::Acquire) => return Ok(()),
            Err(error) => {
                let _ = replies.send(Reply::ProtocolError { message: error.to_string() });
                return Err(error);
            }
        }
        let request = match decode_request(&buffer) {
            Ok(request) => request,
            Err(error) => {
                let _ = replies.send(Reply::ProtocolError { message: error.to_string() });
                return Err(error);
            }
        };
        let reply = match request {
            Request::Hello { .. } => {
                let error = IpcError::Handshake("Hello twice on one connection".into());
                let _ = replies.send(Reply::ProtocolError { message: error.to_string() });
                return Err(error);
            }
            Request::Status { id } => Reply::Status {
                id,
                counters: status_counters(node, counters),
                links: node
                    .link_traffic()
                    .into_iter()
                    .map(|(link_id, t)| WireLinkTraffic {
                        link_id,
                        frames_sent: t.frames_sent,
                        bytes_sent: t.bytes_sent,
                        frames_received: t.frames_received,
                        bytes_received: t.bytes_received,
                    })
                    .collect(),
            },
            Request::Command { id, command } => match command.to_command() {
                Err(error) => Reply::Response { id, error: Some(WireError::new("invalid_command", error.to_string())) },
                Ok(command) => {
                    // Held across submit, so the writer never sees the response before its id.
                    let mut map = pending.lock().expect("no panics while holding it");
                    match node.submit(command) {
                        Ok(node_id) => {
                            counters.commands.fetch_add(1, Ordering::Relaxed);
                            map.insert(node_id, (connection, id));
                            continue;
                        }
                        Err(NodeError::CommandQueueFull) => {
                            Reply::Response { id, error: Some(WireError::new("queue_full", "the node's command queue is full: retry")) }
                        }
                        Err(error) => Reply::Response { id, error: Some(WireError::new("stopped", error.to_string())) },
                    }
                }
            },
        };
        if replies.send(reply).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_replies(
    node: &NodeHandle,
    writer: &mut UnixStream,
    connection: u64,
    pending: &Mutex<HashMap<CommandId, (u64, u64)>>,
    queued: &Receiver<Reply>,
    stop: &AtomicBool,
    closed: &AtomicBool,
    counters: &IpcCounters,
) -> Result<(), IpcError> {
    while !stop.load(Ordering::Acquire) && !closed.load(Ordering::Acquire) {
        let reply = select! {
            recv(queued) -> reply => match reply { Ok(reply) => reply, Err(_) => return Ok(()) },
            recv(node.responses()) -> response => {
                let Ok(response) = response else { return Ok(()) };
                let owner = pending.lock().expect("no panics while holding it").remove(&response.id);
                match owner {
                    Some((owner, id)) if owner == connection => {
                        Reply::Response { id, error: response.result.as_ref().err().map(WireError::from_command_error) }
                    }
                    _ => {
                        counters.responses_orphaned.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            },
            recv(node.events()) -> event => match event {
                Ok(event) => Reply::Event(WireEvent::from_shard_event(&event)),
                Err(_) => return Ok(()),
            },
            default(POLL_INTERVAL) => continue,
        };
        let protocol_error = matches!(reply, Reply::ProtocolError { .. });
        write_frame(writer, &reply)?;
        if protocol_error {
            return Ok(());
        }
    }
    Ok(())
}

/// Node-wide totals of every counter, by name: the relay's (`frames_delivered`), the shard
/// runtime's (`runtime_…`), the command interface's (`commands_…`), the policy thread's
/// (`policy_…`), this socket's (`ipc_…`) and, with XDP on, the kernel filter's verdicts
/// (`xdp_…`).
fn status_counters(node: &NodeHandle, ipc: &IpcCounters) -> Vec<(String, u64)> {
    let mut totals = Counters::default();
    for shard in node.counters() {
        totals.merge(&shard);
    }
    let mut out: Vec<(String, u64)> = totals.iter().map(|(name, value)| (name.to_string(), value)).collect();
    let runtime = node.runtime_counters();
    for counter in RuntimeCounter::ALL {
        out.push((format!("runtime_{}", counter.name()), runtime.iter().map(|shard| shard.get(counter)).sum()));
    }
    for counter in CommandCounter::ALL {
        out.push((format!("commands_{}", counter.name()), node.command_counters().get(counter)));
    }
    let policy = node.policy_counters();
    for (name, counter) in [
        ("quarantines", &policy.quarantines),
        ("shard_updates_dropped", &policy.shard_updates_dropped),
        ("xdp_map_errors", &policy.xdp_map_errors),
        ("events_dropped", &policy.events_dropped),
    ] {
        out.push((format!("policy_{name}"), counter.load(Ordering::Relaxed)));
    }
    for (name, counter) in [
        ("connections", &ipc.connections),
        ("protocol_errors", &ipc.protocol_errors),
        ("commands", &ipc.commands),
        ("responses_orphaned", &ipc.responses_orphaned),
    ] {
        out.push((format!("ipc_{name}"), counter.load(Ordering::Relaxed)));
    }
    if let Some(verdicts) = node.xdp_verdicts() {
        for verdict in Verdict::ALL {
            out.push((format!("xdp_{}", verdict.name()), verdicts[verdict as usize]));
        }
    }
    out
}

/// The control side of the socket: connects, shakes hands, sends requests, reads replies.
#[derive(Debug)]
pub struct IpcClient {
    stream: UnixStream,
    /// Bytes read but not yet a whole frame (a read timeout never loses the framing).
    pending: Vec<u8>,
    next_id: u64,
    /// The node's listen addresses, shard count and commanded links, from its Hello.
    pub listen: Vec<String>,
    pub shards: u16,
    pub links: Vec<u32>,
}

impl IpcClient {
    /// Connects and exchanges `Hello`s; each later read waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<IpcClient, IpcError> {
        let mut stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write_frame(&mut stream, &Request::Hello { version: IPC_VERSION })?;
        let mut client = IpcClient { stream, pending: Vec::new(), next_id: 1, listen: Vec::new(), shards: 0, links: Vec::new() };
        match client.read()? {
            Reply::Hello { version, listen, shards, links } if version == IPC_VERSION => {
                client.listen = listen;
                client.shards = shards;
                client.links = links;
                Ok(client)
            }
            Reply::ProtocolError { message } => Err(IpcError::Handshake(message)),
            other => Err(IpcError::Handshake(format!("expected Hello {{ version: {IPC_VERSION} }}, got {other:?}"))),
        }
    }

    /// Sends a command; its response arrives later among the replies, under the returned id.
    pub fn send(&mut self, command: &Command) -> Result<u64, IpcError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &Request::Command { id, command: WireCommand::from_command(command) })?;
        Ok(id)
    }

    /// Asks for the node's counter totals; the answer is a `Reply::Status` with this id.
    pub fn request_status(&mut self) -> Result<u64, IpcError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &Request::Status { id })?;
        Ok(id)
    }

    /// How long each read waits from now on.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), IpcError> {
        self.stream.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// Sends raw bytes (tests of the server's handling of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), IpcError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// The next reply, or `None` if none arrived within the read timeout.
    pub fn poll(&mut self) -> Result<Option<Reply>, IpcError> {
        loop {
            if self.pending.len() >= 4 {
                let length = u32::from_le_bytes(self.pending[..4].try_into().expect("4 bytes")) as usize;
                if length == 0 || length > FRAME_LENGTH_MAX {
                    return Err(IpcError::FrameLength(length));
                }
                if self.pending.len() >= 4 + length {
                    let reply = decode_reply(&self.pending[4..4 + length]);
                    self.pending.drain(..4 + length);
                    return reply.map(Some);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(IpcError::Io("the dataplane closed the IPC connection".into())),
                Ok(read) => self.pending.extend_from_slice(&chunk[..read]),
                Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The next reply; none within the read timeout is an `Io` error.
    pub fn read(&mut self) -> Result<Reply, IpcError> {
        self.poll()?.ok_or_else(|| IpcError::Io("no reply from the dataplane within the timeout".into()))
    }

    /// Sends a command and reads replies until its response; events read meanwhile go to
    /// `on_event`.
    pub fn execute(&mut self, command: &Command, mut on_event: impl FnMut(WireEvent)) -> Result<Result<(), WireError>, IpcError> {
        let id = self.send(command)?;
        loop {
            match self.read()? {
                Reply::Response { id: answered, error } if answered == id => return Ok(error.map_or(Ok(()), Err)),
                Reply::Event(event) => on_event(event),
                Reply::ProtocolError { message } => return Err(IpcError::Handshake(message)),
                _ => {}
            }
        }
    }
}
