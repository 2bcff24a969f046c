//! Publisher signatures: Ethereum-style per-message signatures and Merkle batches of frames.
//!
//! **Per-message**: the message digest is `keccak256(canonical bytes)` (see
//! [`write_canonical`]), and the signature is a recoverable secp256k1 signature over the
//! EIP-191 hash of that 32-byte digest, i.e.
//! `keccak256("\x19Ethereum Signed Message:\n32" ‖ digest)` — what `personal_sign` of the
//! digest produces in any Ethereum wallet and what `ecrecover` checks on-chain. In a single
//! frame every message carries one.
//!
//! **Batch** (Runnel extension, the Solana "Merkle shred" idea): the leaves are frames,
//! `SHA-256(0x00 ‖ stream part key ‖ frame without its trailer)`, inner nodes
//! `SHA-256(0x01 ‖ left ‖ right)`, every node truncated to [`PROOF_ENTRY_LENGTH`] = 20 bytes;
//! the leaf count is padded to a power of two with all-zero leaves. The publisher signs
//! (EIP-191, as above) `keccak256("runnel-frames-v2" ‖ root)`. Each frame carries its leaf
//! index, its proof and the root signature. A verifier recomputes the root from the frame
//! (one SHA-256 over the frame, a few over 41 bytes), and only the first frame of a batch
//! pays for ECDSA: verified `(publisher, root)` pairs are kept in a bounded [`RootCache`].
//! docs/decisions-frames.md gives the measurements behind SHA-256 and 20-byte nodes, and the
//! security argument.
//!
//! Verification with a known public key (`verify`) is cheaper than public-key recovery, so
//! the [`Verifier`] recovers a publisher's key once and keeps it in a bounded cache.

use crate::frame::{Frame, MessageView, SignatureKind, PROOF_ENTRY_LENGTH};
use crate::stream::StreamPartKey;
use crate::wire::SIGNATURE_LENGTH;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use secp256k1::{Message, PublicKey, SecretKey, SECP256K1};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tiny_keccak::{Hasher, Keccak};

/// Domain tag at the start of every canonical message byte string.
pub const MESSAGE_DOMAIN: &[u8] = b"runnel-message-v1";
/// Domain tag of a batch root before it is signed.
pub const FRAMES_DOMAIN: &[u8] = b"runnel-frames-v2";
/// A batch Merkle node: a SHA-256 output truncated to 160 bits.
pub type Node = [u8; PROOF_ENTRY_LENGTH];
/// keccak256 of the concatenation of `parts`.
pub fn keccak256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Keccak::v256();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; 32];
    hasher.finalize(&mut out);
    out
}

/// An Ethereum address: the last 20 bytes of keccak256 of the uncompressed public key.
pub fn address_of(public_key: &PublicKey) -> [u8; 20] {
    let uncompressed = public_key.serialize_uncompressed();
    let hash = keccak256(&[&uncompressed[1..]]);
    hash[12..].try_into().expect("20 bytes")
}

/// The Ethereum address of a public key in SEC1 form (33 bytes compressed or 65
/// uncompressed), as libp2p carries a secp256k1 PeerId's key; `None` if it is not a point on
/// the curve.
pub fn address_of_sec1(public_key: &[u8]) -> Option<[u8; 20]> {
    PublicKey::from_slice(public_key).ok().map(|key| address_of(&key))
}

/// Renders an address as `0x` + lower-case hex.
pub fn address_hex(address: &[u8; 20]) -> String {
    format!("0x{}", hex::encode(address))
}

/// The fields the signature covers, borrowed from either an encoder or a received record.
#[derive(Clone, Copy, Debug)]
pub struct SignedFields<'a> {
    pub stream_part_key: &'a [u8; 32],
    pub publisher: &'a [u8; 20],
    pub chain_id: u64,
    pub timestamp_ms: u64,
    pub sequence: u64,
    pub previous: Option<(u64, u64)>,
    pub content_type: u8,
    pub encryption: u8,
    pub group_key_id: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> SignedFields<'a> {
    /// The signed fields of a message as it lies in a received (or just written) frame.
    pub fn from_message(stream_part_key: &'a StreamPartKey, frame: &Frame<'a>, message: &MessageView<'a>) -> Self {
        Self {
            stream_part_key: &stream_part_key.0,
            publisher: &frame.header.publisher,
            chain_id: frame.chain_id(),
            timestamp_ms: message.timestamp_ms,
            sequence: message.sequence,
            previous: message.previous,
            content_type: message.content_type as u8,
            encryption: message.encryption as u8,
            group_key_id: message.group_key_id,
            payload: message.payload,
        }
    }
}

