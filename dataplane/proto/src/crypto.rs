//! Publisher signatures: Ethereum-style per-message signatures and blake3 Merkle batches.
//!
//! **Per-message**: the message digest is `keccak256(canonical bytes)` (see
//! [`write_canonical`]), and the signature is a recoverable secp256k1 signature over the
//! EIP-191 hash of that 32-byte digest, i.e.
//! `keccak256("\x19Ethereum Signed Message:\n32" ‖ digest)` — what `personal_sign` of the
//! digest produces in any Ethereum wallet and what `ecrecover` checks on-chain.
//!
//! **Batch** (Runnel extension): leaves are `blake3(0x00 ‖ canonical bytes)`, inner nodes
//! `blake3(0x01 ‖ left ‖ right)`; the leaf count is padded to a power of two with all-zero
//! leaves. The publisher signs (EIP-191, as above) `keccak256("runnel-batch-v1" ‖ root)`.
//! Each record carries its leaf index, its sibling path and the root signature. A verifier
//! recomputes the root from the record (a few blake3 calls), and only the first record of a
//! batch pays for ECDSA: verified `(publisher, root)` pairs are kept in a bounded
//! [`RootCache`].
//!
//! Verification with a known public key (`verify`) is cheaper than public-key recovery, so
//! the [`Verifier`] recovers a publisher's key once and keeps it in a bounded cache.

use crate::stream::StreamPartKey;
use crate::wire::{MessageFields, Record, SignatureKind, SIGNATURE_LENGTH};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use secp256k1::{Message, PublicKey, SecretKey, SECP256K1};
use std::collections::HashMap;
use tiny_keccak::{Hasher, Keccak};

/// Domain tag at the start of every canonical message byte string.
pub const MESSAGE_DOMAIN: &[u8] = b"runnel-message-v1";
/// Domain tag of a batch root before it is signed.
pub const BATCH_DOMAIN: &[u8] = b"runnel-batch-v1";
/// Most records one batch signature may cover.
pub const BATCH_SIZE_MAX: usize = 1 << crate::wire::PROOF_DEPTH_MAX;

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
    pub fn from_fields(stream_part_key: &'a StreamPartKey, fields: &'a MessageFields) -> Self {
        Self {
            stream_part_key: &stream_part_key.0,
            publisher: &fields.publisher,
            chain_id: fields.chain_id,
            timestamp_ms: fields.timestamp_ms,
            sequence: fields.sequence,
            previous: fields.previous,
            content_type: fields.content_type as u8,
            encryption: fields.encryption as u8,
            group_key_id: &fields.group_key_id,
            payload: &fields.payload,
        }
    }

    pub fn from_record(stream_part_key: &'a StreamPartKey, record: &Record<'a>) -> Self {
        Self {
            stream_part_key: &stream_part_key.0,
            publisher: &record.header.publisher,
            chain_id: record.chain_id(),
            timestamp_ms: record.timestamp_ms(),
            sequence: record.sequence(),
            previous: record.previous(),
            content_type: record.header.content_type,
            encryption: record.header.encryption,
            group_key_id: record.group_key_id,
            payload: record.payload,
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

/// `blake3(0x00 ‖ canonical bytes)`: a record's leaf in a batch tree.
pub fn batch_leaf(fields: &SignedFields<'_>) -> [u8; 32] {
    with_canonical(&[0], fields, |bytes| *blake3::hash(bytes).as_bytes())
}

fn batch_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut bytes = [0u8; 65];
    bytes[0] = 1;
    bytes[1..33].copy_from_slice(left);
    bytes[33..].copy_from_slice(right);
    *blake3::hash(&bytes).as_bytes()
}

/// The 32 bytes a batch root signature signs (via EIP-191).
pub fn batch_root_digest(root: &[u8; 32]) -> [u8; 32] {
    keccak256(&[BATCH_DOMAIN, root])
}

/// The EIP-191 `personal_sign` hash of a 32-byte digest.
pub fn eip191_hash(digest: &[u8; 32]) -> [u8; 32] {
    keccak256(&[b"\x19Ethereum Signed Message:\n32", digest])
}

/// Recomputes a batch root from a leaf, its index and its sibling path (leaf level first).
pub fn batch_root_from_path(leaf: [u8; 32], leaf_index: u32, path: &[u8]) -> [u8; 32] {
    let mut node = leaf;
    let mut index = leaf_index;
    for sibling in path.chunks_exact(32) {
        let sibling: &[u8; 32] = sibling.try_into().expect("chunks of 32");
        node = if index & 1 == 0 { batch_node(&node, sibling) } else { batch_node(sibling, &node) };
        index >>= 1;
    }
    node
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

    /// Signs one message and appends its record to `out`.
    pub fn sign_into(&self, stream_part_key: &StreamPartKey, fields: &MessageFields, out: &mut Vec<u8>) {
        assert_eq!(fields.publisher, self.address, "a publisher signs only its own messages");
        let signature = self.sign_digest(&message_digest(&SignedFields::from_fields(stream_part_key, fields)));
        fields.encode(&signature, None, out);
    }

    /// Signs a batch with one signature over a blake3 Merkle root; appends each message's
    /// record (with its path) to `out` and returns the record lengths in order.
    pub fn sign_batch_into(&self, stream_part_key: &StreamPartKey, batch: &[MessageFields], out: &mut Vec<u8>) -> Vec<usize> {
        assert!(!batch.is_empty() && batch.len() <= BATCH_SIZE_MAX, "batch size out of range");
        let width = batch.len().next_power_of_two();
        let depth = width.trailing_zeros() as usize;
        let mut levels: Vec<Vec<[u8; 32]>> = Vec::with_capacity(depth + 1);
        let mut leaves: Vec<[u8; 32]> = batch
            .iter()
            .map(|fields| {
                assert_eq!(fields.publisher, self.address, "a publisher signs only its own messages");
                batch_leaf(&SignedFields::from_fields(stream_part_key, fields))
            })
            .collect();
        leaves.resize(width, [0; 32]);
        levels.push(leaves);
        while levels.last().expect("non-empty").len() > 1 {
            let next = levels.last().expect("non-empty").chunks_exact(2).map(|pair| batch_node(&pair[0], &pair[1])).collect();
            levels.push(next);
        }
        let root = levels[depth][0];
        let signature = self.sign_digest(&batch_root_digest(&root));
        let mut lengths = Vec::with_capacity(batch.len());
        for (index, fields) in batch.iter().enumerate() {
            let path = (0..depth).map(|level| levels[level][(index >> level) ^ 1]).collect();
            let proof = crate::wire::BatchProof { leaf_index: index as u32, path };
            let before = out.len();
            fields.encode(&signature, Some(&proof), out);
            lengths.push(out.len() - before);
        }
        lengths
    }
}

/// Why a record's signature was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Not a valid secp256k1 signature encoding (bad v, r or s out of range).
    Malformed,
    /// The signature is well-formed but does not come from the record's publisher.
    WrongSigner,
}

