//! The publisher side of a client: turns payloads into signed frames of one chain.
//!
//! A [`Publisher`] publishes to one stream part under one message chain: a random chain id
//! chosen when it is created (one publisher session), message sequences contiguous from 0,
//! each message's previous ref pointing at the message before it, and frame sequences
//! contiguous from 0 (what relays dedup, order and repair).
//!
//! [`Publisher::publish`] only queues the message; [`Publisher::flush`] packs everything
//! queued into frames of at most `frame_length_max` bytes ([`runnel_proto::frame`]) and signs
//! them, in one of two modes:
//! - [`SigningMode::PerMessage`]: every message gets its own Ethereum signature (~25 µs),
//!   so any wallet or contract can check one message alone;
//! - [`SigningMode::Batch`]: one Ethereum signature per Merkle root over up to
//!   `frames_per_root_max` frames; each frame carries its proof.
//!
//! So a caller that flushes after every publish sends each message at once, and a caller
//! that flushes when its previous send (or signature) is done batches exactly what piled up
//! meanwhile: the latency of an idle publisher is one signature and one send, and the ECDSA
//! cost of a busy one is shared by up to 64 full frames. A full batch's worth of pending
//! bytes flushes by itself.
//!
//! A message larger than one frame spans consecutive frames (each authenticated on its own);
//! such frames are always batch-signed, also in per-message mode, since no single frame holds
//! the bytes its per-message signature covers.
//!
//! Output is encoded frames back to back in [`Publisher::frames`], ready for
//! [`super::ClientCore::queue_frames`]. It does no I/O. Limits: one stream part per
//! publisher; the output buffer is bounded by [`FRAMES_PENDING_BYTES_MAX`], so the caller
//! must drain it ([`Publisher::clear_frames`]) after queueing.

use runnel_proto::crypto::{PublisherKey, SignedFields};
use runnel_proto::frame::{
    trailer_length, EntryFields, FrameStart, FrameWriter, SignatureKind, BATCH_FRAMES_MAX, FRAME_HEADER_LENGTH, FRAME_LENGTH_MAX,
    FRAME_LENGTH_MIN, MESSAGE_ENTRY_LENGTH, PROOF_DEPTH_MAX,
};
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{ContentType, Encryption, DATAGRAM_LENGTH_DEFAULT, HEADER_LENGTH, PAYLOAD_LENGTH_MAX};
use std::ops::Range;

/// How a publisher signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningMode {
    /// One ECDSA signature per message.
    PerMessage,
    /// One ECDSA signature per Merkle root over up to `frames_per_root_max` frames (1..=64).
    Batch { frames_per_root_max: usize },
}

/// Frames per batch signature by default: the most a root covers (proofs of 6 × 20 bytes).
pub const FRAMES_PER_ROOT_DEFAULT: usize = BATCH_FRAMES_MAX;

/// Most bytes of encoded frames a publisher holds before the caller must drain them.
pub const FRAMES_PENDING_BYTES_MAX: usize = 64 << 20;

/// One message to publish; the publisher fills in its address, chain, sequence and previous.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub timestamp_ms: u64,
    pub content_type: ContentType,
    pub encryption: Encryption,
    /// Names the group key for encrypted payloads; empty otherwise (at most 255 bytes).
    pub group_key_id: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Outgoing<'a> {
    /// An unencrypted JSON message.
    pub fn json(timestamp_ms: u64, payload: &'a [u8]) -> Self {
        Self { timestamp_ms, content_type: ContentType::Json, encryption: Encryption::None, group_key_id: &[], payload }
    }

    /// An unencrypted binary message.
    pub fn binary(timestamp_ms: u64, payload: &'a [u8]) -> Self {
        Self { timestamp_ms, content_type: ContentType::Binary, encryption: Encryption::None, group_key_id: &[], payload }
    }
}

