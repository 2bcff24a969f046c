//! The publisher side of a client: turns payloads into signed message records of one chain.
//!
//! A [`Publisher`] publishes to one stream part under one message chain: a random chain id
//! chosen when it is created (one publisher session), sequence numbers contiguous from 0, and
//! each message's previous ref pointing at the message before it, so subscribers and relays
//! can detect gaps and order per (publisher, chain).
//!
//! Two signing modes:
//! - [`SigningMode::PerMessage`]: every message gets its own Ethereum signature
//!   ([`PublisherKey::sign_into`], ~30–50 µs each): the default for low rates.
//! - [`SigningMode::Batch`]: messages are collected and signed together under one blake3
//!   Merkle root ([`PublisherKey::sign_batch_into`]) when `batch_size_max` are pending or the
//!   caller calls [`Publisher::flush`]. The CLI flushes every few milliseconds, so the added
//!   latency stays at the flush interval while ECDSA is paid once per batch.
//!
//! Output is encoded records back to back in [`Publisher::records`], ready for
//! [`super::ClientCore::queue_records`]. It does no I/O. Limits: one stream part per
//! publisher (chains are per stream part; a client publishing to several keeps one
//! publisher each); the output buffer is bounded by [`RECORDS_PENDING_BYTES_MAX`], so the
//! caller must drain it ([`Publisher::clear_records`]) after queueing.

use runnel_proto::crypto::{PublisherKey, BATCH_SIZE_MAX};
use runnel_proto::stream::StreamPartKey;
use runnel_proto::wire::{ContentType, Encryption, MessageFields, PAYLOAD_LENGTH_MAX};

/// How a publisher signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningMode {
    /// One ECDSA signature per message.
    PerMessage,
    /// One ECDSA signature per batch of up to `batch_size_max` messages (1..=65536).
    Batch { batch_size_max: usize },
}

/// A batch size that keeps proofs short (8 × 32 bytes) and ECDSA below 1% of the cost.
pub const BATCH_SIZE_DEFAULT: usize = 256;

/// Most bytes of encoded records a publisher holds before the caller must drain them.
pub const RECORDS_PENDING_BYTES_MAX: usize = 64 << 20;

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
    /// The caller has not drained [`Publisher::records`]; drain and retry.
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
            PublishError::OutputFull => write!(f, "{RECORDS_PENDING_BYTES_MAX} bytes of records not drained: queue them first"),
            PublishError::NoPublisherKey => f.write_str("no publisher key: give the client a private key to publish"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Signs messages of one stream part into records of one chain.
#[derive(Debug)]
pub struct Publisher {
    key: PublisherKey,
    stream_part_key: StreamPartKey,
    chain_id: u64,
    next_sequence: u64,
    previous: Option<(u64, u64)>,
    mode: SigningMode,
    /// Per-message mode: one reused message (its payload buffer keeps its capacity).
    scratch: MessageFields,
    /// Batch mode: reused messages, the first `pending_count` are waiting to be signed.
    pending: Vec<MessageFields>,
    pending_count: usize,
    records: Vec<u8>,
    record_count: usize,
}

fn empty_fields(publisher: [u8; 20], chain_id: u64) -> MessageFields {
    MessageFields {
        publisher,
        chain_id,
        timestamp_ms: 0,
        sequence: 0,
        previous: None,
        content_type: ContentType::Json,
        encryption: Encryption::None,
        group_key_id: Vec::new(),
        payload: Vec::new(),
    }
}

impl Publisher {
    /// A new publisher session with a random chain id.
    pub fn new(key: PublisherKey, stream_part_key: StreamPartKey, mode: SigningMode) -> Self {
        Self::with_chain_id(key, stream_part_key, mode, rand::random())
    }

    /// A publisher session with a chosen chain id (tests, deterministic simulations).
    pub fn with_chain_id(key: PublisherKey, stream_part_key: StreamPartKey, mode: SigningMode, chain_id: u64) -> Self {
        if let SigningMode::Batch { batch_size_max } = mode {
            assert!((1..=BATCH_SIZE_MAX).contains(&batch_size_max), "batch_size_max {batch_size_max} outside 1..={BATCH_SIZE_MAX}");
        }
        let scratch = empty_fields(key.address(), chain_id);
        Self {
            key,
            stream_part_key,
            chain_id,
            next_sequence: 0,
            previous: None,
            mode,
            scratch,
            pending: Vec::new(),
            pending_count: 0,
            records: Vec::new(),
            record_count: 0,
        }
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

    /// Messages accepted but not yet signed (batch mode).
    pub fn pending_count(&self) -> usize {
        self.pending_count
    }

    /// Assigns the next sequence and signs (per-message) or queues (batch) the message.
    pub fn publish(&mut self, message: &Outgoing<'_>) -> Result<(), PublishError> {
        if message.payload.len() > PAYLOAD_LENGTH_MAX {
            return Err(PublishError::PayloadTooLarge { length: message.payload.len() });
        }
        if message.group_key_id.len() > 255 {
            return Err(PublishError::GroupKeyIdTooLong { length: message.group_key_id.len() });
        }
        if self.records.len() >= RECORDS_PENDING_BYTES_MAX {
            return Err(PublishError::OutputFull);
        }
        let sequence = self.next_sequence;
        let previous = self.previous;
        self.next_sequence += 1;
        self.previous = Some((message.timestamp_ms, sequence));
        let fill = |fields: &mut MessageFields| {
            fields.timestamp_ms = message.timestamp_ms;
            fields.sequence = sequence;
            fields.previous = previous;
            fields.content_type = message.content_type;
            fields.encryption = message.encryption;
            fields.group_key_id.clear();
            fields.group_key_id.extend_from_slice(message.group_key_id);
            fields.payload.clear();
            fields.payload.extend_from_slice(message.payload);
        };
        match self.mode {
            SigningMode::PerMessage => {
                fill(&mut self.scratch);
                self.key.sign_into(&self.stream_part_key, &self.scratch, &mut self.records);
                self.record_count += 1;
            }
            SigningMode::Batch { batch_size_max } => {
                if self.pending_count == self.pending.len() {
                    self.pending.push(empty_fields(self.key.address(), self.chain_id));
                }
                fill(&mut self.pending[self.pending_count]);
                self.pending_count += 1;
                if self.pending_count >= batch_size_max {
                    self.flush();
                }
            }
        }
        Ok(())
    }

    /// Signs whatever is pending (batch mode) so it appears in [`Publisher::records`].
    pub fn flush(&mut self) {
        if self.pending_count == 0 {
            return;
        }
        self.key.sign_batch_into(&self.stream_part_key, &self.pending[..self.pending_count], &mut self.records);
        self.record_count += self.pending_count;
        self.pending_count = 0;
    }

    /// Signed records, back to back, oldest first.
    pub fn records(&self) -> &[u8] {
        &self.records
    }

    /// How many records [`Publisher::records`] holds.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Forgets the drained records (keeps the buffer's capacity).
    pub fn clear_records(&mut self) {
        self.records.clear();
        self.record_count = 0;
    }
}
