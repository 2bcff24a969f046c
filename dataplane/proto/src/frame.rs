//! Frames: the unit of authentication, dedup, forwarding, repair and storage (protocol v2).
//!
//! A frame is a contiguous run of one publisher chain's messages in one stream part, sized to
//! fit one datagram body. What the messages share — publisher, chain, frame sequence, the
//! first message's sequence and previous reference — is written once in a 72-byte
//! [`FrameHeader`]; per message only what differs follows (a 15-byte [`MessageEntry`]: timestamp,
//! content type, encryption, group key id length, payload length; then the group key id and
//! the payload). A frame is authenticated on its own, in one of two ways:
//!
//! - **single** (`signature_kind = 0`): every message is followed by its own 65-byte Ethereum
//!   signature over its canonical bytes (docs/protocol.md §8), so any wallet or contract can
//!   check one message alone;
//! - **batch** (`signature_kind = 1`): the frame ends with a trailer — the publisher's
//!   signature over a Merkle root of up to [`BATCH_FRAMES_MAX`] frames, and this frame's
//!   proof: `proof_depth` sibling hashes of [`PROOF_ENTRY_LENGTH`] bytes — so any node
//!   verifies any frame alone with a leaf hash, a few node hashes and a cached root.
//!
//! Frame sequences are contiguous per (publisher, chain) from 0: they are what relays dedup,
//! order, NAK and repair. Message sequences are contiguous too, `first_message_sequence + i`
//! for the i-th message; a message larger than one frame spans consecutive frames (flags
//! [`FRAME_FLAG_CONTINUES`] on all but its last piece, [`FRAME_FLAG_CONTINUATION`] on all
//! but its first), each authenticated on its own, so nothing is reassembled before it is
//! verified; the subscriber joins the pieces after ordered delivery. Such frames are always
//! batch-authenticated.
//!
//! Nodes forward frames byte for byte: every hop and every subscriber verifies the same bytes.
//! Frames are read in place: [`Frame::parse`] validates the header (rkyv, bytecheck) and walks
//! the message entries once; [`Frame::messages`] walks them again without checks.

use crate::wire::{ContentType, Encryption, WireError, PAYLOAD_LENGTH_MAX, SIGNATURE_LENGTH};
use rkyv::{rancor::Failure, Archive};

/// Bytes of the fixed frame header.
pub const FRAME_HEADER_LENGTH: usize = 72;
/// Bytes of the fixed part of one message entry.
pub const MESSAGE_ENTRY_LENGTH: usize = 15;
/// Bytes of one batch proof entry: a SHA-256 node truncated to 160 bits (docs/decisions-frames.md).
pub const PROOF_ENTRY_LENGTH: usize = 20;
/// Frames under one batch signature.
pub const BATCH_FRAMES_MAX: usize = 64;
/// Deepest batch proof: log2([`BATCH_FRAMES_MAX`]).
pub const PROOF_DEPTH_MAX: usize = 6;
/// Largest frame: a whole IPv4 UDP payload minus the datagram header.
pub const FRAME_LENGTH_MAX: usize = crate::wire::DATAGRAM_LENGTH_MAX - crate::wire::HEADER_LENGTH;
/// Smallest frame body a publisher needs: one message entry with a byte of payload, its
/// signature, and the deepest batch trailer.
pub const FRAME_LENGTH_MIN: usize =
    FRAME_HEADER_LENGTH + MESSAGE_ENTRY_LENGTH + 255 + 1 + SIGNATURE_LENGTH + PROOF_ENTRY_LENGTH * PROOF_DEPTH_MAX;

/// Frame flag: the first message has a previous reference (in the header).
pub const FRAME_FLAG_HAS_PREVIOUS: u8 = 1 << 0;
/// Frame flag: the last message's payload continues in the next frame of the chain.
pub const FRAME_FLAG_CONTINUES: u8 = 1 << 1;
/// Frame flag: the first message continues the previous frame's last message.
pub const FRAME_FLAG_CONTINUATION: u8 = 1 << 2;
/// All frame flags this version defines.
pub const FRAME_FLAGS_KNOWN: u8 = FRAME_FLAG_HAS_PREVIOUS | FRAME_FLAG_CONTINUES | FRAME_FLAG_CONTINUATION;