/// Feeds the canonical byte string of a message to `sink`, piece by piece (no allocation):
///
/// `"runnel-message-v1" ‖ stream part key (32) ‖ publisher (20) ‖ chain id (u64 BE) ‖
/// timestamp ms (u64 BE) ‖ sequence (u64 BE) ‖ has previous (u8) ‖ previous timestamp ms
/// (u64 BE) ‖ previous sequence (u64 BE) ‖ content type (u8) ‖ encryption (u8) ‖ group key
/// id length (u8) ‖ group key id ‖ payload length (u32 BE) ‖ payload`.
///
/// Big-endian so that Solidity's `abi.encodePacked` of the same typed values produces it.
pub fn write_canonical(fields: &SignedFields<'_>, mut sink: impl FnMut(&[u8])) {
    let (previous_timestamp_ms, previous_sequence) = fields.previous.unwrap_or((0, 0));
    sink(MESSAGE_DOMAIN);
    sink(fields.stream_part_key);
    sink(fields.publisher);
    sink(&fields.chain_id.to_be_bytes());
    sink(&fields.timestamp_ms.to_be_bytes());
    sink(&fields.sequence.to_be_bytes());
    sink(&[fields.previous.is_some() as u8]);
    sink(&previous_timestamp_ms.to_be_bytes());
    sink(&previous_sequence.to_be_bytes());
    sink(&[fields.content_type, fields.encryption, fields.group_key_id.len() as u8]);
    sink(fields.group_key_id);
    sink(&(fields.payload.len() as u32).to_be_bytes());
    sink(fields.payload);
}

