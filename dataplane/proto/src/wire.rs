//! The wire format: datagrams and what they carry. No I/O here.
//!
//! A datagram is one UDP payload on a link: an 88-byte [`DatagramHeader`] followed by a body
//! whose meaning depends on the kind. Data datagrams carry frames ([`crate::frame`]) of one
//! stream part back to back; Nak datagrams carry frame sequence ranges to resend, IHave
//! datagrams the same ranges as an announcement ("I have these frames"); Subscribe,
//! Unsubscribe and Prune carry no body.
//!
//! Fixed-size parts (datagram header, frame header, message entry, NAK range) are
//! `rkyv` archives read in place: [`rkyv::access`] validates them (bytecheck) and returns a
//! reference into the receive buffer, so parsing copies nothing. We build with rkyv's
//! `unaligned` + `little_endian` format, so the archived layout is the declared field order,
//! little-endian, without padding, valid at any offset: records packed back to back need no
//! alignment. Writing is done by hand into the same layout (a test checks both agree),
//! because the hot path appends into a preallocated datagram buffer.
//!
//! `total_length` in the header is the length of the whole datagram including any padding
//! after its last frame, so a GRO-coalesced receive buffer splits into datagrams by walking
//! `total_length` alone ([`split_datagrams`]), without the `UDP_GRO` cmsg. The full byte layout
//! is specified in `docs/protocol.md`.

pub use crate::frame::{Frame, SignatureKind};
use rkyv::{rancor::Failure, Archive};
use std::fmt;

/// First two bytes of every Runnel datagram: ASCII "RN".
pub const MAGIC: u16 = u16::from_le_bytes(*b"RN");
/// The only protocol version this build speaks.
pub const VERSION: u8 = 2;
/// Bytes of the datagram header, tag included.
pub const HEADER_LENGTH: usize = 88;
/// Bytes of the header covered by the link tag (ten 64-bit words).
pub const TAGGED_HEADER_LENGTH: usize = 80;
/// Bytes of a recoverable secp256k1 signature: r ‖ s ‖ v (v = 27 or 28).
pub const SIGNATURE_LENGTH: usize = 65;
/// Bytes of one NAK range (also one IHave range: the same encoding).
pub const NAK_RANGE_LENGTH: usize = 44;
/// Bytes of a Credit datagram's body: the granted link sequence.
pub const CREDIT_BODY_LENGTH: usize = 8;
/// Largest payload a message may carry (DESIGN.md §1).
pub const PAYLOAD_LENGTH_MAX: usize = 1 << 20;
/// Default datagram size: the UDP payload that fits a 1500-byte Ethernet MTU.
pub const DATAGRAM_LENGTH_DEFAULT: usize = 1472;
/// Largest UDP payload over IPv4.
pub const DATAGRAM_LENGTH_MAX: usize = 65507;

/// Datagram kinds (header byte 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Frames of one stream part.
    Data = 1,
    // 2 was v1's Fragment: a message larger than a frame now spans frames.
    /// "Please resend these frame sequence ranges" to a neighbor.
    Nak = 3,
    /// "Send me this stream part" (client) / "I am in this stream part's overlay" (neighbor).
    /// Refreshed every second; interest expires without refresh.
    Subscribe = 4,
    /// Withdraws a Subscribe.
    Unsubscribe = 5,
    /// "You may send Data up to this link sequence": the receiver's window grant (flow
    /// control). Body: [`CREDIT_BODY_LENGTH`] bytes, the granted link sequence (u64 LE).
    Credit = 6,
    /// "I have these frames" to a lazy neighbor (Plumtree's lazy push): the frame ids a full
    /// frame would have carried, as [`NakRange`]s, so the receiver can NAK (graft) what it
    /// lacks. Body: `message_count` ranges, exactly a Nak's encoding.
    IHave = 7,
    /// "Stop sending me this stream part's frames in full; announce them" (Plumtree's prune:
    /// the receiver got them twice). No body.
    Prune = 8,
}

