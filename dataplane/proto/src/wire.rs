//! The wire format: datagrams and the message records packed inside them. No I/O here.
//!
//! A datagram is one UDP payload on a link: an 88-byte [`DatagramHeader`] followed by a body
//! whose meaning depends on the kind. Data datagrams carry message records of one stream part
//! back to back; Fragment datagrams carry a slice of one record too large for a datagram;
//! Nak datagrams carry sequence ranges to resend; Subscribe/Unsubscribe carry no body.
//!
//! Fixed-size parts (datagram header, message record header, fragment header, NAK range) are
//! `rkyv` archives read in place: [`rkyv::access`] validates them (bytecheck) and returns a
//! reference into the receive buffer, so parsing copies nothing. We build with rkyv's
//! `unaligned` + `little_endian` format, so the archived layout is the declared field order,
//! little-endian, without padding, valid at any offset: records packed back to back need no
//! alignment. Writing is done by hand into the same layout (a test checks both agree),
//! because the hot path appends into a preallocated datagram buffer.
//!
//! `total_length` in the header is the length of the whole datagram including any padding
//! after its last record, so a GRO-coalesced receive buffer splits into datagrams by walking
//! `total_length` alone ([`split_datagrams`]), without the `UDP_GRO` cmsg. The full byte layout
//! is specified in `docs/protocol.md`.

use rkyv::{rancor::Failure, Archive};
use std::fmt;

/// First two bytes of every Runnel datagram: ASCII "RN".
pub const MAGIC: u16 = u16::from_le_bytes(*b"RN");
/// The only protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes of the datagram header, tag included.
pub const HEADER_LENGTH: usize = 88;
/// Bytes of the header covered by the link tag (ten 64-bit words).
pub const TAGGED_HEADER_LENGTH: usize = 80;
/// Bytes of the fixed part of a message record.
pub const MESSAGE_HEADER_LENGTH: usize = 80;
/// Bytes of a recoverable secp256k1 signature: r ‖ s ‖ v (v = 27 or 28).
pub const SIGNATURE_LENGTH: usize = 65;
/// Bytes of a fragment header.
pub const FRAGMENT_HEADER_LENGTH: usize = 48;
/// Bytes of one NAK range.
pub const NAK_RANGE_LENGTH: usize = 44;
/// Largest payload a message may carry (DESIGN.md §1).
pub const PAYLOAD_LENGTH_MAX: usize = 1 << 20;
/// Deepest batch Merkle path: 2^16 messages per batch signature.
pub const PROOF_DEPTH_MAX: usize = 16;
/// Largest encoded message record.
pub const RECORD_LENGTH_MAX: usize = MESSAGE_HEADER_LENGTH + 255 + PAYLOAD_LENGTH_MAX + SIGNATURE_LENGTH + 32 * PROOF_DEPTH_MAX;
/// Default datagram size: the UDP payload that fits a 1500-byte Ethernet MTU.
pub const DATAGRAM_LENGTH_DEFAULT: usize = 1472;
/// Largest UDP payload over IPv4.
pub const DATAGRAM_LENGTH_MAX: usize = 65507;

/// Datagram kinds (header byte 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Message records of one stream part.
    Data = 1,
    /// One slice of a message record too large for a datagram.
    Fragment = 2,
    /// "Please resend these sequence ranges" to a neighbor.
    Nak = 3,
    /// "Send me this stream part" (client) / "I am in this stream part's overlay" (neighbor).
    /// Refreshed every second; interest expires without refresh.
    Subscribe = 4,
    /// Withdraws a Subscribe.
    Unsubscribe = 5,
}

impl Kind {
    pub fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Data,
            2 => Kind::Fragment,
            3 => Kind::Nak,
            4 => Kind::Subscribe,
            5 => Kind::Unsubscribe,
            _ => return None,
        })
    }
}

/// Header flag: every record in this datagram is from the publisher named in the header.
pub const FLAG_SINGLE_PUBLISHER: u16 = 1 << 0;
/// Header flag: the records answer a NAK (they are resent, not new).
pub const FLAG_REPAIR: u16 = 1 << 1;
/// All header flags this version defines; others must be zero.
pub const FLAGS_KNOWN: u16 = FLAG_SINGLE_PUBLISHER | FLAG_REPAIR;