thread_local! {
    /// Reused buffer for canonical byte strings: blake3's and keccak's per-call overhead
    /// dominates for small messages, so the pieces are gathered and hashed in one call.
    static CANONICAL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Calls `hash` with `prefix ‖ canonical bytes` as one slice.
fn with_canonical<T>(prefix: &[u8], fields: &SignedFields<'_>, hash: impl FnOnce(&[u8]) -> T) -> T {
    CANONICAL.with(|cell| {
        let mut buffer = cell.borrow_mut();
        buffer.clear();
        buffer.extend_from_slice(prefix);
        write_canonical(fields, |part| buffer.extend_from_slice(part));
        let result = hash(&buffer);
        if buffer.capacity() > 64 << 10 {
            // Do not keep a 1 MiB message's buffer around.
            *buffer = Vec::new();
        }
        result
    })
}

/// `keccak256(canonical bytes)`: what a per-message signature signs (via EIP-191).
pub fn message_digest(fields: &SignedFields<'_>) -> [u8; 32] {
    with_canonical(&[], fields, |bytes| keccak256(&[bytes]))
}

fn truncated_sha256(parts: &[&[u8]]) -> Node {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()[..PROOF_ENTRY_LENGTH].try_into().expect("20 of 32 bytes")
}

/// A frame's leaf in a batch tree: `SHA-256(0x00 ‖ stream part key ‖ signed bytes)[..20]`,
/// where the signed bytes are the frame without its trailer ([`Frame::signed_bytes`]).
pub fn frame_leaf(stream_part_key: &StreamPartKey, signed_bytes: &[u8]) -> Node {
    truncated_sha256(&[&[0], &stream_part_key.0, signed_bytes])
}

/// An inner node: `SHA-256(0x01 ‖ left ‖ right)[..20]`.
pub fn frame_node(left: &Node, right: &Node) -> Node {
    let mut bytes = [0u8; 1 + 2 * PROOF_ENTRY_LENGTH];
    bytes[0] = 1;
    bytes[1..1 + PROOF_ENTRY_LENGTH].copy_from_slice(left);
    bytes[1 + PROOF_ENTRY_LENGTH..].copy_from_slice(right);
    truncated_sha256(&[&bytes])
}

/// The 32 bytes a batch root signature signs (via EIP-191).
pub fn frame_root_digest(root: &Node) -> [u8; 32] {
    keccak256(&[FRAMES_DOMAIN, root])
}

/// Recomputes a batch root from a leaf, its index and its proof (leaf level first).
pub fn frame_root_from_proof(leaf: Node, leaf_index: usize, proof: &[u8]) -> Node {
    let mut node = leaf;
    let mut index = leaf_index;
    for sibling in proof.chunks_exact(PROOF_ENTRY_LENGTH) {
        let sibling: &Node = sibling.try_into().expect("chunks of 20");
        node = if index & 1 == 0 { frame_node(&node, sibling) } else { frame_node(sibling, &node) };
        index >>= 1;
    }
    node
}

/// Every level of the tree of depth `depth` over `leaves` (padded with zero leaves to
/// `2^depth`), leaves first, root last.
pub fn merkle_levels(leaves: &[Node], depth: usize) -> Vec<Vec<Node>> {
    assert!(!leaves.is_empty() && leaves.len() <= 1 << depth, "{} leaves in a tree of depth {depth}", leaves.len());
    let mut level = leaves.to_vec();
    level.resize(1 << depth, [0; PROOF_ENTRY_LENGTH]);
    let mut levels = vec![level];
    while levels.last().expect("non-empty").len() > 1 {
        let next = levels.last().expect("non-empty").chunks_exact(2).map(|pair| frame_node(&pair[0], &pair[1])).collect();
        levels.push(next);
    }
    levels
}

/// The proof of leaf `index`: its sibling at every level below the root.
pub fn merkle_proof(levels: &[Vec<Node>], index: usize) -> Vec<Node> {
    (0..levels.len() - 1).map(|level| levels[level][(index >> level) ^ 1]).collect()
}

/// The EIP-191 `personal_sign` hash of a 32-byte digest.
pub fn eip191_hash(digest: &[u8; 32]) -> [u8; 32] {
    keccak256(&[b"\x19Ethereum Signed Message:\n32", digest])
}

/// A publisher's signing key.
#[derive(Clone)]
pub struct PublisherKey {
    secret: SecretKey,
    address: [u8; 20],
}

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublisherKey({})", address_hex(&self.address))
    }
}