/// Why a message was not published; nothing was consumed (its sequence is not used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishError {
    PayloadTooLarge {
        length: usize,
    },
    GroupKeyIdTooLong {
        length: usize,
    },
    /// The caller has not drained [`Publisher::frames`]; drain and retry.
    OutputFull,
    /// The client was built without a publisher key.
    NoPublisherKey,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::PayloadTooLarge { length } => {
                write!(f, "payload of {length} bytes exceeds the protocol maximum of {PAYLOAD_LENGTH_MAX}: split it")
            }
            PublishError::GroupKeyIdTooLong { length } => write!(f, "group key id of {length} bytes exceeds 255"),
            PublishError::OutputFull => write!(f, "{FRAMES_PENDING_BYTES_MAX} bytes of frames not drained: queue them first"),
            PublishError::NoPublisherKey => f.write_str("no publisher key: give the client a private key to publish"),
        }
    }
}

impl std::error::Error for PublishError {}

/// A queued message (buffers reused across flushes).
#[derive(Debug, Default)]
struct Pending {
    timestamp_ms: u64,
    sequence: u64,
    previous: Option<(u64, u64)>,
    content_type: u8,
    encryption: u8,
    group_key_id: Vec<u8>,
    payload: Vec<u8>,
}

impl Pending {
    fn entry<'a>(&'a self, payload: &'a [u8]) -> EntryFields<'a> {
        EntryFields {
            timestamp_ms: self.timestamp_ms,
            content_type: if self.content_type == 0 { ContentType::Json } else { ContentType::Binary },
            encryption: if self.encryption == 0 { Encryption::None } else { Encryption::Aes256Gcm },
            group_key_id: &self.group_key_id,
            payload,
        }
    }

    /// Entry bytes of the whole message in a frame of `kind`.
    fn encoded_length(&self, kind: SignatureKind) -> usize {
        self.entry(&self.payload).encoded_length(kind)
    }
}

/// Signs messages of one stream part into frames of one chain.
#[derive(Debug)]
pub struct Publisher {
    key: PublisherKey,
    stream_part_key: StreamPartKey,
    chain_id: u64,
    next_sequence: u64,
    next_frame_sequence: u64,
    previous: Option<(u64, u64)>,
    mode: SigningMode,
    frame_length_max: usize,
    /// Queued messages: the first `pending_count` wait for `flush`.
    pending: Vec<Pending>,
    pending_count: usize,
    /// Entry bytes of the queued messages not yet written (the auto-flush measure).
    pending_bytes: usize,
    /// While flushing: the next message to write, and how much of its payload is written.
    cursor: (usize, usize),
    frames: Vec<u8>,
    frame_count: usize,
    /// Scratch: the frames of the batch being signed.
    batch: Vec<Range<usize>>,
}

impl Publisher {
    /// A new publisher session with a random chain id, for datagrams of the default size.
    pub fn new(key: PublisherKey, stream_part_key: StreamPartKey, mode: SigningMode) -> Self {
        Self::with_chain_id(key, stream_part_key, mode, rand::random())
    }

    /// A publisher session with a chosen chain id (tests, deterministic simulations).
    pub fn with_chain_id(key: PublisherKey, stream_part_key: StreamPartKey, mode: SigningMode, chain_id: u64) -> Self {
        if let SigningMode::Batch { frames_per_root_max } = mode {
            assert!(
                (1..=BATCH_FRAMES_MAX).contains(&frames_per_root_max),
                "frames_per_root_max {frames_per_root_max} outside 1..={BATCH_FRAMES_MAX}"
            );
        }
        Self {
            key,
            stream_part_key,
            chain_id,
            next_sequence: 0,
            next_frame_sequence: 0,
            previous: None,
            mode,
            frame_length_max: DATAGRAM_LENGTH_DEFAULT - HEADER_LENGTH,
            pending: Vec::new(),
            pending_count: 0,
            pending_bytes: 0,
            cursor: (0, 0),
            frames: Vec::new(),
            frame_count: 0,
            batch: Vec::with_capacity(BATCH_FRAMES_MAX),
        }
    }

