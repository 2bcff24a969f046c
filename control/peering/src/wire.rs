//! The neighbor protocol's messages and their byte encoding: pure functions, no I/O and no
//! libp2p, so the decoder is fuzzed on its own (`dataplane/fuzz`, target `peering_codec`).
//! The same protocol carries a client's request for a client link (`runnel pub/sub --node`):
//! a publisher or subscriber that is not a node asks a node for a link the way a neighbor
//! proposes one, minus the endpoint (a client's address is learned from its datagrams).
//!
//! Every message is one request or one response on its own request-response stream
//! (`/runnel/neighbor/1.0.0`), which already runs inside the connection's Noise (TCP) or TLS
//! (QUIC) session: the bytes here are authenticated and encrypted by the transport, and the
//! remote's PeerId is the one that session proved.
//!
//! Layout (all integers big-endian), at most [`MESSAGE_BYTES_MAX`] bytes:
//!
//! ```text
//! request  = version (1) ‖ kind (1) ‖ body
//!   kind 1 Propose: part (32) ‖ link id (u32) ‖ endpoint ‖ ephemeral X25519 public key (32)
//!   kind 2 Leave:   part (32) ‖ link id (u32, the sender's own id of the link it leaves)
//!   kind 3 ClientLink: part (32) ‖ access (1: 1 publish, 2 subscribe) ‖ ephemeral X25519 public key (32)
//! response = version (1) ‖ kind (1) ‖ body
//!   kind 1 Accept:  link id (u32) ‖ endpoint ‖ ephemeral X25519 public key (32)
//!   kind 2 Refuse:  reason (1)
//!   kind 3 LeaveAck: empty
//!   kind 4 ClientGrant: link id (u32, both directions) ‖ endpoint ‖ ephemeral X25519 public key (32)
//! endpoint = family (1: 4 or 6) ‖ address (4 or 16) ‖ port (u16) ‖ shards (u16)
//! ```
//!
//! Version 2 added the access byte of `ClientLink` and the refuse reasons `NotPermitted` and
//! `UnknownStream` (a node that follows the chain refuses a client the stream registry does
//! not permit); version 1 peers are refused at decode.
//!
//! Decoding is strict: an unknown version, kind, family, access or reason, a short message and
//! trailing bytes are errors ([`WireError`]), never panics. Whether a well-formed value makes
//! sense (port 0, zero shards, a low-order X25519 key) is the handshake's question, not the
//! decoder's (`handshake::validate_endpoint`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The only version this code speaks. A peer with another one is refused at decode.
pub const WIRE_VERSION: u8 = 2;
/// No message is longer than this (an IPv6 Propose is 2 + 32 + 4 + 21 + 32 = 91 bytes); the
/// codec reads at most this many bytes plus one from a stream before it gives up.
pub const MESSAGE_BYTES_MAX: usize = 128;

const REQUEST_PROPOSE: u8 = 1;
const REQUEST_LEAVE: u8 = 2;
const REQUEST_CLIENT_LINK: u8 = 3;
const RESPONSE_ACCEPT: u8 = 1;
const RESPONSE_REFUSE: u8 = 2;
const RESPONSE_LEAVE_ACK: u8 = 3;
const RESPONSE_CLIENT_GRANT: u8 = 4;

/// Where a node's dataplane listens: shard 0's UDP address and how many shards (consecutive
/// ports from it) it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub shards: u16,
}

/// "Let us be neighbors for this stream part": the initiator's half of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propose {
    pub part: [u8; 32],
    /// The id the initiator's dataplane will know this link by.
    pub link_id: u32,
    pub endpoint: Endpoint,
    pub ephemeral_public: [u8; 32],
}

/// "I drop you as a neighbor for this stream part."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leave {
    pub part: [u8; 32],
    /// The sender's own id of the link; stops a late Leave of an old link dropping a new one.
    pub link_id: u32,
}

/// What a client asks a link for: the stream registry's two permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientAccess {
    Publish = 1,
    Subscribe = 2,
}

impl ClientAccess {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Publish),
            2 => Some(Self::Subscribe),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }
}

/// "Give me a client link for this stream part": from a publisher or subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLink {
    pub part: [u8; 32],
    /// Whether the client publishes or subscribes (a node that follows the chain checks the
    /// client's account against the registry's permission of that kind).
    pub access: ClientAccess,
    pub ephemeral_public: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Propose(Propose),
    Leave(Leave),
    ClientLink(ClientLink),
}