/// The fixed frame header as rkyv archives it (read in place).
#[derive(Archive, rkyv::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct FrameHeader {
    /// Bytes of the whole frame, trailer included.
    pub frame_length: u32,
    pub publisher: [u8; 20],
    pub chain_id: u64,
    /// Position of this frame in its chain (contiguous from 0).
    pub sequence: u64,
    /// Sequence of the first message (or of the message this frame continues).
    pub first_message_sequence: u64,
    /// Previous reference of the first message (zero without [`FRAME_FLAG_HAS_PREVIOUS`]).
    pub previous_timestamp_ms: u64,
    pub previous_sequence: u64,
    /// `0` single (a signature per message), `1` batch (a trailer).
    pub signature_kind: u8,
    pub flags: u8,
    pub message_count: u16,
    pub proof_depth: u8,
    pub leaf_index: u8,
    pub reserved: u16,
}

/// The fixed part of one message entry.
#[derive(Archive, rkyv::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MessageEntry {
    pub timestamp_ms: u64,
    pub content_type: u8,
    pub encryption: u8,
    pub group_key_id_length: u8,
    pub payload_length: u32,
}

/// How a frame is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SignatureKind {
    /// Each message carries its own signature.
    Single = 0,
    /// The frame carries a batch root signature and its Merkle proof.
    Batch = 1,
}

/// One message as it lies in a frame, borrowed from the frame's bytes.
#[derive(Clone, Copy, Debug)]
pub struct MessageView<'a> {
    pub sequence: u64,
    pub timestamp_ms: u64,
    pub previous: Option<(u64, u64)>,
    pub content_type: ContentType,
    pub encryption: Encryption,
    pub group_key_id: &'a [u8],
    /// This frame's piece of the payload (the whole payload unless the message spans frames).
    pub payload: &'a [u8],
    /// Single frames: the message's own signature.
    pub signature: Option<&'a [u8; SIGNATURE_LENGTH]>,
    /// The payload continues in the next frame.
    pub continues: bool,
    /// This is a later piece of a message begun in an earlier frame.
    pub continuation: bool,
}

/// A validated frame, borrowed from the receive buffer.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    pub header: &'a ArchivedFrameHeader,
    /// The whole frame (what is forwarded, stored and hashed).
    pub bytes: &'a [u8],
}

fn need(bytes: &[u8], needed: usize) -> Result<(), WireError> {
    if bytes.len() < needed {
        Err(WireError::Truncated { needed, available: bytes.len() })
    } else {
        Ok(())
    }
}

/// Bytes of a batch trailer with a proof of `depth` entries.
pub fn trailer_length(depth: usize) -> usize {
    SIGNATURE_LENGTH + PROOF_ENTRY_LENGTH * depth
}

impl<'a> Frame<'a> {
    /// Validates the frame at the start of `bytes` (which may hold more after it).
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, WireError> {
        need(bytes, FRAME_HEADER_LENGTH)?;
        let header = rkyv::access::<ArchivedFrameHeader, Failure>(&bytes[..FRAME_HEADER_LENGTH]).map_err(|_| WireError::Invalid)?;
        let length = header.frame_length.to_native() as usize;
        if !(FRAME_HEADER_LENGTH..=FRAME_LENGTH_MAX).contains(&length) {
            return Err(WireError::BadFrameLength { declared: header.frame_length.to_native(), computed: FRAME_HEADER_LENGTH });
        }
        need(bytes, length)?;
        let frame = Frame { header, bytes: &bytes[..length] };
        frame.check_header()?;
        let computed = frame.walk_entries()? + frame.trailer_length();
        if computed != length {
            return Err(WireError::BadFrameLength { declared: length as u32, computed });
        }
        Ok(frame)
    }