/// Bounded cache of authenticated `(publisher, batch root)` pairs: roots whose signature was
/// checked. Keyed by publisher so that one publisher's root never vouches for another's.
///
/// Direct-mapped: a fixed array of slots indexed by a keyed hash of the node (random key per
/// cache, so nobody can aim records at one slot), so lookups and inserts are one probe, with
/// no allocation and no eviction bookkeeping. A collision overwrites the older entry; the
/// only cost of a lost entry is one more ECDSA check.
#[derive(Debug)]
pub struct RootCache {
    slots: Vec<Option<([u8; 20], [u8; 32])>>,
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

    fn slot(&self, node: &[u8; 32]) -> usize {
        if self.shift == 64 {
            return 0;
        }
        let word = u64::from_le_bytes(node[..8].try_into().expect("8 bytes"));
        ((word ^ self.index_key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    pub fn contains(&self, publisher: &[u8; 20], node: &[u8; 32]) -> bool {
        self.slots[self.slot(node)].as_ref().is_some_and(|(p, n)| p == publisher && n == node)
    }

    pub fn insert(&mut self, publisher: [u8; 20], node: [u8; 32]) {
        let slot = self.slot(&node);
        if self.slots[slot].is_none() {
            self.len += 1;
        }
        self.slots[slot] = Some((publisher, node));
    }

    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What verifying one record cost, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyCost {
    /// A full ECDSA check (recovery or verify).
    Ecdsa,
    /// A batch record whose root was already verified: hashes only.
    CachedRoot,
}

/// Verifies record signatures with bounded caches of publisher keys and batch roots.
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

    /// Verifies a received record of `stream_part_key`.
    pub fn verify(&mut self, stream_part_key: &StreamPartKey, record: &Record<'_>) -> Result<VerifyCost, SignatureError> {
        let fields = SignedFields::from_record(stream_part_key, record);
        match record.signature_kind() {
            SignatureKind::Single => {
                self.check_signed_digest(&record.header.publisher, &message_digest(&fields), record.signature)?;
                Ok(VerifyCost::Ecdsa)
            }
            SignatureKind::Batch => {
                // The whole path is always recomputed: accepting a record as soon as its path
                // meets some authenticated inner node would let a record with a valid leaf but
                // a corrupted upper path through here, to be rejected by the next node — which
                // would then blame (and quarantine) the innocent link it came from.
                let publisher = record.header.publisher;
                let root = batch_root_from_path(batch_leaf(&fields), record.header.leaf_index.to_native(), record.proof);
                if self.roots.contains(&publisher, &root) {
                    return Ok(VerifyCost::CachedRoot);
                }
                self.check_signed_digest(&publisher, &batch_root_digest(&root), record.signature)?;
                self.roots.insert(publisher, root);
                Ok(VerifyCost::Ecdsa)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ContentType, Encryption};

    /// Anvil/Hardhat account 0, a published test key.
    pub const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    fn fields(key: &PublisherKey, sequence: u64, payload: &[u8]) -> MessageFields {
        MessageFields {
            publisher: key.address(),
            chain_id: 1,
            timestamp_ms: 1_700_000_000_000 + sequence,
            sequence,
            previous: sequence.checked_sub(1).map(|s| (1_700_000_000_000 + s, s)),
            content_type: ContentType::Json,
            encryption: Encryption::None,
            group_key_id: vec![],
            payload: payload.to_vec(),
        }
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

    // Goal: per-message and batch records verify; any flipped payload bit, a foreign
    // signer, or a wrong stream part fails; cached roots make later batch records cheap.
    #[test]
    fn single_and_batch_records_verify_and_tampering_fails() {
        let key = PublisherKey::generate();
        let other = PublisherKey::generate();
        let part = StreamPartKey([3; 32]);
        let mut out = Vec::new();
        key.sign_into(&part, &fields(&key, 0, b"{\"a\":1}"), &mut out);
        let record = Record::parse(&out).unwrap();
        let mut verifier = Verifier::default();
        assert_eq!(verifier.verify(&part, &record), Ok(VerifyCost::Ecdsa));
        assert!(verifier.verify(&StreamPartKey([4; 32]), &record).is_err());
        let mut tampered = out.clone();
        let last_payload_byte = crate::wire::MESSAGE_HEADER_LENGTH + 6;
        tampered[last_payload_byte] ^= 1;
        assert!(Verifier::default().verify(&part, &Record::parse(&tampered).unwrap()).is_err());

        for batch_size in [1usize, 2, 3, 7, 8, 33] {
            let batch: Vec<_> = (0..batch_size as u64).map(|s| fields(&key, s, &s.to_le_bytes())).collect();
            let mut out = Vec::new();
            let lengths = key.sign_batch_into(&part, &batch, &mut out);
            let mut verifier = Verifier::default();
            let mut at = 0;
            for (i, length) in lengths.iter().enumerate() {
                let record = Record::parse(&out[at..at + length]).unwrap();
                let expected = if i == 0 { VerifyCost::Ecdsa } else { VerifyCost::CachedRoot };
                assert_eq!(verifier.verify(&part, &record), Ok(expected), "batch {batch_size} record {i}");
                at += length;
            }
            // A record claiming another publisher fails even with a valid path.
            let mut forged = out[..lengths[0]].to_vec();
            forged[4..24].copy_from_slice(&other.address());
            assert!(Verifier::default().verify(&part, &Record::parse(&forged).unwrap()).is_err());
        }
    }

    // Goal: the root cache is bounded (a fixed slot array), keeps publishers apart, and a
    // colliding insert replaces the older entry.
    #[test]
    fn root_cache_is_bounded() {
        let mut cache = RootCache::new(2);
        for i in 0..100u8 {
            cache.insert([1; 20], [i; 32]);
        }
        assert!(cache.len() <= 2);
        assert!(cache.contains(&[1; 20], &[99; 32]));
        assert!(!cache.contains(&[2; 20], &[99; 32]), "another publisher's node");
        let single = RootCache::new(1);
        assert!(!single.contains(&[1; 20], &[0; 32]));
    }
}