/// Message flag: the record carries a previous reference.
pub const MESSAGE_FLAG_HAS_PREVIOUS: u8 = 1 << 0;

/// The datagram header as rkyv archives it (the archived form is what we read in place).
#[derive(Archive, rkyv::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DatagramHeader {
    pub magic: u16,
    pub version: u8,
    pub kind: u8,
    pub link_id: u32,
    pub link_seq: u64,
    pub stream_part_key: [u8; 32],
    pub flags: u16,
    pub message_count: u16,
    pub total_length: u16,
    pub reserved: [u8; 6],
    pub publisher: [u8; 20],
    pub link_tag: u64,
}

/// The fixed part of a message record.
#[derive(Archive, rkyv::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MessageHeader {
    pub record_length: u32,
    pub publisher: [u8; 20],
    pub chain_id: u64,
    pub timestamp_ms: u64,
    pub sequence: u64,
    pub previous_timestamp_ms: u64,
    pub previous_sequence: u64,
    pub content_type: u8,
    pub encryption: u8,
    pub signature_kind: u8,
    pub flags: u8,
    pub group_key_id_length: u8,
    pub proof_depth: u8,
    pub reserved: u16,
    pub leaf_index: u32,
    pub payload_length: u32,
}

/// Header of a Fragment datagram's body; the slice of the record follows it.
#[derive(Archive, rkyv::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct FragmentHeader {
    pub publisher: [u8; 20],
    pub chain_id: u64,
    pub sequence: u64,
    pub record_length: u32,
    pub offset: u32,
    pub fragment_length: u16,
    pub reserved: u16,
}

/// One inclusive sequence range a NAK asks to resend.
#[derive(Archive, rkyv::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct NakRange {
    pub publisher: [u8; 20],
    pub chain_id: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// Content type of a message payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ContentType {
    Json = 0,
    Binary = 1,
}

/// Encryption of a message payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encryption {
    None = 0,
    /// AES-256-GCM under the group key named by the record's group key id.
    Aes256Gcm = 1,
}

/// How a record's signature is to be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SignatureKind {
    /// The record carries a signature over its own digest.
    Single = 0,
    /// The record carries a Merkle path to a batch root and the root's signature.
    Batch = 1,
}

/// Everything that can be wrong with bytes from the network. Never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    Truncated { needed: usize, available: usize },
    BadMagic,
    UnsupportedVersion(u8),
    UnknownKind(u8),
    UnknownFlags(u16),
    NonZeroReserved,
    BadTotalLength(u16),
    BadRecordLength { declared: u32, computed: usize },
    BadContentType(u8),
    BadEncryption(u8),
    BadSignatureKind(u8),
    ProofTooDeep(u8),
    PayloadTooLarge(u32),
    BadFragment,
    MessageCountMismatch { declared: u16, found: usize },
    Invalid,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { needed, available } => write!(f, "truncated: need {needed} bytes, have {available}"),
            WireError::BadMagic => f.write_str("not a Runnel datagram (bad magic)"),
            WireError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v} (this build speaks {VERSION})"),
            WireError::UnknownKind(k) => write!(f, "unknown datagram kind {k}"),
            WireError::UnknownFlags(x) => write!(f, "unknown header flags {x:#06x}"),
            WireError::NonZeroReserved => f.write_str("reserved bytes are not zero"),
            WireError::BadTotalLength(n) => write!(f, "bad total length {n}"),
            WireError::BadRecordLength { declared, computed } => {
                write!(f, "record length {declared} does not match its fields ({computed})")
            }
            WireError::BadContentType(x) => write!(f, "unknown content type {x}"),
            WireError::BadEncryption(x) => write!(f, "unknown encryption type {x}"),
            WireError::BadSignatureKind(x) => write!(f, "unknown signature kind {x}"),
            WireError::ProofTooDeep(d) => write!(f, "batch proof depth {d} exceeds {PROOF_DEPTH_MAX}"),
            WireError::PayloadTooLarge(n) => write!(f, "payload of {n} bytes exceeds {PAYLOAD_LENGTH_MAX}"),
            WireError::BadFragment => f.write_str("fragment offset/length outside its record"),
            WireError::MessageCountMismatch { declared, found } => write!(f, "header declares {declared} records, body holds {found}"),
            WireError::Invalid => f.write_str("archived fields failed validation"),
        }
    }
}