    /// Frames of at most `length` bytes: a datagram body of the link's `datagram_length_max`.
    pub fn set_frame_length_max(&mut self, length: usize) {
        assert!(
            (FRAME_LENGTH_MIN..=FRAME_LENGTH_MAX).contains(&length),
            "frame length {length} outside {FRAME_LENGTH_MIN}..={FRAME_LENGTH_MAX}"
        );
        self.frame_length_max = length;
    }

    pub fn address(&self) -> [u8; 20] {
        self.key.address()
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    pub fn stream_part_key(&self) -> StreamPartKey {
        self.stream_part_key
    }

    /// The sequence number the next message gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Messages accepted but not yet in frames.
    pub fn pending_count(&self) -> usize {
        self.pending_count
    }

    /// Assigns the next sequence and queues the message; flushes by itself once a full
    /// batch of frames is pending.
    pub fn publish(&mut self, message: &Outgoing<'_>) -> Result<(), PublishError> {
        if message.payload.len() > PAYLOAD_LENGTH_MAX {
            return Err(PublishError::PayloadTooLarge { length: message.payload.len() });
        }
        if message.group_key_id.len() > 255 {
            return Err(PublishError::GroupKeyIdTooLong { length: message.group_key_id.len() });
        }
        if self.frames.len() >= FRAMES_PENDING_BYTES_MAX {
            return Err(PublishError::OutputFull);
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        if self.pending_count == self.pending.len() {
            self.pending.push(Pending::default());
        }
        let pending = &mut self.pending[self.pending_count];
        pending.timestamp_ms = message.timestamp_ms;
        pending.sequence = sequence;
        pending.previous = self.previous;
        pending.content_type = message.content_type as u8;
        pending.encryption = message.encryption as u8;
        pending.group_key_id.clear();
        pending.group_key_id.extend_from_slice(message.group_key_id);
        pending.payload.clear();
        pending.payload.extend_from_slice(message.payload);
        self.pending_bytes += pending.encoded_length(SignatureKind::Single);
        self.pending_count += 1;
        self.previous = Some((message.timestamp_ms, sequence));
        if self.pending_bytes >= self.frames_per_root_max() * self.frame_length_max {
            self.flush();
        }
        Ok(())
    }

    fn frames_per_root_max(&self) -> usize {
        match self.mode {
            SigningMode::Batch { frames_per_root_max } => frames_per_root_max,
            SigningMode::PerMessage => BATCH_FRAMES_MAX,
        }
    }

    /// Packs and signs whatever is queued so it appears in [`Publisher::frames`].
    pub fn flush(&mut self) {
        self.cursor = (0, 0);
        while self.cursor.0 < self.pending_count {
            match self.mode {
                SigningMode::Batch { frames_per_root_max } => self.write_batch(frames_per_root_max, self.pending_count),
                SigningMode::PerMessage if self.fits_single_frame(self.cursor.0) => self.write_single_frame(),
                // Larger than one frame: its pieces are batch-signed (see the module doc).
                SigningMode::PerMessage => self.write_batch(BATCH_FRAMES_MAX, self.cursor.0 + 1),
            }
        }
        self.pending_count = 0;
        self.pending_bytes = 0;
    }

    fn fits_single_frame(&self, index: usize) -> bool {
        FRAME_HEADER_LENGTH + self.pending[index].encoded_length(SignatureKind::Single) <= self.frame_length_max
    }

    fn frame_start(&self, kind: SignatureKind, proof_depth: u8, leaf_index: u8) -> FrameStart {
        let (index, offset) = self.cursor;
        let message = &self.pending[index];
        FrameStart {
            publisher: self.key.address(),
            chain_id: self.chain_id,
            sequence: self.next_frame_sequence,
            first_message_sequence: message.sequence,
            previous: message.previous,
            signature_kind: kind,
            proof_depth,
            leaf_index,
            continuation: offset > 0,
        }
    }

    /// One single frame of whole messages from the cursor on, each signed.
    fn write_single_frame(&mut self) {
        let start = self.frame_start(SignatureKind::Single, 0, 0);
        let mut writer = FrameWriter::begin(&mut self.frames, &start, self.frame_length_max);
        while self.cursor.0 < self.pending_count && self.fits_single_frame(self.cursor.0) {
            let message = &self.pending[self.cursor.0];
            let signature = self.key.sign_message(&SignedFields {
                stream_part_key: &self.stream_part_key.0,
                publisher: &start.publisher,
                chain_id: self.chain_id,
                timestamp_ms: message.timestamp_ms,
                sequence: message.sequence,
                previous: message.previous,
                content_type: message.content_type,
                encryption: message.encryption,
                group_key_id: &message.group_key_id,
                payload: &message.payload,
            });
            if !writer.push(&mut self.frames, &message.entry(&message.payload), Some(&signature)) {
                break;
            }
            self.pending_bytes -= message.encoded_length(SignatureKind::Single);
            self.cursor.0 += 1;
        }
        writer.finish(&mut self.frames, false);
        self.next_frame_sequence += 1;
        self.frame_count += 1;
    }

    /// One batch of up to `frames_max` frames from the cursor, stopping before message
    /// `end`, signed under one root.
    fn write_batch(&mut self, frames_max: usize, end: usize) {
        let depth = self.batch_depth(frames_max);
        self.batch.clear();
        while self.cursor.0 < end && self.batch.len() < (1 << depth).min(frames_max) {
            let start = self.frame_start(SignatureKind::Batch, depth, self.batch.len() as u8);
            let range = self.write_batch_frame(&start, end);
            self.batch.push(range);
        }
        self.key.sign_frames(&self.stream_part_key, &mut self.frames, &self.batch);
    }

    /// The proof depth for the next batch: enough leaves for the frames the pending bytes
    /// need (an estimate; a batch that runs out of leaves ends early and the next continues).
    fn batch_depth(&self, frames_max: usize) -> u8 {
        let room = self.frame_length_max - FRAME_HEADER_LENGTH - trailer_length(PROOF_DEPTH_MAX) - MESSAGE_ENTRY_LENGTH;
        let frames = self.pending_bytes.div_ceil(room).clamp(1, frames_max);
        frames.next_power_of_two().trailing_zeros() as u8
    }

    /// Writes one batch frame: whole messages, and a piece of the one that does not fit.
    fn write_batch_frame(&mut self, start: &FrameStart, end: usize) -> Range<usize> {
        let mut writer = FrameWriter::begin(&mut self.frames, start, self.frame_length_max);
        let mut continues = false;
        while self.cursor.0 < end {
            let (index, offset) = self.cursor;
            let message = &self.pending[index];
            let rest = &message.payload[offset..];
            // Not even the entry fits (an empty payload would pass the check below): full.
            let Some(free) = writer.remaining(&self.frames).checked_sub(MESSAGE_ENTRY_LENGTH + message.group_key_id.len()) else {
                break;
            };
            if rest.len() <= free {
                let fits = writer.push(&mut self.frames, &message.entry(rest), None);
                assert!(fits, "the entry was measured to fit");
                self.pending_bytes -= message.encoded_length(SignatureKind::Single).min(self.pending_bytes);
                self.cursor = (index + 1, 0);
                continue;
            }
            if free > 0 && (writer.count() == 0 || rest.len() > self.frame_length_max / 2) {
                // A piece: messages larger than a frame start wherever there is room; a small
                // message that just misses waits for the next frame instead of splitting.
                let fits = writer.push(&mut self.frames, &message.entry(&rest[..free]), None);
                assert!(fits, "the piece was measured to fit");
                self.cursor = (index, offset + free);
                continues = true;
            }
            break;
        }
        self.next_frame_sequence += 1;
        self.frame_count += 1;
        writer.finish(&mut self.frames, continues)
    }

    /// Signed frames, back to back, oldest first.
    pub fn frames(&self) -> &[u8] {
        &self.frames
    }

    /// How many frames [`Publisher::frames`] holds.
    pub fn frame_count(&self) -> usize {
        self.frame_count
    }

    /// Forgets the drained frames (keeps the buffer's capacity).
    pub fn clear_frames(&mut self) {
        self.frames.clear();
        self.frame_count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_proto::crypto::{Verifier, VerifyCost};
    use runnel_proto::frame::Frame;

    fn parse_all(bytes: &[u8]) -> Vec<Frame<'_>> {
        runnel_proto::frame::split_frames(bytes).collect::<Result<_, _>>().expect("the publisher writes valid frames")
    }

    // Goal: in both modes, frames carry every message once, in order, with contiguous frame
    // and message sequences, every frame verifies, and batch mode pays one ECDSA per root.
    #[test]
    fn frames_carry_every_message_and_verify() {
        let part = StreamPartKey([1; 32]);
        for mode in [SigningMode::PerMessage, SigningMode::Batch { frames_per_root_max: 64 }, SigningMode::Batch { frames_per_root_max: 3 }]
        {
            let mut publisher = Publisher::with_chain_id(PublisherKey::generate(), part, mode, 5);
            let payloads: Vec<Vec<u8>> = (0..300u32).map(|i| vec![i as u8; (i as usize * 7) % 200]).collect();
            for payload in &payloads {
                publisher.publish(&Outgoing::binary(1000, payload)).unwrap();
            }
            publisher.flush();
            let frames = parse_all(publisher.frames());
            assert_eq!(frames.len(), publisher.frame_count());
            let mut verifier = Verifier::default();
            let mut ecdsa = 0;
            let mut next_message = 0u64;
            for (index, frame) in frames.iter().enumerate() {
                assert_eq!(frame.sequence(), index as u64);
                match verifier.verify(&part, frame).unwrap() {
                    VerifyCost::Ecdsa { signatures } => ecdsa += signatures as usize,
                    VerifyCost::CachedRoot => {}
                }
                for message in frame.messages() {
                    assert_eq!(message.sequence, next_message, "{mode:?}");
                    assert_eq!(message.payload, &payloads[next_message as usize][..]);
                    next_message += 1;
                }
            }
            assert_eq!(next_message, 300);
            match mode {
                SigningMode::PerMessage => assert_eq!(ecdsa, 300),
                SigningMode::Batch { frames_per_root_max } => {
                    assert!(ecdsa <= frames.len().div_ceil(frames_per_root_max) + 2, "{ecdsa} ECDSA for {} frames", frames.len())
                }
            }
        }
    }

    // Goal: a message larger than a frame spans consecutive batch frames (also in
    // per-message mode), each verifying alone, and its pieces join back to the payload.
    #[test]
    fn large_messages_span_frames() {
        let part = StreamPartKey([2; 32]);
        for mode in [SigningMode::PerMessage, SigningMode::Batch { frames_per_root_max: 64 }] {
            let mut publisher = Publisher::with_chain_id(PublisherKey::generate(), part, mode, 9);
            let large: Vec<u8> = (0..PAYLOAD_LENGTH_MAX).map(|i| (i * 31 % 251) as u8).collect();
            publisher.publish(&Outgoing::binary(1, b"before")).unwrap();
            publisher.publish(&Outgoing::binary(2, &large)).unwrap();
            publisher.publish(&Outgoing::binary(3, b"after")).unwrap();
            publisher.flush();
            let frames = parse_all(publisher.frames());
            assert!(frames.len() > PAYLOAD_LENGTH_MAX / 1384);
            let mut joined = Vec::new();
            let mut whole = Vec::new();
            for frame in &frames {
                assert!(Verifier::default().verify(&part, frame).is_ok(), "each frame verifies alone");
                for message in frame.messages() {
                    joined.extend_from_slice(message.payload);
                    if !message.continues {
                        whole.push((message.sequence, std::mem::take(&mut joined)));
                    }
                }
            }
            assert_eq!(whole.len(), 3);
            assert_eq!(whole[1], (1, large.clone()));
            assert_eq!(whole[2], (2, b"after".to_vec()));
        }
    }
}