/// The responder's half of an accepted handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accept {
    /// The id the responder's dataplane will know this link by.
    pub link_id: u32,
    pub endpoint: Endpoint,
    pub ephemeral_public: [u8; 32],
}

/// Why a proposal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The responder has its maximum degree for the stream part.
    Full = 1,
    /// The responder has not joined the stream part.
    NotJoined = 2,
    /// Both sides proposed to each other at once; the proposal of the lower PeerId wins and
    /// the other one is refused with this.
    Conflict = 3,
    /// The proposal was well-formed bytes but made no sense (port 0, no shards, a low-order
    /// X25519 key).
    Invalid = 4,
    /// The responder cannot take a neighbor now (its event queue to the dataplane is full,
    /// or it has no link id free); try later.
    Busy = 5,
    /// `ClientLink`: the stream registry gives the client's account no live permission of
    /// the kind it asked for.
    NotPermitted = 6,
    /// `ClientLink`: the stream part is not a part of any stream in the registry.
    UnknownStream = 7,
}

impl RefuseReason {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Full,
            2 => Self::NotJoined,
            3 => Self::Conflict,
            4 => Self::Invalid,
            5 => Self::Busy,
            6 => Self::NotPermitted,
            7 => Self::UnknownStream,
            _ => return None,
        })
    }
}

/// The node's answer to a granted [`ClientLink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientGrant {
    /// The link's id in both directions (a client link has one id, the node's).
    pub link_id: u32,
    /// Where the client sends: the node's dataplane.
    pub endpoint: Endpoint,
    pub ephemeral_public: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    Accept(Accept),
    Refuse(RefuseReason),
    LeaveAck,
    ClientGrant(ClientGrant),
}

/// Why bytes are not a message; says which part is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    TooLong { length: usize },
    Truncated { what: &'static str },
    UnknownVersion(u8),
    UnknownKind(u8),
    UnknownAddressFamily(u8),
    UnknownRefuseReason(u8),
    UnknownAccess(u8),
    TrailingBytes { count: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLong { length } => write!(f, "neighbor message of {length} bytes exceeds {MESSAGE_BYTES_MAX}"),
            WireError::Truncated { what } => write!(f, "neighbor message ends before its {what}"),
            WireError::UnknownVersion(version) => write!(f, "neighbor message version {version}, this node speaks {WIRE_VERSION}"),
            WireError::UnknownKind(kind) => write!(f, "unknown neighbor message kind {kind}"),
            WireError::UnknownAddressFamily(family) => write!(f, "unknown address family {family} (expected 4 or 6)"),
            WireError::UnknownRefuseReason(reason) => write!(f, "unknown refuse reason {reason}"),
            WireError::UnknownAccess(access) => write!(f, "unknown client access {access} (expected 1 publish or 2 subscribe)"),
            WireError::TrailingBytes { count } => write!(f, "{count} bytes after the end of a neighbor message"),
        }
    }
}

impl std::error::Error for WireError {}

/// A cursor over untrusted bytes: every read checks the length first.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < count {
            return Err(WireError::Truncated { what });
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    fn endpoint(&mut self) -> Result<Endpoint, WireError> {
        let ip = match self.u8("address family")? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>("IPv4 address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>("IPv6 address")?)),
            family => return Err(WireError::UnknownAddressFamily(family)),
        };
        let port = self.u16("port")?;
        let shards = self.u16("shard count")?;
        Ok(Endpoint { address: SocketAddr::new(ip, port), shards })
    }

    /// The version and kind bytes every message starts with.
    fn start(&mut self) -> Result<u8, WireError> {
        let version = self.u8("version")?;
        if version != WIRE_VERSION {
            return Err(WireError::UnknownVersion(version));
        }
        self.u8("kind")
    }

    fn finish(self) -> Result<(), WireError> {
        match self.bytes.len() {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes { count }),
        }
    }
}

fn check_length(bytes: &[u8]) -> Result<Reader<'_>, WireError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLong { length: bytes.len() });
    }
    Ok(Reader { bytes })
}