impl std::error::Error for WireError {}

fn need(bytes: &[u8], needed: usize) -> Result<(), WireError> {
    if bytes.len() < needed {
        Err(WireError::Truncated { needed, available: bytes.len() })
    } else {
        Ok(())
    }
}

/// A validated datagram, borrowed from the receive buffer.
#[derive(Clone, Copy)]
pub struct Datagram<'a> {
    pub header: &'a ArchivedDatagramHeader,
    /// Header bytes, for tag checks.
    pub header_bytes: &'a [u8],
    /// Body bytes (after the header, up to `total_length`, padding included).
    pub body: &'a [u8],
    /// The kind, already validated.
    pub kind: Kind,
    /// The whole datagram: header, body and padding (`total_length` bytes).
    pub bytes: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// Validates the header of the datagram at the start of `bytes`. `bytes` may be longer
    /// (a GRO-coalesced buffer); the datagram is `total_length` bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Datagram<'a>, WireError> {
        need(bytes, HEADER_LENGTH)?;
        let header_bytes = &bytes[..HEADER_LENGTH];
        let header = rkyv::access::<ArchivedDatagramHeader, Failure>(header_bytes).map_err(|_| WireError::Invalid)?;
        if header.magic.to_native() != MAGIC {
            return Err(WireError::BadMagic);
        }
        if header.version != VERSION {
            return Err(WireError::UnsupportedVersion(header.version));
        }
        let kind = Kind::from_u8(header.kind).ok_or(WireError::UnknownKind(header.kind))?;
        let flags = header.flags.to_native();
        if flags & !FLAGS_KNOWN != 0 {
            return Err(WireError::UnknownFlags(flags));
        }
        if header.reserved != [0; 6] {
            return Err(WireError::NonZeroReserved);
        }
        let total = header.total_length.to_native();
        if (total as usize) < HEADER_LENGTH {
            return Err(WireError::BadTotalLength(total));
        }
        need(bytes, total as usize)?;
        Ok(Datagram { header, header_bytes, body: &bytes[HEADER_LENGTH..total as usize], kind, bytes: &bytes[..total as usize] })
    }

    pub fn link_id(&self) -> u32 {
        self.header.link_id.to_native()
    }

    pub fn link_seq(&self) -> u64 {
        self.header.link_seq.to_native()
    }

    pub fn stream_part_key(&self) -> crate::stream::StreamPartKey {
        crate::stream::StreamPartKey(self.header.stream_part_key)
    }

    pub fn flags(&self) -> u16 {
        self.header.flags.to_native()
    }

    pub fn message_count(&self) -> u16 {
        self.header.message_count.to_native()
    }

    pub fn total_length(&self) -> usize {
        self.header.total_length.to_native() as usize
    }

    /// Checks the link tag with `key`.
    pub fn tag_matches(&self, key: &crate::linktag::LinkKey) -> bool {
        crate::linktag::link_tag(key, &self.header_bytes[..TAGGED_HEADER_LENGTH]) == self.header.link_tag.to_native()
    }

    /// Iterates the message records of a Data datagram. Each item is validated; iteration
    /// stops at the first error, and after `message_count` records (the rest is padding).
    pub fn records(&self) -> Records<'a> {
        Records { rest: self.body, remaining: self.message_count() }
    }

    /// The fragment of a Fragment datagram.
    pub fn fragment(&self) -> Result<(&'a ArchivedFragmentHeader, &'a [u8]), WireError> {
        need(self.body, FRAGMENT_HEADER_LENGTH)?;
        let header =
            rkyv::access::<ArchivedFragmentHeader, Failure>(&self.body[..FRAGMENT_HEADER_LENGTH]).map_err(|_| WireError::Invalid)?;
        let length = header.fragment_length.to_native() as usize;
        let record_length = header.record_length.to_native() as usize;
        let offset = header.offset.to_native() as usize;
        need(&self.body[FRAGMENT_HEADER_LENGTH..], length)?;
        if length == 0 || record_length > RECORD_LENGTH_MAX || offset + length > record_length || header.reserved != 0 {
            return Err(WireError::BadFragment);
        }
        Ok((header, &self.body[FRAGMENT_HEADER_LENGTH..FRAGMENT_HEADER_LENGTH + length]))
    }

    /// The ranges of a Nak datagram.
    pub fn nak_ranges(&self) -> Result<impl Iterator<Item = &'a ArchivedNakRange> + 'a, WireError> {
        let count = self.message_count() as usize;
        need(self.body, count * NAK_RANGE_LENGTH)?;
        let body = self.body;
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let bytes = &body[i * NAK_RANGE_LENGTH..(i + 1) * NAK_RANGE_LENGTH];
            let range = rkyv::access::<ArchivedNakRange, Failure>(bytes).map_err(|_| WireError::Invalid)?;
            if range.first_sequence.to_native() > range.last_sequence.to_native() {
                return Err(WireError::Invalid);
            }
            ranges.push(range);
        }
        Ok(ranges.into_iter())
    }
}