    fn check_header(&self) -> Result<(), WireError> {
        let header = self.header;
        if header.flags & !FRAME_FLAGS_KNOWN != 0 || header.reserved.to_native() != 0 {
            return Err(WireError::NonZeroReserved);
        }
        let depth = header.proof_depth as usize;
        let pieces = header.flags & (FRAME_FLAG_CONTINUES | FRAME_FLAG_CONTINUATION) != 0;
        match header.signature_kind {
            0 if depth != 0 || header.leaf_index != 0 => return Err(WireError::ProofTooDeep(header.proof_depth)),
            0 if pieces => return Err(WireError::Invalid),
            0 => {}
            1 if depth > PROOF_DEPTH_MAX => return Err(WireError::ProofTooDeep(header.proof_depth)),
            1 if (header.leaf_index as usize) >= (1 << depth) => return Err(WireError::Invalid),
            1 => {}
            other => return Err(WireError::BadSignatureKind(other)),
        }
        if header.flags & FRAME_FLAG_HAS_PREVIOUS == 0
            && (header.previous_timestamp_ms.to_native() != 0 || header.previous_sequence.to_native() != 0)
        {
            return Err(WireError::NonZeroReserved);
        }
        let count = header.message_count.to_native() as u64;
        if count == 0 || header.first_message_sequence.to_native().checked_add(count).is_none() {
            return Err(WireError::Invalid);
        }
        Ok(())
    }

    /// Validates every message entry; returns where the last one ends.
    fn walk_entries(&self) -> Result<usize, WireError> {
        let single = self.header.signature_kind == 0;
        let mut at = FRAME_HEADER_LENGTH;
        for _ in 0..self.header.message_count.to_native() {
            need(&self.bytes[at..], MESSAGE_ENTRY_LENGTH)?;
            let entry = rkyv::access::<ArchivedMessageEntry, Failure>(&self.bytes[at..at + MESSAGE_ENTRY_LENGTH])
                .map_err(|_| WireError::Invalid)?;
            if entry.content_type > ContentType::Binary as u8 {
                return Err(WireError::BadContentType(entry.content_type));
            }
            if entry.encryption > Encryption::Aes256Gcm as u8 {
                return Err(WireError::BadEncryption(entry.encryption));
            }
            let payload_length = entry.payload_length.to_native();
            if payload_length as usize > PAYLOAD_LENGTH_MAX {
                return Err(WireError::PayloadTooLarge(payload_length));
            }
            at += MESSAGE_ENTRY_LENGTH + entry.group_key_id_length as usize + payload_length as usize;
            if single {
                at += SIGNATURE_LENGTH;
            }
            need(self.bytes, at)?;
        }
        Ok(at)
    }

    pub fn publisher(&self) -> [u8; 20] {
        self.header.publisher
    }

    pub fn chain_id(&self) -> u64 {
        self.header.chain_id.to_native()
    }

    /// The frame's position in its chain.
    pub fn sequence(&self) -> u64 {
        self.header.sequence.to_native()
    }

    pub fn first_message_sequence(&self) -> u64 {
        self.header.first_message_sequence.to_native()
    }

    pub fn message_count(&self) -> u16 {
        self.header.message_count.to_native()
    }

    pub fn flags(&self) -> u8 {
        self.header.flags
    }

    pub fn signature_kind(&self) -> SignatureKind {
        if self.header.signature_kind == 1 {
            SignatureKind::Batch
        } else {
            SignatureKind::Single
        }
    }

    /// Previous reference of the first message.
    pub fn previous(&self) -> Option<(u64, u64)> {
        (self.header.flags & FRAME_FLAG_HAS_PREVIOUS != 0)
            .then(|| (self.header.previous_timestamp_ms.to_native(), self.header.previous_sequence.to_native()))
    }

    fn trailer_length(&self) -> usize {
        match self.header.signature_kind {
            1 => trailer_length(self.header.proof_depth as usize),
            _ => 0,
        }
    }

    /// The bytes a batch leaf hashes: the frame without its trailer.
    pub fn signed_bytes(&self) -> &'a [u8] {
        &self.bytes[..self.bytes.len() - self.trailer_length()]
    }

    /// Batch frames: the root signature and the proof (`proof_depth` entries, leaf level first).
    pub fn trailer(&self) -> Option<(&'a [u8; SIGNATURE_LENGTH], &'a [u8])> {
        if self.header.signature_kind != 1 {
            return None;
        }
        let start = self.bytes.len() - self.trailer_length();
        let signature = self.bytes[start..start + SIGNATURE_LENGTH].try_into().expect("validated length");
        Some((signature, &self.bytes[start + SIGNATURE_LENGTH..]))
    }

    pub fn leaf_index(&self) -> usize {
        self.header.leaf_index as usize
    }

    /// The messages of the frame, in order.
    pub fn messages(&self) -> Messages<'a> {
        Messages {
            bytes: self.bytes,
            at: FRAME_HEADER_LENGTH,
            index: 0,
            count: self.message_count(),
            sequence: self.first_message_sequence(),
            previous: self.previous(),
            single: self.header.signature_kind == 0,
            flags: self.header.flags,
        }
    }
}