/// Decodes one request; any input gives a value or an error, never a panic.
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    let mut reader = check_length(bytes)?;
    let request = match reader.start()? {
        REQUEST_PROPOSE => Request::Propose(Propose {
            part: reader.array("stream part key")?,
            link_id: reader.u32("link id")?,
            endpoint: reader.endpoint()?,
            ephemeral_public: reader.array("ephemeral public key")?,
        }),
        REQUEST_LEAVE => Request::Leave(Leave { part: reader.array("stream part key")?, link_id: reader.u32("link id")? }),
        REQUEST_CLIENT_LINK => Request::ClientLink(ClientLink {
            part: reader.array("stream part key")?,
            access: {
                let byte = reader.u8("access")?;
                ClientAccess::from_byte(byte).ok_or(WireError::UnknownAccess(byte))?
            },
            ephemeral_public: reader.array("ephemeral public key")?,
        }),
        kind => return Err(WireError::UnknownKind(kind)),
    };
    reader.finish()?;
    Ok(request)
}

/// Decodes one response; any input gives a value or an error, never a panic.
pub fn decode_response(bytes: &[u8]) -> Result<Response, WireError> {
    let mut reader = check_length(bytes)?;
    let response = match reader.start()? {
        RESPONSE_ACCEPT => Response::Accept(Accept {
            link_id: reader.u32("link id")?,
            endpoint: reader.endpoint()?,
            ephemeral_public: reader.array("ephemeral public key")?,
        }),
        RESPONSE_REFUSE => {
            let byte = reader.u8("refuse reason")?;
            Response::Refuse(RefuseReason::from_byte(byte).ok_or(WireError::UnknownRefuseReason(byte))?)
        }
        RESPONSE_LEAVE_ACK => Response::LeaveAck,
        RESPONSE_CLIENT_GRANT => Response::ClientGrant(ClientGrant {
            link_id: reader.u32("link id")?,
            endpoint: reader.endpoint()?,
            ephemeral_public: reader.array("ephemeral public key")?,
        }),
        kind => return Err(WireError::UnknownKind(kind)),
    };
    reader.finish()?;
    Ok(response)
}

fn put_endpoint(out: &mut Vec<u8>, endpoint: &Endpoint) {
    match endpoint.address.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&endpoint.address.port().to_be_bytes());
    out.extend_from_slice(&endpoint.shards.to_be_bytes());
}

/// Encodes a request (at most [`MESSAGE_BYTES_MAX`] bytes).
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_BYTES_MAX);
    out.push(WIRE_VERSION);
    match request {
        Request::Propose(propose) => {
            out.push(REQUEST_PROPOSE);
            out.extend_from_slice(&propose.part);
            out.extend_from_slice(&propose.link_id.to_be_bytes());
            put_endpoint(&mut out, &propose.endpoint);
            out.extend_from_slice(&propose.ephemeral_public);
        }
        Request::Leave(leave) => {
            out.push(REQUEST_LEAVE);
            out.extend_from_slice(&leave.part);
            out.extend_from_slice(&leave.link_id.to_be_bytes());
        }
        Request::ClientLink(request) => {
            out.push(REQUEST_CLIENT_LINK);
            out.extend_from_slice(&request.part);
            out.push(request.access as u8);
            out.extend_from_slice(&request.ephemeral_public);
        }
    }
    debug_assert!(out.len() <= MESSAGE_BYTES_MAX);
    out
}