/// Walks a receive buffer that may hold several datagrams (GRO) by their `total_length`.
/// Yields each datagram's bytes or the error that stopped the walk (the rest is dropped:
/// without a valid length there is no next boundary).
pub fn split_datagrams(buffer: &[u8]) -> SplitDatagrams<'_> {
    SplitDatagrams { rest: buffer }
}

pub struct SplitDatagrams<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SplitDatagrams<'a> {
    type Item = Result<Datagram<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Datagram::parse(self.rest) {
            Ok(datagram) => {
                self.rest = &self.rest[datagram.total_length()..];
                Some(Ok(datagram))
            }
            Err(error) => {
                self.rest = &[];
                Some(Err(error))
            }
        }
    }
}

/// A validated message record, borrowed from the receive buffer.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    pub header: &'a ArchivedMessageHeader,
    /// The whole record, header included (what is forwarded and stored, unchanged).
    pub bytes: &'a [u8],
    pub group_key_id: &'a [u8],
    pub payload: &'a [u8],
    pub signature: &'a [u8; SIGNATURE_LENGTH],
    /// Batch Merkle path, `proof_depth` × 32 bytes (empty for single signatures).
    pub proof: &'a [u8],
}

impl<'a> Record<'a> {
    /// Validates the record at the start of `bytes` (which may hold more after it).
    pub fn parse(bytes: &'a [u8]) -> Result<Record<'a>, WireError> {
        need(bytes, MESSAGE_HEADER_LENGTH)?;
        let header = rkyv::access::<ArchivedMessageHeader, Failure>(&bytes[..MESSAGE_HEADER_LENGTH]).map_err(|_| WireError::Invalid)?;
        if header.content_type > ContentType::Binary as u8 {
            return Err(WireError::BadContentType(header.content_type));
        }
        if header.encryption > Encryption::Aes256Gcm as u8 {
            return Err(WireError::BadEncryption(header.encryption));
        }
        let batch = match header.signature_kind {
            0 => false,
            1 => true,
            other => return Err(WireError::BadSignatureKind(other)),
        };
        if header.flags & !MESSAGE_FLAG_HAS_PREVIOUS != 0 || header.reserved.to_native() != 0 {
            return Err(WireError::NonZeroReserved);
        }
        let depth = header.proof_depth as usize;
        if depth > PROOF_DEPTH_MAX || (!batch && depth != 0) {
            return Err(WireError::ProofTooDeep(header.proof_depth));
        }
        if batch && (header.leaf_index.to_native() as u64) >= (1u64 << depth) {
            return Err(WireError::Invalid);
        }
        let payload_length = header.payload_length.to_native();
        if payload_length as usize > PAYLOAD_LENGTH_MAX {
            return Err(WireError::PayloadTooLarge(payload_length));
        }
        let group_key_id_length = header.group_key_id_length as usize;
        let computed = MESSAGE_HEADER_LENGTH + group_key_id_length + payload_length as usize + SIGNATURE_LENGTH + 32 * depth;
        let declared = header.record_length.to_native();
        if declared as usize != computed {
            return Err(WireError::BadRecordLength { declared, computed });
        }
        need(bytes, computed)?;
        let mut at = MESSAGE_HEADER_LENGTH;
        let group_key_id = &bytes[at..at + group_key_id_length];
        at += group_key_id_length;
        let payload = &bytes[at..at + payload_length as usize];
        at += payload_length as usize;
        let signature: &[u8; SIGNATURE_LENGTH] = bytes[at..at + SIGNATURE_LENGTH].try_into().expect("length checked");
        at += SIGNATURE_LENGTH;
        let proof = &bytes[at..at + 32 * depth];
        Ok(Record { header, bytes: &bytes[..computed], group_key_id, payload, signature, proof })
    }

    pub fn publisher(&self) -> [u8; 20] {
        self.header.publisher
    }

    pub fn chain_id(&self) -> u64 {
        self.header.chain_id.to_native()
    }

    pub fn sequence(&self) -> u64 {
        self.header.sequence.to_native()
    }

    pub fn timestamp_ms(&self) -> u64 {
        self.header.timestamp_ms.to_native()
    }

    pub fn signature_kind(&self) -> SignatureKind {
        if self.header.signature_kind == 1 {
            SignatureKind::Batch
        } else {
            SignatureKind::Single
        }
    }

    pub fn previous(&self) -> Option<(u64, u64)> {
        (self.header.flags & MESSAGE_FLAG_HAS_PREVIOUS != 0)
            .then(|| (self.header.previous_timestamp_ms.to_native(), self.header.previous_sequence.to_native()))
    }
}

/// Iterator over the records of a Data datagram.
pub struct Records<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match Record::parse(self.rest) {
            Ok(record) => {
                self.remaining -= 1;
                self.rest = &self.rest[record.bytes.len()..];
                Some(Ok(record))
            }
            Err(error) => {
                self.remaining = 0;
                Some(Err(error))
            }
        }
    }
}