/// Walks frames stored back to back (a publisher's output, a repair ring's bytes), each
/// validated; stops after the first error.
pub fn split_frames(bytes: &[u8]) -> SplitFrames<'_> {
    SplitFrames { rest: bytes }
}

pub struct SplitFrames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SplitFrames<'a> {
    type Item = Result<Frame<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = Frame::parse(self.rest);
        self.rest = match parsed {
            Ok(frame) => &self.rest[frame.bytes.len()..],
            Err(_) => &[],
        };
        Some(parsed)
    }
}

/// Iterator over a validated frame's messages.
pub struct Messages<'a> {
    bytes: &'a [u8],
    at: usize,
    index: u16,
    count: u16,
    sequence: u64,
    previous: Option<(u64, u64)>,
    single: bool,
    flags: u8,
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("validated frame"))
}

impl<'a> Iterator for Messages<'a> {
    type Item = MessageView<'a>;

    fn next(&mut self) -> Option<MessageView<'a>> {
        if self.index == self.count {
            return None;
        }
        let bytes = self.bytes;
        let at = self.at;
        let timestamp_ms = read_u64(bytes, at);
        let group_key_id_length = bytes[at + 10] as usize;
        let payload_length = u32::from_le_bytes(bytes[at + 11..at + 15].try_into().expect("validated frame")) as usize;
        let group_key_id = &bytes[at + MESSAGE_ENTRY_LENGTH..at + MESSAGE_ENTRY_LENGTH + group_key_id_length];
        let payload_start = at + MESSAGE_ENTRY_LENGTH + group_key_id_length;
        let payload = &bytes[payload_start..payload_start + payload_length];
        let mut end = payload_start + payload_length;
        let signature = self.single.then(|| {
            let signature = bytes[end..end + SIGNATURE_LENGTH].try_into().expect("validated frame");
            end += SIGNATURE_LENGTH;
            signature
        });
        let first = self.index == 0;
        let last = self.index + 1 == self.count;
        let view = MessageView {
            sequence: self.sequence,
            timestamp_ms,
            previous: self.previous,
            content_type: if bytes[at + 8] == 0 { ContentType::Json } else { ContentType::Binary },
            encryption: if bytes[at + 9] == 0 { Encryption::None } else { Encryption::Aes256Gcm },
            group_key_id,
            payload,
            signature,
            continues: last && self.flags & FRAME_FLAG_CONTINUES != 0,
            continuation: first && self.flags & FRAME_FLAG_CONTINUATION != 0,
        };
        self.previous = Some((timestamp_ms, self.sequence));
        self.sequence += 1;
        self.index += 1;
        self.at = end;
        Some(view)
    }
}

/// Where a frame starts: the fields its header takes before any message is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStart {
    pub publisher: [u8; 20],
    pub chain_id: u64,
    pub sequence: u64,
    pub first_message_sequence: u64,
    pub previous: Option<(u64, u64)>,
    pub signature_kind: SignatureKind,
    /// Batch frames: the proof depth (the trailer's size) and this frame's leaf.
    pub proof_depth: u8,
    pub leaf_index: u8,
    /// The first message continues the previous frame's last one.
    pub continuation: bool,
}

/// The fields of one message entry to write.
#[derive(Clone, Copy, Debug)]
pub struct EntryFields<'a> {
    pub timestamp_ms: u64,
    pub content_type: ContentType,
    pub encryption: Encryption,
    pub group_key_id: &'a [u8],
    pub payload: &'a [u8],
}

impl EntryFields<'_> {
    /// Bytes this entry takes in a frame of `kind`.
    pub fn encoded_length(&self, kind: SignatureKind) -> usize {
        MESSAGE_ENTRY_LENGTH
            + self.group_key_id.len()
            + self.payload.len()
            + if kind == SignatureKind::Single { SIGNATURE_LENGTH } else { 0 }
    }
}