/// Why a key could not be read; says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl PublisherKey {
    pub fn generate() -> Self {
        let (secret, _) = SECP256K1.generate_keypair(&mut secp256k1::rand::rng());
        Self::from_secret(secret)
    }

    fn from_secret(secret: SecretKey) -> Self {
        let address = address_of(&PublicKey::from_secret_key(SECP256K1, &secret));
        Self { secret, address }
    }

    /// Parses a private key as 64 hex digits, with or without `0x`.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let digits = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex::decode(digits).map_err(|_| KeyError("private key must be 64 hex digits (optionally 0x-prefixed)".into()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError("private key must be exactly 32 bytes (64 hex digits)".into()))?;
        let secret =
            SecretKey::from_byte_array(bytes).map_err(|_| KeyError("private key is zero or not below the secp256k1 group order".into()))?;
        Ok(Self::from_secret(secret))
    }

    pub fn secret_hex(&self) -> String {
        format!("0x{}", hex::encode(self.secret.secret_bytes()))
    }

    pub fn address(&self) -> [u8; 20] {
        self.address
    }

    /// EIP-191 signature over a 32-byte digest: r ‖ s ‖ v with v ∈ {27, 28}.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> [u8; SIGNATURE_LENGTH] {
        let message = Message::from_digest(eip191_hash(digest));
        let signature = SECP256K1.sign_ecdsa_recoverable(message, &self.secret);
        let (recovery_id, compact) = signature.serialize_compact();
        let mut out = [0u8; SIGNATURE_LENGTH];
        out[..64].copy_from_slice(&compact);
        out[64] = 27 + i32::from(recovery_id) as u8;
        out
    }

    /// The signature of one message (its canonical bytes, EIP-191).
    pub fn sign_message(&self, fields: &SignedFields<'_>) -> [u8; SIGNATURE_LENGTH] {
        assert_eq!(fields.publisher, &self.address, "a publisher signs only its own messages");
        self.sign_digest(&message_digest(fields))
    }

    /// Signs a batch of written batch frames (`frames[range]` each, in leaf order, their
    /// trailers zeroed by [`crate::frame::FrameWriter::finish`]) under one root, and fills
    /// every trailer with the root signature and the frame's proof. The tree's depth is the
    /// frames' `proof_depth` (the same in all of them): fewer frames than leaves leave zero
    /// leaves.
    pub fn sign_frames(&self, stream_part_key: &StreamPartKey, buffer: &mut [u8], frames: &[std::ops::Range<usize>]) {
        assert!(!frames.is_empty() && frames.len() <= crate::frame::BATCH_FRAMES_MAX, "batch of {} frames", frames.len());
        let mut depth = None;
        let leaves: Vec<Node> = frames
            .iter()
            .enumerate()
            .map(|(index, range)| {
                let frame = Frame::parse(&buffer[range.clone()]).expect("the publisher wrote a valid frame");
                assert_eq!(frame.publisher(), self.address, "a publisher signs only its own frames");
                assert_eq!(frame.leaf_index(), index, "frames in leaf order");
                assert_eq!(*depth.get_or_insert(frame.header.proof_depth), frame.header.proof_depth, "one depth per batch");
                frame_leaf(stream_part_key, frame.signed_bytes())
            })
            .collect();
        let levels = merkle_levels(&leaves, depth.expect("at least one frame") as usize);
        let signature = self.sign_digest(&frame_root_digest(&levels[levels.len() - 1][0]));
        for (index, range) in frames.iter().enumerate() {
            crate::frame::write_trailer(&mut buffer[range.clone()], &signature, &merkle_proof(&levels, index));
        }
    }
}

/// Why a frame's signature was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Not a valid secp256k1 signature encoding (bad v, r or s out of range).
    Malformed,
    /// The signature is well-formed but does not come from the frame's publisher.
    WrongSigner,
}

/// An authenticated root: who signed it, and the signature bytes frames must carry with it.
type CachedRoot = ([u8; 20], Node, [u8; SIGNATURE_LENGTH]);

/// Bounded cache of authenticated `(publisher, batch root, signature)` entries: roots whose
/// signature was checked. Keyed by publisher so that one publisher's root never vouches for
/// another's, and holding the signature so that a frame with a valid proof but corrupted
/// signature bytes is not passed on (the next node, without the root cached, would reject it
/// and blame the innocent link it came from).
///
/// Direct-mapped: a fixed array of slots indexed by a keyed hash of the node (random key per
/// cache, so nobody can aim records at one slot), so lookups and inserts are one probe, with
/// no allocation and no eviction bookkeeping. A collision overwrites the older entry; the
/// only cost of a lost entry is one more ECDSA check.
#[derive(Debug)]
pub struct RootCache {
    slots: Vec<Option<CachedRoot>>,
    index_key: u64,
    shift: u32,
    len: usize,
}