/// The fields of a message to encode. Signing fills `signature` (and `proof` for batches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageFields {
    pub publisher: [u8; 20],
    pub chain_id: u64,
    pub timestamp_ms: u64,
    pub sequence: u64,
    pub previous: Option<(u64, u64)>,
    pub content_type: ContentType,
    pub encryption: Encryption,
    pub group_key_id: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The batch part of a record: where the message sits in its batch and the path to the root.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BatchProof {
    pub leaf_index: u32,
    /// Sibling hashes from the leaf level up, `depth` entries.
    pub path: Vec<[u8; 32]>,
}

impl MessageFields {
    /// The record length this message encodes to with a proof of `proof_depth`.
    pub fn record_length(&self, proof_depth: usize) -> usize {
        MESSAGE_HEADER_LENGTH + self.group_key_id.len() + self.payload.len() + SIGNATURE_LENGTH + 32 * proof_depth
    }

    /// Appends the encoded record to `out`. Panics on fields the protocol cannot carry: the
    /// caller (the publisher) validates user input first, so reaching this is a bug.
    pub fn encode(&self, signature: &[u8; SIGNATURE_LENGTH], proof: Option<&BatchProof>, out: &mut Vec<u8>) {
        assert!(self.payload.len() <= PAYLOAD_LENGTH_MAX, "payload over the protocol maximum");
        assert!(self.group_key_id.len() <= 255, "group key id over 255 bytes");
        let depth = proof.map_or(0, |p| p.path.len());
        assert!(depth <= PROOF_DEPTH_MAX);
        let length = self.record_length(depth);
        out.reserve(length);
        out.extend_from_slice(&(length as u32).to_le_bytes());
        out.extend_from_slice(&self.publisher);
        out.extend_from_slice(&self.chain_id.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        let (previous_timestamp_ms, previous_sequence) = self.previous.unwrap_or((0, 0));
        out.extend_from_slice(&previous_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&previous_sequence.to_le_bytes());
        out.push(self.content_type as u8);
        out.push(self.encryption as u8);
        out.push(if proof.is_some() { SignatureKind::Batch } else { SignatureKind::Single } as u8);
        out.push(if self.previous.is_some() { MESSAGE_FLAG_HAS_PREVIOUS } else { 0 });
        out.push(self.group_key_id.len() as u8);
        out.push(depth as u8);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&proof.map_or(0, |p| p.leaf_index).to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.group_key_id);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(signature);
        if let Some(proof) = proof {
            for node in &proof.path {
                out.extend_from_slice(node);
            }
        }
    }
}

/// Fields of a datagram header that the sender chooses; the writer fills the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    pub kind: Kind,
    pub link_id: u32,
    pub link_seq: u64,
    pub stream_part_key: [u8; 32],
    pub flags: u16,
    pub message_count: u16,
    pub total_length: u16,
    pub publisher: [u8; 20],
}