/// Writes one frame at the end of a buffer: [`FrameWriter::begin`], [`FrameWriter::push`]
/// per message, [`FrameWriter::finish`]. Batch frames are finished with their trailer space
/// zeroed; the signer fills it ([`write_trailer`]).
#[derive(Debug)]
pub struct FrameWriter {
    start: usize,
    count: u16,
    kind: SignatureKind,
    trailer: usize,
    capacity: usize,
}

impl FrameWriter {
    /// Starts a frame of at most `capacity` bytes at the end of `out`.
    pub fn begin(out: &mut Vec<u8>, fields: &FrameStart, capacity: usize) -> FrameWriter {
        assert!((FRAME_HEADER_LENGTH + MESSAGE_ENTRY_LENGTH..=FRAME_LENGTH_MAX).contains(&capacity), "frame capacity {capacity}");
        assert!(fields.proof_depth as usize <= PROOF_DEPTH_MAX && (fields.leaf_index as usize) < (1 << fields.proof_depth));
        let start = out.len();
        let (previous_timestamp_ms, previous_sequence) = fields.previous.unwrap_or((0, 0));
        let mut flags = if fields.previous.is_some() { FRAME_FLAG_HAS_PREVIOUS } else { 0 };
        if fields.continuation {
            flags |= FRAME_FLAG_CONTINUATION;
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&fields.publisher);
        out.extend_from_slice(&fields.chain_id.to_le_bytes());
        out.extend_from_slice(&fields.sequence.to_le_bytes());
        out.extend_from_slice(&fields.first_message_sequence.to_le_bytes());
        out.extend_from_slice(&previous_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&previous_sequence.to_le_bytes());
        out.push(fields.signature_kind as u8);
        out.push(flags);
        out.extend_from_slice(&0u16.to_le_bytes());
        let batch = fields.signature_kind == SignatureKind::Batch;
        out.push(if batch { fields.proof_depth } else { 0 });
        out.push(if batch { fields.leaf_index } else { 0 });
        out.extend_from_slice(&0u16.to_le_bytes());
        let trailer = if batch { trailer_length(fields.proof_depth as usize) } else { 0 };
        FrameWriter { start, count: 0, kind: fields.signature_kind, trailer, capacity }
    }