/// Encodes a response (at most [`MESSAGE_BYTES_MAX`] bytes).
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(MESSAGE_BYTES_MAX);
    out.push(WIRE_VERSION);
    match response {
        Response::Accept(accept) => {
            out.push(RESPONSE_ACCEPT);
            out.extend_from_slice(&accept.link_id.to_be_bytes());
            put_endpoint(&mut out, &accept.endpoint);
            out.extend_from_slice(&accept.ephemeral_public);
        }
        Response::Refuse(reason) => {
            out.push(RESPONSE_REFUSE);
            out.push(*reason as u8);
        }
        Response::LeaveAck => out.push(RESPONSE_LEAVE_ACK),
        Response::ClientGrant(grant) => {
            out.push(RESPONSE_CLIENT_GRANT);
            out.extend_from_slice(&grant.link_id.to_be_bytes());
            put_endpoint(&mut out, &grant.endpoint);
            out.extend_from_slice(&grant.ephemeral_public);
        }
    }
    debug_assert!(out.len() <= MESSAGE_BYTES_MAX);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint_v4() -> Endpoint {
        Endpoint { address: "127.0.0.1:40000".parse().unwrap(), shards: 2 }
    }

    fn endpoint_v6() -> Endpoint {
        Endpoint { address: "[2001:db8::1]:9".parse().unwrap(), shards: 65535 }
    }

    fn samples() -> (Vec<Request>, Vec<Response>) {
        let requests = vec![
            Request::Propose(Propose { part: [7; 32], link_id: 0x8000_0001, endpoint: endpoint_v4(), ephemeral_public: [9; 32] }),
            Request::Propose(Propose { part: [1; 32], link_id: u32::MAX, endpoint: endpoint_v6(), ephemeral_public: [2; 32] }),
            Request::Leave(Leave { part: [3; 32], link_id: 5 }),
            Request::ClientLink(ClientLink { part: [4; 32], access: ClientAccess::Publish, ephemeral_public: [6; 32] }),
            Request::ClientLink(ClientLink { part: [5; 32], access: ClientAccess::Subscribe, ephemeral_public: [6; 32] }),
        ];
        let responses = vec![
            Response::Accept(Accept { link_id: 4, endpoint: endpoint_v6(), ephemeral_public: [8; 32] }),
            Response::Refuse(RefuseReason::Full),
            Response::Refuse(RefuseReason::Busy),
            Response::Refuse(RefuseReason::NotPermitted),
            Response::Refuse(RefuseReason::UnknownStream),
            Response::LeaveAck,
            Response::ClientGrant(ClientGrant { link_id: 7, endpoint: endpoint_v4(), ephemeral_public: [5; 32] }),
        ];
        (requests, responses)
    }

    // Goal: every message survives encode → decode unchanged, and fits the bound.
    #[test]
    fn round_trip() {
        let (requests, responses) = samples();
        for request in requests {
            let bytes = encode_request(&request);
            assert!(bytes.len() <= MESSAGE_BYTES_MAX);
            assert_eq!(decode_request(&bytes), Ok(request));
        }
        for response in responses {
            let bytes = encode_response(&response);
            assert_eq!(decode_response(&bytes), Ok(response));
        }
    }

    // Goal: every truncation and every extension of a valid message is an error, not a panic
    // or a wrong value; bad version, kind, family and reason bytes are named.
    #[test]
    fn malformed_bytes_are_errors() {
        let (requests, responses) = samples();
        for request in requests {
            let bytes = encode_request(&request);
            for end in 0..bytes.len() {
                assert!(decode_request(&bytes[..end]).is_err(), "prefix of {end} bytes decoded");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode_request(&longer), Err(WireError::TrailingBytes { count: 1 }));
        }
        for response in responses {
            let bytes = encode_response(&response);
            for end in 0..bytes.len() {
                assert!(decode_response(&bytes[..end]).is_err());
            }
        }
        assert_eq!(decode_request(&[1, 1]), Err(WireError::UnknownVersion(1)), "version 1 had no access byte");
        assert_eq!(decode_request(&[2, 9]), Err(WireError::UnknownKind(9)));
        assert_eq!(decode_response(&[2, 2, 0]), Err(WireError::UnknownRefuseReason(0)));
        assert_eq!(decode_response(&[2, 2, 8]), Err(WireError::UnknownRefuseReason(8)));
        let mut client_link = encode_request(&samples().0[3]);
        client_link[2 + 32] = 3;
        assert_eq!(decode_request(&client_link), Err(WireError::UnknownAccess(3)));
        let mut propose = encode_request(&samples().0[0]);
        propose[2 + 32 + 4] = 5;
        assert_eq!(decode_request(&propose), Err(WireError::UnknownAddressFamily(5)));
        assert_eq!(decode_request(&[0; MESSAGE_BYTES_MAX + 1]), Err(WireError::TooLong { length: MESSAGE_BYTES_MAX + 1 }));
    }

    // Goal: random bytes never panic the decoders (a quick stand-in for the fuzz target).
    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = (state % 100) as usize;
            let mut bytes: Vec<u8> = (0..length).map(|i| (state >> (i % 56)) as u8).collect();
            if let Some(first) = bytes.first_mut() {
                *first = WIRE_VERSION;
            }
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