impl Kind {
    pub fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Data,
            3 => Kind::Nak,
            4 => Kind::Subscribe,
            5 => Kind::Unsubscribe,
            6 => Kind::Credit,
            7 => Kind::IHave,
            8 => Kind::Prune,
            _ => return None,
        })
    }
}

/// Header flag: every frame in this datagram is from the publisher named in the header.
pub const FLAG_SINGLE_PUBLISHER: u16 = 1 << 0;
/// Header flag: the frames answer a NAK (they are resent, not new).
pub const FLAG_REPAIR: u16 = 1 << 1;
/// All header flags this version defines; others must be zero.
pub const FLAGS_KNOWN: u16 = FLAG_SINGLE_PUBLISHER | FLAG_REPAIR;

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
    BadFrameLength { declared: u32, computed: usize },
    BadContentType(u8),
    BadEncryption(u8),
    BadSignatureKind(u8),
    ProofTooDeep(u8),
    PayloadTooLarge(u32),
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
            WireError::BadFrameLength { declared, computed } => {
                write!(f, "frame length {declared} does not match its fields ({computed})")
            }
            WireError::BadContentType(x) => write!(f, "unknown content type {x}"),
            WireError::BadEncryption(x) => write!(f, "unknown encryption type {x}"),
            WireError::BadSignatureKind(x) => write!(f, "unknown signature kind {x}"),
            WireError::ProofTooDeep(d) => write!(f, "batch proof depth {d} exceeds {}", crate::frame::PROOF_DEPTH_MAX),
            WireError::PayloadTooLarge(n) => write!(f, "payload of {n} bytes exceeds {PAYLOAD_LENGTH_MAX}"),
            WireError::MessageCountMismatch { declared, found } => write!(f, "header declares {declared} frames, body holds {found}"),
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

    /// Iterates the frames of a Data datagram. Each item is validated; iteration stops at
    /// the first error, and after `message_count` frames (the rest is padding).
    pub fn frames(&self) -> Frames<'a> {
        Frames { rest: self.body, remaining: self.message_count() }
    }

    /// The ranges of a Nak or IHave datagram (one encoding for both).
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

    /// The link sequence a Credit datagram grants: Data up to and including it may be sent.
    pub fn credit(&self) -> Result<u64, WireError> {
        need(self.body, CREDIT_BODY_LENGTH)?;
        let granted = u64::from_le_bytes(self.body[..CREDIT_BODY_LENGTH].try_into().expect("length checked"));
        Ok(granted)
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

/// Iterator over the frames of a Data datagram.
pub struct Frames<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match Frame::parse(self.rest) {
            Ok(frame) => {
                self.remaining -= 1;
                self.rest = &self.rest[frame.bytes.len()..];
                Some(Ok(frame))
            }
            Err(error) => {
                self.remaining = 0;
                Some(Err(error))
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
    /// fills in the frame count and total length when it seals the datagram.
    pub fn new(kind: Kind, link_id: u32, link_seq: u64, stream_part_key: [u8; 32]) -> Self {
        Self { kind, link_id, link_seq, stream_part_key, flags: 0, message_count: 0, total_length: 0, publisher: [0; 20] }
    }
}

/// Writes the 88-byte header into `out[..88]`, computing the link tag with `key`.
pub fn write_header(fields: &HeaderFields, key: &crate::linktag::LinkKey, out: &mut [u8]) {
    write_fields(fields, out);
    let tag = crate::linktag::link_tag(key, &out[..TAGGED_HEADER_LENGTH]);
    out[80..88].copy_from_slice(&tag.to_le_bytes());
}

/// Writes the header's fields into `out[..80]`; the tag is written later by [`stamp`].
fn write_fields(fields: &HeaderFields, out: &mut [u8]) {
    let out = &mut out[..TAGGED_HEADER_LENGTH];
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
}

/// Writes a finished datagram header's link id and link sequence, then its link tag.
///
/// Senders number datagrams as they leave (flow control holds Data back, so a control
/// datagram sent meanwhile must never put a held one behind the receiver's replay window),
/// and a relay stamps one shared header template per link it sends a datagram to: the body
/// is never copied per link. `header` is at least the first [`HEADER_LENGTH`] bytes.
pub fn stamp(header: &mut [u8], link_id: u32, link_seq: u64, key: &crate::linktag::LinkKey) {
    header[4..8].copy_from_slice(&link_id.to_le_bytes());
    header[8..16].copy_from_slice(&link_seq.to_le_bytes());
    let tag = crate::linktag::link_tag(key, &header[..TAGGED_HEADER_LENGTH]);
    header[80..88].copy_from_slice(&tag.to_le_bytes());
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

    /// Appends a whole frame if it fits; returns false (and appends nothing) if not.
    pub fn try_push(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.remaining() || self.count == u16::MAX {
            return false;
        }
        self.buffer.extend_from_slice(frame);
        self.count += 1;
        true
    }

    /// Body access for NAK bodies; the caller keeps within `capacity` and sets count.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    pub fn set_count(&mut self, count: u16) {
        self.count = count;
    }

    /// The publisher of every frame packed so far, if they share one (frames only: a frame's
    /// length is its first u32 and its publisher the 20 bytes after it).
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

    /// Writes the header without its link sequence and tag: the sender numbers and tags the
    /// datagram with [`stamp`] when it leaves.
    pub fn finish_unstamped(&mut self, mut fields: HeaderFields) -> &[u8] {
        fields.message_count = self.count;
        fields.total_length = u16::try_from(self.buffer.len()).expect("capacity bounds the length");
        write_fields(&fields, &mut self.buffer);
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
        assert_eq!(std::mem::size_of::<ArchivedNakRange>(), NAK_RANGE_LENGTH);
        assert_eq!(std::mem::align_of::<crate::frame::ArchivedFrameHeader>(), 1);
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

    /// A valid single-signature frame of one message with `payload_length` bytes.
    fn sample_frame(payload_length: usize) -> Vec<u8> {
        use crate::frame::{EntryFields, FrameStart, FrameWriter};
        let start = FrameStart {
            publisher: [0xab; 20],
            chain_id: 42,
            sequence: 17,
            first_message_sequence: 17,
            previous: Some((1_699_999_999_999, 16)),
            signature_kind: SignatureKind::Single,
            proof_depth: 0,
            leaf_index: 0,
            continuation: false,
        };
        let payload = vec![0x5a; payload_length];
        let entry = EntryFields {
            timestamp_ms: 1_700_000_000_000,
            content_type: ContentType::Json,
            encryption: Encryption::None,
            group_key_id: b"",
            payload: &payload,
        };
        let mut out = Vec::new();
        let mut writer = FrameWriter::begin(&mut out, &start, crate::frame::FRAME_LENGTH_MAX);
        assert!(writer.push(&mut out, &entry, Some(&[1; SIGNATURE_LENGTH])));
        writer.finish(&mut out, false);
        out
    }

    // Goal: a datagram packed by the builder parses back with every frame, padding is
    // skipped, and a GRO-style concatenation splits at total_length.
    #[test]
    fn builder_packs_and_splitter_walks() {
        let key = LinkKey([1; 32]);
        let record = sample_frame(64);
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
        assert_eq!(datagrams[0].frames().count(), packed);
        assert_eq!(datagrams[1].frames().count(), 1);
        assert_eq!(datagrams[1].link_seq(), 2);
    }

    // Goal: a Credit datagram carries its grant, a short body is an error, and a datagram
    // finished unstamped and numbered later is the same as one finished with its sequence.
    #[test]
    fn credit_grants_and_datagrams_stamped_later() {
        let key = LinkKey([3; 32]);
        let mut builder = DatagramBuilder::new(HEADER_LENGTH + CREDIT_BODY_LENGTH);
        builder.body_mut().extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let mut credit = builder.finish_unstamped(HeaderFields::new(Kind::Credit, 9, 0, [4; 32])).to_vec();
        stamp(&mut credit, 9, 77, &key);
        let parsed = Datagram::parse(&credit).unwrap();
        assert_eq!((parsed.kind, parsed.link_seq(), parsed.credit()), (Kind::Credit, 77, Ok(0x0102_0304_0506_0708)));
        assert!(parsed.tag_matches(&key));
        let mut short = credit[..HEADER_LENGTH + 7].to_vec();
        short[52..54].copy_from_slice(&((HEADER_LENGTH + 7) as u16).to_le_bytes());
        stamp(&mut short, 9, 78, &key);
        assert!(Datagram::parse(&short).unwrap().credit().is_err());

        let record = sample_frame(20);
        let fields = HeaderFields::new(Kind::Data, 5, 0, [6; 32]);
        let mut builder = DatagramBuilder::new(512);
        builder.try_push(&record);
        let direct = builder.finish(HeaderFields { link_seq: 123, ..fields }, &key).to_vec();
        let mut later = builder.finish_unstamped(fields).to_vec();
        stamp(&mut later, 5, 123, &key);
        assert_eq!(direct, later);
        // A template finished for no link, stamped for link 5, is the same datagram.
        let mut template = builder.finish_unstamped(HeaderFields::new(Kind::Data, 0, 0, [6; 32])).to_vec();
        stamp(&mut template, 5, 123, &key);
        assert_eq!(direct, template);
    }

    // Goal: every kind survives its byte, the retired and unknown bytes do not, and an IHave
    // carries its ranges in the Nak encoding (an inverted range is an error).
    #[test]
    fn kinds_round_trip_and_ihave_carries_ranges() {
        for kind in [Kind::Data, Kind::Nak, Kind::Subscribe, Kind::Unsubscribe, Kind::Credit, Kind::IHave, Kind::Prune] {
            assert_eq!(Kind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(Kind::from_u8(2), None);
        assert_eq!(Kind::from_u8(9), None);
        let key = LinkKey([3; 32]);
        let range = NakRange { publisher: [7; 20], chain_id: 9, first_sequence: 10, last_sequence: 12 };
        let mut builder = DatagramBuilder::new(512);
        encode_nak_range(&range, builder.body_mut());
        builder.set_count(1);
        let bytes = builder.finish(HeaderFields::new(Kind::IHave, 1, 1, [0; 32]), &key).to_vec();
        let parsed = Datagram::parse(&bytes).unwrap();
        assert_eq!(parsed.kind, Kind::IHave);
        let ranges: Vec<_> = parsed.nak_ranges().unwrap().map(|r| (r.first_sequence.to_native(), r.last_sequence.to_native())).collect();
        assert_eq!(ranges, vec![(10, 12)]);
        builder.reset();
        encode_nak_range(&NakRange { first_sequence: 13, ..range }, builder.body_mut());
        builder.set_count(1);
        let inverted = builder.finish(HeaderFields::new(Kind::IHave, 1, 2, [0; 32]), &key).to_vec();
        assert!(Datagram::parse(&inverted).unwrap().nak_ranges().is_err());
    }

    // Goal: every truncation of a valid datagram is an error, never a panic, and bad
    // version/magic/kind are named.
    #[test]
    fn truncations_and_bad_fields_are_errors() {
        let key = LinkKey([1; 32]);
        let record = sample_frame(10);
        let mut builder = DatagramBuilder::new(512);
        builder.try_push(&record);
        let fields = HeaderFields::new(Kind::Data, 1, 1, [0; 32]);
        let bytes = builder.finish(fields, &key).to_vec();
        for cut in 0..bytes.len() {
            let outcome = Datagram::parse(&bytes[..cut]).map(|d| d.frames().collect::<Result<Vec<_>, _>>());
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