impl HeaderFields {
    /// A header of `kind` on a link for a stream part: no flags, no publisher; the builder
    /// fills in the record count and total length when it seals the datagram.
    pub fn new(kind: Kind, link_id: u32, link_seq: u64, stream_part_key: [u8; 32]) -> Self {
        Self { kind, link_id, link_seq, stream_part_key, flags: 0, message_count: 0, total_length: 0, publisher: [0; 20] }
    }
}

/// Writes the 88-byte header into `out[..88]`, computing the link tag with `key`.
pub fn write_header(fields: &HeaderFields, key: &crate::linktag::LinkKey, out: &mut [u8]) {
    let out = &mut out[..HEADER_LENGTH];
    out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    out[2] = VERSION;
    out[3] = fields.kind as u8;
    out[4..8].copy_from_slice(&fields.link_id.to_le_bytes());
    out[8..16].copy_from_slice(&fields.link_seq.to_le_bytes());
    out[16..48].copy_from_slice(&fields.stream_part_key);
    out[48..50].copy_from_slice(&fields.flags.to_le_bytes());
    out[50..52].copy_from_slice(&fields.message_count.to_le_bytes());
    out[52..54].copy_from_slice(&fields.total_length.to_le_bytes());
    out[54..60].fill(0);
    out[60..80].copy_from_slice(&fields.publisher);
    let tag = crate::linktag::link_tag(key, &out[..TAGGED_HEADER_LENGTH]);
    out[80..88].copy_from_slice(&tag.to_le_bytes());
}