    /// Bytes still free for message entries.
    pub fn remaining(&self, out: &[u8]) -> usize {
        (self.start + self.capacity).saturating_sub(out.len() + self.trailer)
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Appends a message entry (with `signature` in single frames) if it fits.
    pub fn push(&mut self, out: &mut Vec<u8>, entry: &EntryFields<'_>, signature: Option<&[u8; SIGNATURE_LENGTH]>) -> bool {
        assert_eq!(signature.is_some(), self.kind == SignatureKind::Single, "single frames sign each message, batch frames none");
        assert!(entry.group_key_id.len() <= 255 && entry.payload.len() <= PAYLOAD_LENGTH_MAX);
        if entry.encoded_length(self.kind) > self.remaining(out) || self.count == u16::MAX {
            return false;
        }
        out.extend_from_slice(&entry.timestamp_ms.to_le_bytes());
        out.push(entry.content_type as u8);
        out.push(entry.encryption as u8);
        out.push(entry.group_key_id.len() as u8);
        out.extend_from_slice(&(entry.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(entry.group_key_id);
        out.extend_from_slice(entry.payload);
        if let Some(signature) = signature {
            out.extend_from_slice(signature);
        }
        self.count += 1;
        true
    }

    /// Closes the frame: message count, length, the continues flag, zeroed trailer space.
    /// Returns the frame's range in `out`.
    pub fn finish(self, out: &mut Vec<u8>, continues: bool) -> std::ops::Range<usize> {
        assert!(self.count > 0, "a frame holds at least one message");
        out.resize(out.len() + self.trailer, 0);
        let length = out.len() - self.start;
        out[self.start..self.start + 4].copy_from_slice(&(length as u32).to_le_bytes());
        out[self.start + 66..self.start + 68].copy_from_slice(&self.count.to_le_bytes());
        if continues {
            out[self.start + 65] |= FRAME_FLAG_CONTINUES;
        }
        self.start..out.len()
    }
}

/// Fills a batch frame's trailer (its last [`trailer_length`] bytes) with the root signature
/// and the proof.
pub fn write_trailer(frame: &mut [u8], signature: &[u8; SIGNATURE_LENGTH], proof: &[[u8; PROOF_ENTRY_LENGTH]]) {
    let start = frame.len() - trailer_length(proof.len());
    frame[start..start + SIGNATURE_LENGTH].copy_from_slice(signature);
    for (index, entry) in proof.iter().enumerate() {
        let at = start + SIGNATURE_LENGTH + index * PROOF_ENTRY_LENGTH;
        frame[at..at + PROOF_ENTRY_LENGTH].copy_from_slice(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(kind: SignatureKind, depth: u8) -> FrameStart {
        FrameStart {
            publisher: [7; 20],
            chain_id: 9,
            sequence: 3,
            first_message_sequence: 40,
            previous: Some((1000, 39)),
            signature_kind: kind,
            proof_depth: depth,
            leaf_index: 0,
            continuation: false,
        }
    }

    fn entry(payload: &[u8]) -> EntryFields<'_> {
        EntryFields { timestamp_ms: 2000, content_type: ContentType::Binary, encryption: Encryption::None, group_key_id: b"", payload }
    }

    // Goal: the archived layouts have the sizes docs/protocol.md gives.
    #[test]
    fn archived_sizes_match_the_spec() {
        assert_eq!(std::mem::size_of::<ArchivedFrameHeader>(), FRAME_HEADER_LENGTH);
        assert_eq!(std::mem::size_of::<ArchivedMessageEntry>(), MESSAGE_ENTRY_LENGTH);
    }

    // Goal: a written frame parses back to the same messages, with implied sequences and
    // previous references, in both signature kinds.
    #[test]
    fn written_frames_parse_back() {
        for (kind, depth) in [(SignatureKind::Single, 0), (SignatureKind::Batch, 3)] {
            let mut out = vec![0xee; 5];
            let mut writer = FrameWriter::begin(&mut out, &start(kind, depth), 1384);
            let signature = [1u8; SIGNATURE_LENGTH];
            let signature = (kind == SignatureKind::Single).then_some(&signature);
            assert!(writer.push(&mut out, &entry(b"one"), signature));
            assert!(writer.push(&mut out, &entry(b"two!"), signature));
            let range = writer.finish(&mut out, false);
            let frame = Frame::parse(&out[range.clone()]).unwrap();
            assert_eq!((frame.sequence(), frame.message_count(), frame.bytes.len()), (3, 2, range.len()));
            let messages: Vec<_> = frame.messages().collect();
            assert_eq!(messages[0].payload, b"one");
            assert_eq!((messages[0].sequence, messages[0].previous), (40, Some((1000, 39))));
            assert_eq!((messages[1].sequence, messages[1].previous), (41, Some((2000, 40))));
            assert_eq!(messages[1].signature.is_some(), kind == SignatureKind::Single);
            assert_eq!(frame.trailer().map(|(_, proof)| proof.len()), (kind == SignatureKind::Batch).then_some(60));
        }
    }

    // Goal: a frame refuses what does not fit, and every truncation or bad field is an error.
    #[test]
    fn capacity_and_bad_fields() {
        let mut out = Vec::new();
        let mut writer = FrameWriter::begin(&mut out, &start(SignatureKind::Batch, 0), 200);
        assert!(writer.push(&mut out, &entry(&[5; 40]), None));
        assert!(!writer.push(&mut out, &entry(&[5; 100]), None));
        let range = writer.finish(&mut out, true);
        assert!(range.len() <= 200);
        let good = out.clone();
        assert!(Frame::parse(&good).unwrap().messages().next().unwrap().continues);
        for cut in 0..good.len() {
            assert!(Frame::parse(&good[..cut]).is_err(), "truncated at {cut}");
        }
        for (offset, value) in [(64, 2u8), (65, 0x80), (68, 7), (69, 1), (70, 1), (66, 0), (72 + 8, 9), (72 + 9, 2)] {
            let mut bad = good.clone();
            bad[offset] = value;
            if offset == 66 {
                bad[67] = 0;
            }
            assert!(Frame::parse(&bad).is_err(), "byte {offset} = {value}");
        }
        let mut single_pieces = good.clone();
        single_pieces[64] = 0;
        assert!(Frame::parse(&single_pieces).is_err(), "single frames never carry pieces");
    }
}