impl RootCache {
    /// `capacity` is rounded up to a power of two.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0);
        let slots = capacity.next_power_of_two();
        Self { slots: vec![None; slots], index_key: rand::random::<u64>() | 1, shift: 64 - slots.trailing_zeros(), len: 0 }
    }

    fn slot(&self, node: &Node) -> usize {
        if self.shift == 64 {
            return 0;
        }
        let word = u64::from_le_bytes(node[..8].try_into().expect("8 bytes"));
        ((word ^ self.index_key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    pub fn contains(&self, publisher: &[u8; 20], node: &Node, signature: &[u8; SIGNATURE_LENGTH]) -> bool {
        self.slots[self.slot(node)].as_ref().is_some_and(|(p, n, s)| p == publisher && n == node && s == signature)
    }

    pub fn insert(&mut self, publisher: [u8; 20], node: Node, signature: [u8; SIGNATURE_LENGTH]) {
        let slot = self.slot(&node);
        if self.slots[slot].is_none() {
            self.len += 1;
        }
        self.slots[slot] = Some((publisher, node, signature));
    }

    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What verifying one frame cost, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyCost {
    /// Full ECDSA checks (recovery or verify): one per message of a single frame, one for
    /// the first frame of a batch.
    Ecdsa { signatures: u16 },
    /// A batch frame whose root was already verified: hashes only.
    CachedRoot,
}

/// Verifies frame signatures with bounded caches of publisher keys and batch roots.
#[derive(Debug)]
pub struct Verifier {
    public_keys: HashMap<[u8; 20], PublicKey, foldhash::fast::RandomState>,
    public_keys_max: usize,
    roots: RootCache,
}

/// Default bound of cached publisher public keys per shard.
pub const PUBLIC_KEYS_MAX: usize = 65_536;
/// Default bound of cached authenticated batch roots per shard: one per batch in flight, so
/// this covers thousands of publishers mid-batch and stays small enough to live in cache.
pub const ROOTS_MAX: usize = 16_384;

impl Default for Verifier {
    fn default() -> Self {
        Self::new(PUBLIC_KEYS_MAX, ROOTS_MAX)
    }
}

impl Verifier {
    pub fn new(public_keys_max: usize, roots_max: usize) -> Self {
        Self { public_keys: HashMap::default(), public_keys_max, roots: RootCache::new(roots_max) }
    }

    /// Checks that `signature` over `digest` (EIP-191) was made by `publisher`.
    pub fn check_signed_digest(
        &mut self,
        publisher: &[u8; 20],
        digest: &[u8; 32],
        signature: &[u8; SIGNATURE_LENGTH],
    ) -> Result<(), SignatureError> {
        let message = Message::from_digest(eip191_hash(digest));
        let compact: &[u8; 64] = signature[..64].try_into().expect("64 bytes");
        let recovery_id = match signature[64] {
            27 | 0 => RecoveryId::Zero,
            28 | 1 => RecoveryId::One,
            _ => return Err(SignatureError::Malformed),
        };
        if let Some(public_key) = self.public_keys.get(publisher) {
            let mut plain = Signature::from_compact(compact).map_err(|_| SignatureError::Malformed)?;
            // Ethereum signatures are low-s (EIP-2); normalizing only matters for odd signers
            // and keeps verify() equivalent to recover-and-compare.
            plain.normalize_s();
            return SECP256K1.verify_ecdsa(message, &plain, public_key).map_err(|_| SignatureError::WrongSigner);
        }
        let recoverable = RecoverableSignature::from_compact(compact, recovery_id).map_err(|_| SignatureError::Malformed)?;
        let public_key = SECP256K1.recover_ecdsa(message, &recoverable).map_err(|_| SignatureError::WrongSigner)?;
        if &address_of(&public_key) != publisher {
            return Err(SignatureError::WrongSigner);
        }
        if self.public_keys.len() >= self.public_keys_max {
            // Bounded: forget everything rather than track recency on the hot path; keys
            // are re-learned with one recovery each.
            self.public_keys.clear();
        }
        self.public_keys.insert(*publisher, public_key);
        Ok(())
    }

    /// Verifies a received frame of `stream_part_key`: every message of a single frame, or
    /// a batch frame's proof (and its root's signature once per root).
    pub fn verify(&mut self, stream_part_key: &StreamPartKey, frame: &Frame<'_>) -> Result<VerifyCost, SignatureError> {
        let publisher = frame.publisher();
        match frame.signature_kind() {
            SignatureKind::Single => {
                for message in frame.messages() {
                    let digest = message_digest(&SignedFields::from_message(stream_part_key, frame, &message));
                    let signature = message.signature.expect("single frames carry a signature per message");
                    self.check_signed_digest(&publisher, &digest, signature)?;
                }
                Ok(VerifyCost::Ecdsa { signatures: frame.message_count() })
            }
            SignatureKind::Batch => {
                // The whole proof is always recomputed: accepting a frame as soon as its path
                // meets some authenticated inner node would let a frame with a valid leaf but
                // a corrupted upper path through here, to be rejected by the next node — which
                // would then blame (and quarantine) the innocent link it came from.
                let (signature, proof) = frame.trailer().expect("batch frames carry a trailer");
                let root = frame_root_from_proof(frame_leaf(stream_part_key, frame.signed_bytes()), frame.leaf_index(), proof);
                if self.roots.contains(&publisher, &root, signature) {
                    return Ok(VerifyCost::CachedRoot);
                }
                self.check_signed_digest(&publisher, &frame_root_digest(&root), signature)?;
                self.roots.insert(publisher, root, *signature);
                Ok(VerifyCost::Ecdsa { signatures: 1 })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;
    use crate::wire::{ContentType, Encryption};

    /// Anvil/Hardhat account 0, a published test key.
    pub const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    use crate::frame::{EntryFields, FrameStart, FrameWriter};

    fn entry(payload: &[u8]) -> EntryFields<'_> {
        EntryFields {
            timestamp_ms: 1_700_000_000_000,
            content_type: ContentType::Json,
            encryption: Encryption::None,
            group_key_id: b"",
            payload,
        }
    }

    fn start(key: &PublisherKey, sequence: u64, kind: SignatureKind, depth: u8) -> FrameStart {
        FrameStart {
            publisher: key.address(),
            chain_id: 1,
            sequence,
            first_message_sequence: sequence * 2,
            previous: None,
            signature_kind: kind,
            proof_depth: depth,
            leaf_index: (sequence as u8) & ((1 << depth) - 1),
            continuation: false,
        }
    }

    /// A single frame of two messages, each signed.
    fn single_frame(key: &PublisherKey, part: &StreamPartKey) -> Vec<u8> {
        let mut out = Vec::new();
        let fields = start(key, 0, SignatureKind::Single, 0);
        let mut writer = FrameWriter::begin(&mut out, &fields, 1384);
        for (sequence, payload) in [(0u64, &b"{\"a\":1}"[..]), (1, b"{\"a\":2}")] {
            let previous = sequence.checked_sub(1).map(|s| (1_700_000_000_000, s));
            let signed = SignedFields {
                stream_part_key: &part.0,
                publisher: &fields.publisher,
                chain_id: 1,
                timestamp_ms: 1_700_000_000_000,
                sequence,
                previous,
                content_type: 0,
                encryption: 0,
                group_key_id: b"",
                payload,
            };
            assert!(writer.push(&mut out, &entry(payload), Some(&key.sign_message(&signed))));
        }
        writer.finish(&mut out, false);
        out
    }

    /// `count` batch frames under one root, back to back, and their ranges.
    fn batch_frames(key: &PublisherKey, part: &StreamPartKey, count: usize) -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
        let depth = count.next_power_of_two().trailing_zeros() as u8;
        let mut out = Vec::new();
        let mut ranges = Vec::new();
        for sequence in 0..count as u64 {
            let mut writer = FrameWriter::begin(&mut out, &start(key, sequence, SignatureKind::Batch, depth), 1384);
            assert!(writer.push(&mut out, &entry(&sequence.to_le_bytes()), None));
            assert!(writer.push(&mut out, &entry(b"second"), None));
            ranges.push(writer.finish(&mut out, false));
        }
        key.sign_frames(part, &mut out, &ranges);
        (out, ranges)
    }

    // Goal: addresses match the published anvil account 0, and EIP-191 signing matches the
    // well-known personal_sign vector of that key (ethers.js/viem produce the same bytes).
    #[test]
    fn anvil_account_zero_address_and_personal_sign() {
        let key = PublisherKey::from_hex(ANVIL_KEY_0).unwrap();
        assert_eq!(address_hex(&key.address()), "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266");
        // keccak256("") is the classic keccak test vector.
        assert_eq!(hex::encode(keccak256(&[])), "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
        let digest = [0x11u8; 32];
        let signature = key.sign_digest(&digest);
        let mut verifier = Verifier::default();
        assert_eq!(verifier.check_signed_digest(&key.address(), &digest, &signature), Ok(()));
        // Second check goes through the cached public key path.
        assert_eq!(verifier.check_signed_digest(&key.address(), &digest, &signature), Ok(()));
        assert_eq!(verifier.check_signed_digest(&[0; 20], &digest, &signature), Err(SignatureError::WrongSigner));
        // A bad recovery byte is malformed on the cached path too.
        let mut bad_v = signature;
        bad_v[64] = 99;
        assert_eq!(verifier.check_signed_digest(&key.address(), &digest, &bad_v), Err(SignatureError::Malformed));
    }

    // Goal: single and batch frames verify; any flipped byte, a foreign signer, or a wrong
    // stream part fails; the root's ECDSA is paid once per batch.
    #[test]
    fn single_and_batch_frames_verify_and_tampering_fails() {
        let key = PublisherKey::generate();
        let other = PublisherKey::generate();
        let part = StreamPartKey([3; 32]);
        let out = single_frame(&key, &part);
        let frame = Frame::parse(&out).unwrap();
        let mut verifier = Verifier::default();
        assert_eq!(verifier.verify(&part, &frame), Ok(VerifyCost::Ecdsa { signatures: 2 }));
        assert!(verifier.verify(&StreamPartKey([4; 32]), &frame).is_err());
        for byte in [frame::FRAME_HEADER_LENGTH + 15, out.len() - 66, out.len() - 2] {
            let mut tampered = out.clone();
            tampered[byte] ^= 1;
            if let Ok(frame) = Frame::parse(&tampered) {
                assert!(Verifier::default().verify(&part, &frame).is_err(), "byte {byte}");
            }
        }

        for count in [1usize, 2, 3, 7, 8, 33, 64] {
            let (out, ranges) = batch_frames(&key, &part, count);
            let mut verifier = Verifier::default();
            for (i, range) in ranges.iter().enumerate() {
                let frame = Frame::parse(&out[range.clone()]).unwrap();
                let expected = if i == 0 { VerifyCost::Ecdsa { signatures: 1 } } else { VerifyCost::CachedRoot };
                assert_eq!(verifier.verify(&part, &frame), Ok(expected), "batch {count} frame {i}");
            }
            // A frame claiming another publisher fails even with a valid proof.
            let mut forged = out[ranges[0].clone()].to_vec();
            forged[4..24].copy_from_slice(&other.address());
            assert!(Verifier::default().verify(&part, &Frame::parse(&forged).unwrap()).is_err());
            // A payload byte, a proof entry, the root signature: each corruption is caught,
            // even after the root is cached, and the other frames still verify.
            let last = ranges[count - 1].clone();
            let depth = count.next_power_of_two().trailing_zeros() as usize;
            let payload_byte = last.start + frame::FRAME_HEADER_LENGTH + frame::MESSAGE_ENTRY_LENGTH;
            let signature_byte = last.end - PROOF_ENTRY_LENGTH * depth - SIGNATURE_LENGTH + 10;
            let proof_byte = last.end - 1;
            for byte in [payload_byte, signature_byte, proof_byte] {
                let mut tampered = out.clone();
                tampered[byte] ^= 0x40;
                let frame = Frame::parse(&tampered[last.clone()]).unwrap();
                assert!(Verifier::default().verify(&part, &frame).is_err(), "batch {count}, byte {byte}, fresh verifier");
                assert!(verifier.verify(&part, &frame).is_err(), "batch {count}, byte {byte}, root cached");
            }
        }
    }

    // Goal: the root cache is bounded (a fixed slot array), keeps publishers apart, and a
    // colliding insert replaces the older entry.
    #[test]
    fn root_cache_is_bounded() {
        let mut cache = RootCache::new(2);
        for i in 0..100u8 {
            cache.insert([1; 20], [i; 20], [i; 65]);
        }
        assert!(cache.len() <= 2);
        assert!(cache.contains(&[1; 20], &[99; 20], &[99; 65]));
        assert!(!cache.contains(&[2; 20], &[99; 20], &[99; 65]), "another publisher's node");
        let single = RootCache::new(1);
        assert!(!single.contains(&[1; 20], &[0; 20], &[0; 65]));
    }
}