/// Appends a fragment header and slice to a datagram body under construction.
pub fn encode_fragment(header: &FragmentHeader, slice: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&header.publisher);
    out.extend_from_slice(&header.chain_id.to_le_bytes());
    out.extend_from_slice(&header.sequence.to_le_bytes());
    out.extend_from_slice(&header.record_length.to_le_bytes());
    out.extend_from_slice(&header.offset.to_le_bytes());
    out.extend_from_slice(&(slice.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(slice);
}

/// Appends one NAK range to a datagram body under construction.
pub fn encode_nak_range(range: &NakRange, out: &mut Vec<u8>) {
    out.extend_from_slice(&range.publisher);
    out.extend_from_slice(&range.chain_id.to_le_bytes());
    out.extend_from_slice(&range.first_sequence.to_le_bytes());
    out.extend_from_slice(&range.last_sequence.to_le_bytes());
}

/// Builds one datagram: header space first, then body bytes, then [`DatagramBuilder::finish`].
///
/// The buffer is reused across datagrams (`reset`), so steady-state packing allocates nothing.
#[derive(Debug)]
pub struct DatagramBuilder {
    buffer: Vec<u8>,
    count: u16,
    capacity: usize,
}

impl DatagramBuilder {
    /// `capacity` is the datagram size limit (path MTU payload), at least header + 1 byte.
    pub fn new(capacity: usize) -> Self {
        assert!((HEADER_LENGTH + 1..=DATAGRAM_LENGTH_MAX).contains(&capacity), "datagram capacity {capacity} out of range");
        let mut buffer = Vec::with_capacity(capacity);
        buffer.resize(HEADER_LENGTH, 0);
        Self { buffer, count: 0, capacity }
    }

    /// Builds into a recycled buffer (cleared first), so steady state allocates nothing.
    pub fn from_buffer(mut buffer: Vec<u8>, capacity: usize) -> Self {
        assert!((HEADER_LENGTH + 1..=DATAGRAM_LENGTH_MAX).contains(&capacity), "datagram capacity {capacity} out of range");
        buffer.clear();
        buffer.reserve(capacity);
        buffer.resize(HEADER_LENGTH, 0);
        Self { buffer, count: 0, capacity }
    }

    /// The finished datagram's buffer (call after [`DatagramBuilder::finish`]).
    pub fn into_buffer(self) -> Vec<u8> {
        self.buffer
    }

    pub fn reset(&mut self) {
        self.buffer.truncate(HEADER_LENGTH);
        self.count = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes still free for body data.
    pub fn remaining(&self) -> usize {
        self.capacity - self.buffer.len()
    }

    /// Appends a whole record if it fits; returns false (and appends nothing) if not.
    pub fn try_push(&mut self, record: &[u8]) -> bool {
        if record.len() > self.remaining() || self.count == u16::MAX {
            return false;
        }
        self.buffer.extend_from_slice(record);
        self.count += 1;
        true
    }

    /// Body access for NAK/fragment bodies; the caller keeps within `capacity` and sets count.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    pub fn set_count(&mut self, count: u16) {
        self.count = count;
    }

    /// The publisher of every record packed so far, if they share one (records only).
    pub fn single_publisher(&self) -> Option<[u8; 20]> {
        let mut at = HEADER_LENGTH;
        let mut publisher: Option<[u8; 20]> = None;
        for _ in 0..self.count {
            let length = u32::from_le_bytes(self.buffer[at..at + 4].try_into().ok()?) as usize;
            let this: [u8; 20] = self.buffer[at + 4..at + 24].try_into().ok()?;
            match publisher {
                Some(p) if p != this => return None,
                _ => publisher = Some(this),
            }
            at += length;
        }
        publisher
    }

    /// Pads the datagram with zeros to `length` (for equal-size GSO segments).
    pub fn pad_to(&mut self, length: usize) {
        assert!(length >= self.buffer.len() && length <= self.capacity);
        self.buffer.resize(length, 0);
    }

    /// Writes the header and returns the finished datagram.
    pub fn finish(&mut self, mut fields: HeaderFields, key: &crate::linktag::LinkKey) -> &[u8] {
        fields.message_count = self.count;
        fields.total_length = u16::try_from(self.buffer.len()).expect("capacity bounds the length");
        write_header(&fields, key, &mut self.buffer);
        &self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linktag::LinkKey;

    fn sample_header() -> DatagramHeader {
        DatagramHeader {
            magic: MAGIC,
            version: VERSION,
            kind: Kind::Data as u8,
            link_id: 0x0102_0304,
            link_seq: 0x1122_3344_5566_7788,
            stream_part_key: [7; 32],
            flags: FLAG_SINGLE_PUBLISHER,
            message_count: 3,
            total_length: 1000,
            reserved: [0; 6],
            publisher: [9; 20],
            link_tag: 0xdead_beef_0bad_f00d,
        }
    }

    // Goal: the archived (rkyv) layouts are exactly the sizes the spec states, so the hand
    // writer, rkyv's reader, the XDP program and docs/protocol.md agree byte for byte.
    #[test]
    fn archived_sizes_match_the_spec() {
        assert_eq!(std::mem::size_of::<ArchivedDatagramHeader>(), HEADER_LENGTH);
        assert_eq!(std::mem::size_of::<ArchivedMessageHeader>(), MESSAGE_HEADER_LENGTH);
        assert_eq!(std::mem::size_of::<ArchivedFragmentHeader>(), FRAGMENT_HEADER_LENGTH);
        assert_eq!(std::mem::size_of::<ArchivedNakRange>(), NAK_RANGE_LENGTH);
        assert_eq!(std::mem::align_of::<ArchivedMessageHeader>(), 1);
    }

    // Goal: the hand-written header encoding equals rkyv's own serialization of the same
    // struct (minus the tag, which the writer computes).
    #[test]
    fn hand_written_header_equals_rkyv_serialization() {
        let header = sample_header();
        let key = LinkKey([5; 32]);
        let mut out = [0u8; HEADER_LENGTH];
        write_header(
            &HeaderFields {
                kind: Kind::Data,
                link_id: header.link_id,
                link_seq: header.link_seq,
                stream_part_key: header.stream_part_key,
                flags: header.flags,
                message_count: header.message_count,
                total_length: header.total_length,
                publisher: header.publisher,
            },
            &key,
            &mut out,
        );
        let tag = crate::linktag::link_tag(&key, &out[..TAGGED_HEADER_LENGTH]);
        let expected = rkyv::to_bytes::<rkyv::rancor::Error>(&DatagramHeader { link_tag: tag, ..header }).unwrap();
        assert_eq!(&out[..], &expected[..]);
    }

    fn sample_message(payload_length: usize) -> MessageFields {
        MessageFields {
            publisher: [0xab; 20],
            chain_id: 42,
            timestamp_ms: 1_700_000_000_000,
            sequence: 17,
            previous: Some((1_699_999_999_999, 16)),
            content_type: ContentType::Json,
            encryption: Encryption::None,
            group_key_id: vec![],
            payload: vec![0x5a; payload_length],
        }
    }

    // Goal: records round-trip through the encoder and the in-place reader, for single and
    // batch signatures, and the reader's field values equal rkyv's serialization layout.
    #[test]
    fn record_round_trip() {
        let message = sample_message(100);
        let mut out = Vec::new();
        message.encode(&[1; SIGNATURE_LENGTH], None, &mut out);
        let proof = BatchProof { leaf_index: 2, path: vec![[3; 32], [4; 32]] };
        message.encode(&[2; SIGNATURE_LENGTH], Some(&proof), &mut out);
        let first = Record::parse(&out).unwrap();
        assert_eq!(first.bytes.len(), message.record_length(0));
        assert_eq!(first.payload, &message.payload[..]);
        assert_eq!(first.previous(), message.previous);
        assert_eq!(first.signature_kind(), SignatureKind::Single);
        let second = Record::parse(&out[first.bytes.len()..]).unwrap();
        assert_eq!(second.signature_kind(), SignatureKind::Batch);
        assert_eq!(second.header.leaf_index.to_native(), 2);
        assert_eq!(second.proof.len(), 64);
        assert_eq!(second.signature, &[2; SIGNATURE_LENGTH]);
    }

    // Goal: a datagram packed by the builder parses back with every record, padding is
    // skipped, and a GRO-style concatenation splits at total_length.
    #[test]
    fn builder_packs_and_splitter_walks() {
        let key = LinkKey([1; 32]);
        let mut record = Vec::new();
        sample_message(64).encode(&[1; SIGNATURE_LENGTH], None, &mut record);
        let mut builder = DatagramBuilder::new(DATAGRAM_LENGTH_DEFAULT);
        let mut packed = 0;
        while builder.try_push(&record) {
            packed += 1;
        }
        assert_eq!(packed, (DATAGRAM_LENGTH_DEFAULT - HEADER_LENGTH) / record.len());
        builder.pad_to(DATAGRAM_LENGTH_DEFAULT);
        let fields = HeaderFields::new(Kind::Data, 7, 1, [2; 32]);
        let mut coalesced = builder.finish(fields, &key).to_vec();
        builder.reset();
        builder.try_push(&record);
        coalesced.extend_from_slice(builder.finish(HeaderFields { link_seq: 2, ..fields }, &key));
        let datagrams: Vec<_> = split_datagrams(&coalesced).collect::<Result<_, _>>().unwrap();
        assert_eq!(datagrams.len(), 2);
        assert!(datagrams.iter().all(|d| d.tag_matches(&key)));
        assert!(!datagrams[0].tag_matches(&LinkKey([2; 32])));
        assert_eq!(datagrams[0].records().count(), packed);
        assert_eq!(datagrams[1].records().count(), 1);
        assert_eq!(datagrams[1].link_seq(), 2);
    }

    // Goal: every truncation of a valid datagram is an error, never a panic, and bad
    // version/magic/kind are named.
    #[test]
    fn truncations_and_bad_fields_are_errors() {
        let key = LinkKey([1; 32]);
        let mut record = Vec::new();
        sample_message(10).encode(&[1; SIGNATURE_LENGTH], None, &mut record);
        let mut builder = DatagramBuilder::new(512);
        builder.try_push(&record);
        let fields = HeaderFields::new(Kind::Data, 1, 1, [0; 32]);
        let bytes = builder.finish(fields, &key).to_vec();
        for cut in 0..bytes.len() {
            let outcome = Datagram::parse(&bytes[..cut]).map(|d| d.records().collect::<Result<Vec<_>, _>>());
            assert!(!matches!(outcome, Ok(Ok(_))), "cut at {cut} parsed");
        }
        let mut wrong_version = bytes.clone();
        wrong_version[2] = 9;
        assert_eq!(Datagram::parse(&wrong_version).err(), Some(WireError::UnsupportedVersion(9)));
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] = 0;
        assert_eq!(Datagram::parse(&wrong_magic).err(), Some(WireError::BadMagic));
        let mut wrong_kind = bytes;
        wrong_kind[3] = 77;
        assert_eq!(Datagram::parse(&wrong_kind).err(), Some(WireError::UnknownKind(77)));
    }
}
