//! Protocol test vectors: computes every vector of `docs/protocol.md` and checks it against
//! the hex written there, so the spec can never drift from the code.
//!
//! How it works: each vector is a fenced block in the doc opened with ```` ```vector <label> ````
//! and holding `name: value` lines (long hex values continue on indented lines). The test
//! builds the same blocks from the code and compares them field by field. Where the spec
//! states a layout (canonical bytes, frame, header, Merkle tree), the test also builds the
//! bytes by hand from that statement — with its own SHA-256 and without the library's
//! encoders — and checks the library produces the same, so the prose is tested too, not only
//! the hex. The per-message signature of the anvil vector is also pinned to its protocol v1
//! value: v2 changed the framing, not what a message signature covers.
//!
//! Regenerate the doc's blocks after a deliberate protocol change with
//! `RUNNEL_PRINT_VECTORS=1 cargo test --release -p runnel-node --test protocol_vectors doc_vectors -- --nocapture`
//! and paste them over the old ones.
//!
//! The same valid encodings seed the fuzz corpora: with `RUNNEL_FUZZ_SEEDS=<dir>` the
//! `fuzz_seed_corpora` test writes `<dir>/<target>/seed-*` for every target in
//! `dataplane/fuzz` (scripts/test.sh does this before fuzzing).

use runnel_core::client::{ClientCore, ClientLinkConfig, CoreOptions, Outgoing, OwnedDelivery, Publisher, SigningMode};
use runnel_proto::crypto::{
    eip191_hash, frame_leaf, frame_node, frame_root_digest, frame_root_from_proof, keccak256, message_digest, write_canonical, Node,
    PublisherKey, SignedFields, Verifier, VerifyCost,
};
use runnel_proto::frame::{
    split_frames, trailer_length, EntryFields, Frame, FrameStart, FrameWriter, SignatureKind, FRAME_FLAG_CONTINUATION,
    FRAME_FLAG_CONTINUES, FRAME_FLAG_HAS_PREVIOUS, FRAME_HEADER_LENGTH, MESSAGE_ENTRY_LENGTH, PROOF_ENTRY_LENGTH,
};
use runnel_proto::linktag::{link_tag, LinkKey};
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{
    encode_nak_range, split_datagrams, ContentType, Datagram, DatagramBuilder, Encryption, HeaderFields, Kind, NakRange,
    DATAGRAM_LENGTH_DEFAULT, FLAG_REPAIR, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH, SIGNATURE_LENGTH, TAGGED_HEADER_LENGTH,
};
use siphasher::sip::SipHasher24;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

/// Anvil/Hardhat account 0: a published test key, never a real one.
const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const ANVIL_ADDRESS_0: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
/// The stream part of every vector, written with an upper-case owner to show canonicalization.
const STREAM_PART_INPUT: &str = "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266/sensors/temperature#0";
/// The message chain of every vector.
const CHAIN_ID: u64 = 1;
const LINK_ID: u32 = 7;
/// Link id of the client link the relay fuzz target configures besides `LINK_ID`.
const CLIENT_LINK_ID: u32 = 8;
/// Hex characters per line when a value is wrapped (32 bytes).
const HEX_LINE_LENGTH: usize = 64;
/// Frames are written with room for a default datagram's body; the vectors are far smaller.
const FRAME_CAPACITY: usize = DATAGRAM_LENGTH_DEFAULT - HEADER_LENGTH;
/// The anvil message's digest and signature as protocol v1 published them (docs/protocol.md
/// of v1, vector `message`): v2 must sign exactly the same bytes.
const V1_MESSAGE_DIGEST: &str = "fbd6ae677eaca5d9cc1df36af5b3dabc41f028568666884cb40292c0c4b409e7";
const V1_MESSAGE_SIGNATURE: &str =
    "e87d8e2400b0eb93e88c0aef1f428d4ba7f48b9292de81bde7bb3f7d3ef2306013694a99ce39838002d2aad4b201bd271f56311e30a2f0ff480078e4357eb2c31c";

/// One vector: a label and its fields in order.
#[derive(Debug, Default)]
struct Vector {
    label: &'static str,
    fields: Vec<(String, String)>,
}

impl Vector {
    fn new(label: &'static str) -> Self {
        Self { label, fields: Vec::new() }
    }

    fn text(&mut self, name: &str, value: impl ToString) {
        let value = value.to_string();
        assert!(!value.contains(char::is_whitespace), "vector values carry no whitespace: {name} = {value:?}");
        self.fields.push((name.to_string(), value));
    }

    fn hex(&mut self, name: &str, bytes: &[u8]) {
        self.text(name, hex::encode(bytes));
    }

    /// The block as it appears in the doc, fences included.
    fn render(&self) -> String {
        let mut out = format!("```vector {}\n", self.label);
        for (name, value) in &self.fields {
            if value.len() <= HEX_LINE_LENGTH {
                out.push_str(&format!("{name}: {value}\n"));
            } else {
                out.push_str(&format!("{name}:\n"));
                for chunk in value.as_bytes().chunks(HEX_LINE_LENGTH) {
                    out.push_str("  ");
                    out.push_str(std::str::from_utf8(chunk).expect("ASCII"));
                    out.push('\n');
                }
            }
        }
        out.push_str("```\n");
        out
    }
}

/// Reads every ```` ```vector <label> ```` block of the doc: label → fields in order.
fn parse_doc_vectors(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut vectors = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line.trim().strip_prefix("```vector ") else {
            continue;
        };
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            if line.starts_with(char::is_whitespace) {
                let (name, value) = fields.last_mut().unwrap_or_else(|| panic!("vector {label}: continuation line before any field"));
                assert!(!line.trim().is_empty(), "vector {label}: blank continuation of {name}");
                value.push_str(line.trim());
            } else {
                let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("vector {label}: line {line:?} is not `name: value`"));
                fields.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        vectors.push((label.trim().to_string(), fields));
    }
    vectors
}

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md")
}

fn anvil_key() -> PublisherKey {
    PublisherKey::from_hex(ANVIL_KEY_0).expect("anvil key parses")
}

fn stream_part() -> StreamPart {
    StreamPart::parse(STREAM_PART_INPUT).expect("vector stream part is valid")
}

/// The link key of the vectors: bytes 00 01 … 1f.
fn link_key() -> LinkKey {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = i as u8;
    }
    LinkKey(key)
}

/// SHA-256 as FIPS 180-4 defines it, written out here so that the batch tree is checked
/// against the standard rather than against the hashing crate the library uses.
fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    const ROUND_CONSTANTS: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
        0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
        0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
        0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
        0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
        0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut message = parts.concat();
    let bit_length = message.len() as u64 * 8;
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_length.to_be_bytes());
    let mut state: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    for block in message.chunks_exact(64) {
        let mut schedule = [0u32; 64];
        for (t, word) in block.chunks_exact(4).enumerate() {
            schedule[t] = u32::from_be_bytes(word.try_into().expect("4 bytes"));
        }
        for t in 16..64 {
            let (w15, w2) = (schedule[t - 15], schedule[t - 2]);
            let sigma0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
            let sigma1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
            schedule[t] = schedule[t - 16].wrapping_add(sigma0).wrapping_add(schedule[t - 7]).wrapping_add(sigma1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
        for t in 0..64 {
            let choose = (e & f) ^ (!e & g);
            let sum1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let t1 = h.wrapping_add(sum1).wrapping_add(choose).wrapping_add(ROUND_CONSTANTS[t]).wrapping_add(schedule[t]);
            let majority = (a & b) ^ (a & c) ^ (b & c);
            let sum0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let t2 = sum0.wrapping_add(majority);
            (h, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (word, add) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *word = word.wrapping_add(add);
        }
    }
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// A tree node by the spec: SHA-256 truncated to its first 20 bytes.
fn truncated_sha256(parts: &[&[u8]]) -> Node {
    sha256(parts)[..PROOF_ENTRY_LENGTH].try_into().expect("20 of 32 bytes")
}

/// One message of the vectors' chain (publisher anvil account 0, chain [`CHAIN_ID`]).
#[derive(Clone, Debug)]
struct Message {
    timestamp_ms: u64,
    sequence: u64,
    previous: Option<(u64, u64)>,
    content_type: ContentType,
    encryption: Encryption,
    group_key_id: Vec<u8>,
    payload: Vec<u8>,
}

impl Message {
    fn signed_fields<'a>(&'a self, key: &'a StreamPartKey, publisher: &'a [u8; 20]) -> SignedFields<'a> {
        SignedFields {
            stream_part_key: &key.0,
            publisher,
            chain_id: CHAIN_ID,
            timestamp_ms: self.timestamp_ms,
            sequence: self.sequence,
            previous: self.previous,
            content_type: self.content_type as u8,
            encryption: self.encryption as u8,
            group_key_id: &self.group_key_id,
            payload: &self.payload,
        }
    }

    /// The message entry of this message, or of a piece of it (`payload` bytes).
    fn entry<'a>(&'a self, payload: &'a [u8]) -> EntryFields<'a> {
        EntryFields {
            timestamp_ms: self.timestamp_ms,
            content_type: self.content_type,
            encryption: self.encryption,
            group_key_id: &self.group_key_id,
            payload,
        }
    }
}

/// The message of vector `message` (the v1 vector's message, unchanged).
fn single_message() -> Message {
    Message {
        timestamp_ms: 1_700_000_000_000,
        sequence: 1,
        previous: Some((1_699_999_999_000, 0)),
        content_type: ContentType::Json,
        encryption: Encryption::None,
        group_key_id: Vec::new(),
        payload: br#"{"temperature":21.5}"#.to_vec(),
    }
}

/// The four messages of vector `batch`, continuing the chain of `message`: three that share
/// frame 2 (the middle one an encrypted binary payload with a group key id, so every entry
/// field is non-trivial) and a binary message 5 that spans frames 3 and 4.
fn batch_messages() -> Vec<Message> {
    let mut messages: Vec<Message> = (0..4u64)
        .map(|i| Message {
            timestamp_ms: 1_700_000_001_000 + 1000 * i,
            sequence: 2 + i,
            previous: Some((1_700_000_000_000 + 1000 * i, 1 + i)),
            content_type: ContentType::Json,
            encryption: Encryption::None,
            group_key_id: Vec::new(),
            payload: format!("{{\"temperature\":{}.5}}", 22 + i).into_bytes(),
        })
        .collect();
    messages[1].content_type = ContentType::Binary;
    messages[1].encryption = Encryption::Aes256Gcm;
    messages[1].group_key_id = b"group-key-1".to_vec();
    messages[1].payload = (0u8..28).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect();
    messages[3].content_type = ContentType::Binary;
    messages[3].payload = (0u8..48).map(|b| b.wrapping_mul(13).wrapping_add(5)).collect();
    messages
}

/// Where message 5's payload is cut: bytes 0..32 in frame 3, 32..48 in frame 4.
const PIECE_CUT: usize = 32;

/// The canonical byte string built by hand from the spec's statement (docs/protocol.md,
/// "Canonical signed bytes"), independently of `crypto::write_canonical`.
fn canonical_by_spec(key: &StreamPartKey, publisher: &[u8; 20], message: &Message) -> Vec<u8> {
    let mut out = b"runnel-message-v1".to_vec();
    out.extend_from_slice(&key.0);
    out.extend_from_slice(publisher);
    out.extend_from_slice(&CHAIN_ID.to_be_bytes());
    out.extend_from_slice(&message.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&message.sequence.to_be_bytes());
    out.push(message.previous.is_some() as u8);
    let (previous_timestamp_ms, previous_sequence) = message.previous.unwrap_or((0, 0));
    out.extend_from_slice(&previous_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&previous_sequence.to_be_bytes());
    out.push(message.content_type as u8);
    out.push(message.encryption as u8);
    out.push(message.group_key_id.len() as u8);
    out.extend_from_slice(&message.group_key_id);
    out.extend_from_slice(&(message.payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&message.payload);
    out
}

/// How a frame built by [`frame_by_spec`] is authenticated.
enum Authentication<'a> {
    /// A signature after each message entry.
    Single(&'a [[u8; SIGNATURE_LENGTH]]),
    /// A trailer: the root signature and this leaf's proof, leaf level first.
    Batch { leaf_index: u8, signature: &'a [u8; SIGNATURE_LENGTH], proof: &'a [Node] },
}

/// What one frame carries: consecutive messages of the chain, each with the payload bytes
/// this frame holds of it (all of it unless it spans frames).
struct FrameContent<'a> {
    sequence: u64,
    entries: Vec<(&'a Message, &'a [u8])>,
    /// The last message continues in the next frame.
    continues: bool,
    /// The first message began in an earlier frame.
    continuation: bool,
}

/// A frame built by hand from the spec's frame header and message entry tables.
fn frame_by_spec(publisher: &[u8; 20], content: &FrameContent<'_>, authentication: &Authentication<'_>) -> Vec<u8> {
    let (first, _) = content.entries[0];
    // Only the first message's sequence and previous reference are written; the rest are
    // implied (sequence + 1, previous = the message before), so the messages must be such.
    for pair in content.entries.windows(2) {
        let (before, after) = (pair[0].0, pair[1].0);
        assert_eq!(after.sequence, before.sequence + 1, "messages of a frame are consecutive");
        assert_eq!(after.previous, Some((before.timestamp_ms, before.sequence)), "implied previous reference");
    }
    let (previous_timestamp_ms, previous_sequence) = first.previous.unwrap_or((0, 0));
    let flags =
        if first.previous.is_some() { 1 } else { 0 } | if content.continues { 2 } else { 0 } | if content.continuation { 4 } else { 0 };
    let (signature_kind, proof_depth, leaf_index) = match authentication {
        Authentication::Single(_) => (0u8, 0u8, 0u8),
        Authentication::Batch { leaf_index, proof, .. } => (1, proof.len() as u8, *leaf_index),
    };
    let mut out = vec![0; 4]; // 0 frame_length, written last
    out.extend_from_slice(publisher); // 4
    out.extend_from_slice(&CHAIN_ID.to_le_bytes()); // 24
    out.extend_from_slice(&content.sequence.to_le_bytes()); // 32 frame sequence
    out.extend_from_slice(&first.sequence.to_le_bytes()); // 40 first_message_sequence
    out.extend_from_slice(&previous_timestamp_ms.to_le_bytes()); // 48
    out.extend_from_slice(&previous_sequence.to_le_bytes()); // 56
    out.push(signature_kind); // 64
    out.push(flags); // 65
    out.extend_from_slice(&(content.entries.len() as u16).to_le_bytes()); // 66 message_count
    out.push(proof_depth); // 68
    out.push(leaf_index); // 69
    out.extend_from_slice(&[0, 0]); // 70 reserved
    assert_eq!(out.len(), FRAME_HEADER_LENGTH);
    for (index, (message, payload)) in content.entries.iter().enumerate() {
        let entry_start = out.len();
        out.extend_from_slice(&message.timestamp_ms.to_le_bytes()); // +0
        out.push(message.content_type as u8); // +8
        out.push(message.encryption as u8); // +9
        out.push(message.group_key_id.len() as u8); // +10
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes()); // +11
        assert_eq!(out.len() - entry_start, MESSAGE_ENTRY_LENGTH);
        out.extend_from_slice(&message.group_key_id);
        out.extend_from_slice(payload);
        if let Authentication::Single(signatures) = authentication {
            out.extend_from_slice(&signatures[index]);
        }
    }
    if let Authentication::Batch { signature, proof, .. } = authentication {
        out.extend_from_slice(&signature[..]);
        for node in *proof {
            out.extend_from_slice(node);
        }
    }
    let length = out.len() as u32;
    out[..4].copy_from_slice(&length.to_le_bytes());
    out
}

/// A datagram header built by hand from the spec's header table (tag computed separately).
fn header_by_spec(fields: &HeaderFields, key: &LinkKey) -> Vec<u8> {
    let mut out = b"RN".to_vec(); // 0 magic
    out.push(2); // 2 version
    out.push(fields.kind as u8); // 3 kind
    out.extend_from_slice(&fields.link_id.to_le_bytes()); // 4
    out.extend_from_slice(&fields.link_seq.to_le_bytes()); // 8
    out.extend_from_slice(&fields.stream_part_key); // 16
    out.extend_from_slice(&fields.flags.to_le_bytes()); // 48
    out.extend_from_slice(&fields.message_count.to_le_bytes()); // 50
    out.extend_from_slice(&fields.total_length.to_le_bytes()); // 52
    out.extend_from_slice(&[0; 6]); // 54 reserved
    out.extend_from_slice(&fields.publisher); // 60
    assert_eq!(out.len(), TAGGED_HEADER_LENGTH);
    // SipHash-2-4 keyed with the first 16 bytes of the link key, straight from the crate
    // rather than through linktag.rs.
    let mut hasher = SipHasher24::new_with_key(key.0[..16].try_into().expect("16 bytes"));
    hasher.write(&out);
    out.extend_from_slice(&hasher.finish().to_le_bytes()); // 80 link_tag
    out
}

fn canonical(key: &StreamPartKey, publisher: &[u8; 20], message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&message.signed_fields(key, publisher), |part| out.extend_from_slice(part));
    out
}

/// Everything the vectors and the fuzz seeds are made of.
struct Encodings {
    part_key: StreamPartKey,
    /// The single frame of vector `message`.
    single_frame: Vec<u8>,
    /// The Subscribe datagram of vector `link-tag`.
    subscribe: Vec<u8>,
    /// The Data datagram of vector `data-datagram`.
    data_datagram: Vec<u8>,
    /// The three batch frames of vector `batch` (frame sequences 2, 3, 4).
    batch_frames: Vec<Vec<u8>>,
}

fn subscribe_fields(part_key: &StreamPartKey) -> HeaderFields {
    HeaderFields { total_length: HEADER_LENGTH as u16, ..HeaderFields::new(Kind::Subscribe, LINK_ID, 1, part_key.0) }
}

fn data_fields(part_key: &StreamPartKey, publisher: [u8; 20], link_seq: u64) -> HeaderFields {
    HeaderFields { flags: FLAG_SINGLE_PUBLISHER, publisher, ..HeaderFields::new(Kind::Data, LINK_ID, link_seq, part_key.0) }
}

/// The frame's start fields as a library caller gives them to [`FrameWriter::begin`].
fn frame_start(
    publisher: [u8; 20],
    sequence: u64,
    first: &Message,
    kind: SignatureKind,
    proof_depth: u8,
    leaf_index: u8,
    continuation: bool,
) -> FrameStart {
    FrameStart {
        publisher,
        chain_id: CHAIN_ID,
        sequence,
        first_message_sequence: first.sequence,
        previous: first.previous,
        signature_kind: kind,
        proof_depth,
        leaf_index,
        continuation,
    }
}

fn build_vectors() -> (Vec<Vector>, Encodings) {
    let part = stream_part();
    let part_key = part.key();
    let mut vectors = Vec::new();

    // (a) stream part id → key.
    let mut v = Vector::new("stream-part-key");
    v.text("id_input", STREAM_PART_INPUT);
    v.text("id_canonical", part.to_string());
    assert_eq!(part_key.0, *blake3::hash(part.to_string().as_bytes()).as_bytes());
    v.hex("key", &part_key.0);
    vectors.push(v);

    // (b) link tag over a fixed header: a Subscribe datagram is a header alone.
    let link_key = link_key();
    let mut subscribe = vec![0u8; HEADER_LENGTH];
    runnel_proto::wire::write_header(&subscribe_fields(&part_key), &link_key, &mut subscribe);
    assert_eq!(subscribe, header_by_spec(&subscribe_fields(&part_key), &link_key), "header table disagrees with write_header");
    let parsed = Datagram::parse(&subscribe).expect("vector Subscribe parses");
    assert!(parsed.tag_matches(&link_key) && parsed.kind == Kind::Subscribe);
    let tag = link_tag(&link_key, &subscribe[..TAGGED_HEADER_LENGTH]);
    let mut v = Vector::new("link-tag");
    v.hex("link_key", &link_key.0);
    v.hex("siphash_key", &link_key.0[..16]);
    v.hex("tagged_header", &subscribe[..TAGGED_HEADER_LENGTH]);
    v.text("tag_u64", format!("{tag:#018x}"));
    v.hex("tag_bytes", &tag.to_le_bytes());
    v.hex("datagram", &subscribe);
    vectors.push(v);

    let (v, single_frame) = message_vector(&part_key);
    vectors.push(v);
    let (v, data_datagram) = data_datagram_vector(&part_key, &single_frame);
    vectors.push(v);
    let (v, batch_frames) = batch_vector(&part_key);
    vectors.push(v);

    let encodings = Encodings { part_key, single_frame, subscribe, data_datagram, batch_frames };
    (vectors, encodings)
}

/// (c) one message signed by anvil account 0, alone in a single frame (frame sequence 1).
fn message_vector(part_key: &StreamPartKey) -> (Vector, Vec<u8>) {
    let key = anvil_key();
    let address = key.address();
    assert_eq!(runnel_proto::crypto::address_hex(&address), ANVIL_ADDRESS_0);
    let message = single_message();
    let canonical_bytes = canonical(part_key, &address, &message);
    assert_eq!(canonical_bytes, canonical_by_spec(part_key, &address, &message), "canonical bytes disagree with the spec");
    let digest = message_digest(&message.signed_fields(part_key, &address));
    assert_eq!(digest, keccak256(&[&canonical_bytes]));
    assert_eq!(hex::encode(digest), V1_MESSAGE_DIGEST, "the per-message digest changed from protocol v1");
    let eip191 = eip191_hash(&digest);
    assert_eq!(eip191, keccak256(&[b"\x19Ethereum Signed Message:\n32", &digest]));
    let signature = key.sign_message(&message.signed_fields(part_key, &address));
    assert_eq!(hex::encode(signature), V1_MESSAGE_SIGNATURE, "the per-message signature changed from protocol v1");

    let mut frame = Vec::new();
    let start = frame_start(address, 1, &message, SignatureKind::Single, 0, 0, false);
    let mut writer = FrameWriter::begin(&mut frame, &start, FRAME_CAPACITY);
    assert!(writer.push(&mut frame, &message.entry(&message.payload), Some(&signature)));
    writer.finish(&mut frame, false);
    let content = FrameContent { sequence: 1, entries: vec![(&message, &message.payload[..])], continues: false, continuation: false };
    assert_eq!(frame, frame_by_spec(&address, &content, &Authentication::Single(&[signature])), "frame tables disagree with FrameWriter");

    // A publisher writes the same frame: its second message, flushed on its own, is frame 1.
    let mut publisher = Publisher::with_chain_id(key.clone(), *part_key, SigningMode::PerMessage, CHAIN_ID);
    let (previous_timestamp_ms, _) = message.previous.expect("has previous");
    publisher.publish(&Outgoing::json(previous_timestamp_ms, br#"{"temperature":21.0}"#)).expect("publishes");
    publisher.flush();
    publisher.clear_frames();
    publisher.publish(&Outgoing::json(message.timestamp_ms, &message.payload)).expect("publishes");
    publisher.flush();
    assert_eq!((publisher.frames(), publisher.frame_count()), (&frame[..], 1), "the publisher's frame differs from the vector");

    let parsed = Frame::parse(&frame).expect("vector frame parses");
    let views: Vec<_> = parsed.messages().collect();
    assert_eq!(views.len(), 1);
    assert_eq!((views[0].sequence, views[0].previous, views[0].payload), (message.sequence, message.previous, &message.payload[..]));
    assert_eq!(views[0].signature, Some(&signature));
    let mut from_frame = Vec::new();
    write_canonical(&SignedFields::from_message(part_key, &parsed, &views[0]), |part| from_frame.extend_from_slice(part));
    assert_eq!(from_frame, canonical_bytes, "the fields a receiver derives from the frame sign differently");
    assert_eq!(Verifier::default().verify(part_key, &parsed), Ok(VerifyCost::Ecdsa { signatures: 1 }));

    let mut v = Vector::new("message");
    v.text("private_key", ANVIL_KEY_0.trim_start_matches("0x"));
    v.text("publisher", ANVIL_ADDRESS_0);
    v.hex("stream_part_key", &part_key.0);
    v.text("chain_id", CHAIN_ID);
    v.text("timestamp_ms", message.timestamp_ms);
    v.text("sequence", message.sequence);
    v.text("previous_timestamp_ms", previous_timestamp_ms);
    v.text("previous_sequence", message.previous.expect("has previous").1);
    v.text("content_type", "0(JSON)");
    v.text("encryption", "0(none)");
    v.text("payload_utf8", String::from_utf8(message.payload.clone()).expect("UTF-8"));
    v.hex("canonical", &canonical_bytes);
    v.hex("digest", &digest);
    v.hex("eip191_hash", &eip191);
    v.hex("signature", &signature);
    v.text("frame_sequence", 1);
    v.hex("frame", &frame);
    (v, frame)
}

/// (d) the single frame in a Data datagram.
fn data_datagram_vector(part_key: &StreamPartKey, frame: &[u8]) -> (Vector, Vec<u8>) {
    let address = anvil_key().address();
    let link_key = link_key();
    let mut builder = DatagramBuilder::new(DATAGRAM_LENGTH_DEFAULT);
    assert!(builder.try_push(frame));
    let datagram = builder.finish(data_fields(part_key, address, 42), &link_key).to_vec();
    let header_fields = HeaderFields { message_count: 1, total_length: datagram.len() as u16, ..data_fields(part_key, address, 42) };
    assert_eq!(datagram[..HEADER_LENGTH], header_by_spec(&header_fields, &link_key)[..]);
    assert_eq!(datagram[HEADER_LENGTH..], *frame);
    let parsed = Datagram::parse(&datagram).expect("vector datagram parses");
    assert!(parsed.tag_matches(&link_key));
    assert_eq!(parsed.frames().map(|f| f.expect("frame").bytes.to_vec()).collect::<Vec<_>>(), vec![frame.to_vec()]);
    let mut v = Vector::new("data-datagram");
    v.hex("link_key", &link_key.0);
    v.text("link_id", LINK_ID);
    v.text("link_seq", 42);
    v.text("flags", "0x0001(single-publisher)");
    v.text("message_count", 1);
    v.text("total_length", datagram.len());
    v.hex("tag_bytes", &datagram[TAGGED_HEADER_LENGTH..HEADER_LENGTH]);
    v.hex("datagram", &datagram);
    (v, datagram)
}

/// What each frame of vector `batch` holds: frame 2 messages 2, 3, 4; frames 3 and 4 the
/// two pieces of message 5.
fn batch_contents(messages: &[Message]) -> Vec<FrameContent<'_>> {
    let spanning = &messages[3];
    vec![
        FrameContent {
            sequence: 2,
            entries: messages[..3].iter().map(|m| (m, &m.payload[..])).collect(),
            continues: false,
            continuation: false,
        },
        FrameContent { sequence: 3, entries: vec![(spanning, &spanning.payload[..PIECE_CUT])], continues: true, continuation: false },
        FrameContent { sequence: 4, entries: vec![(spanning, &spanning.payload[PIECE_CUT..])], continues: false, continuation: true },
    ]
}

/// (e) three frames under one batch root: tree by hand, frames from the library, both must
/// agree.
fn batch_vector(part_key: &StreamPartKey) -> (Vector, Vec<Vec<u8>>) {
    let key = anvil_key();
    let address = key.address();
    let messages = batch_messages();
    let contents = batch_contents(&messages);
    const DEPTH: u8 = 2;

    // The library: FrameWriter writes each frame with its trailer zeroed, sign_frames fills it.
    let mut buffer = Vec::new();
    let mut ranges = Vec::new();
    for (leaf_index, content) in contents.iter().enumerate() {
        let (first, _) = content.entries[0];
        let start = frame_start(address, content.sequence, first, SignatureKind::Batch, DEPTH, leaf_index as u8, content.continuation);
        let mut writer = FrameWriter::begin(&mut buffer, &start, FRAME_CAPACITY);
        for (message, payload) in &content.entries {
            assert!(writer.push(&mut buffer, &message.entry(payload), None));
        }
        ranges.push(writer.finish(&mut buffer, content.continues));
    }
    key.sign_frames(part_key, &mut buffer, &ranges);
    let frames: Vec<Vec<u8>> = ranges.iter().map(|range| buffer[range.clone()].to_vec()).collect();

    // The spec: leaves over the frames without their trailers, nodes, root, digest.
    let trailer = trailer_length(DEPTH as usize);
    let mut leaves: Vec<Node> =
        frames.iter().map(|frame| truncated_sha256(&[&[0], &part_key.0, &frame[..frame.len() - trailer]])).collect();
    leaves.push([0; PROOF_ENTRY_LENGTH]);
    let node_01 = truncated_sha256(&[&[1], &leaves[0], &leaves[1]]);
    let node_23 = truncated_sha256(&[&[1], &leaves[2], &leaves[3]]);
    let root = truncated_sha256(&[&[1], &node_01, &node_23]);
    assert_eq!(node_01, frame_node(&leaves[0], &leaves[1]));
    let root_digest = keccak256(&[b"runnel-frames-v2", &root]);
    assert_eq!(root_digest, frame_root_digest(&root));
    let signature = key.sign_digest(&root_digest);
    let proofs = [[leaves[1], node_23], [leaves[0], node_23], [leaves[3], node_01]];

    let mut verifier = Verifier::default();
    let mut joined = Vec::new();
    for (index, frame) in frames.iter().enumerate() {
        let authentication = Authentication::Batch { leaf_index: index as u8, signature: &signature, proof: &proofs[index] };
        assert_eq!(*frame, frame_by_spec(&address, &contents[index], &authentication), "frame {index} disagrees with the tables");
        let parsed = Frame::parse(frame).expect("batch frame parses");
        let leaf = frame_leaf(part_key, parsed.signed_bytes());
        assert_eq!(leaf, leaves[index], "frame {index} leaf");
        let (_, proof) = parsed.trailer().expect("batch frames carry a trailer");
        assert_eq!(frame_root_from_proof(leaf, index, proof), root, "frame {index} proof");
        let expected = if index == 0 { VerifyCost::Ecdsa { signatures: 1 } } else { VerifyCost::CachedRoot };
        assert_eq!(verifier.verify(part_key, &parsed), Ok(expected), "frame {index}");
        for view in parsed.messages() {
            let message = messages.iter().find(|m| m.sequence == view.sequence).expect("a vector message");
            assert_eq!(
                (view.timestamp_ms, view.previous, view.group_key_id),
                (message.timestamp_ms, message.previous, &message.group_key_id[..])
            );
            joined.extend_from_slice(view.payload);
            if !view.continues {
                assert_eq!(std::mem::take(&mut joined), message.payload, "message {} joined from its pieces", view.sequence);
            }
        }
    }
    assert_eq!(split_frames(&buffer).count(), 3);

    let mut v = Vector::new("batch");
    for (index, leaf) in leaves.iter().enumerate() {
        v.hex(&format!("leaf_{index}"), leaf);
    }
    v.hex("node_01", &node_01);
    v.hex("node_23", &node_23);
    v.hex("root", &root);
    v.hex("root_digest", &root_digest);
    v.hex("root_eip191_hash", &eip191_hash(&root_digest));
    v.hex("signature", &signature);
    for (index, frame) in frames.iter().enumerate() {
        v.hex(&format!("frame_{index}"), frame);
    }
    (v, frames)
}

// Goal: the test's own SHA-256 is SHA-256 (FIPS 180-4 examples: empty, "abc", two blocks),
// so the batch tree it checks the library against is the standard one.
#[test]
fn spec_sha256_matches_fips_examples() {
    assert_eq!(hex::encode(sha256(&[])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(hex::encode(sha256(&[b"a", b"bc"])), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        hex::encode(sha256(&[b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"])),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

// Goal: every vector in docs/protocol.md equals what the code computes, field by field, and
// the doc has no vector block the code does not produce (so nothing stale survives).
#[test]
fn doc_vectors_match_the_code() {
    let (vectors, _) = build_vectors();
    if std::env::var_os("RUNNEL_PRINT_VECTORS").is_some() {
        for vector in &vectors {
            println!("{}", vector.render());
        }
    }
    let path = doc_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let documented = parse_doc_vectors(&text);
    let labels: Vec<&str> = documented.iter().map(|(label, _)| label.as_str()).collect();
    let expected_labels: Vec<&str> = vectors.iter().map(|v| v.label).collect();
    assert_eq!(labels, expected_labels, "vector blocks in {} (in order)", path.display());
    for (vector, (_, fields)) in vectors.iter().zip(&documented) {
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        let expected_names: Vec<&str> = vector.fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, expected_names, "fields of vector {}", vector.label);
        for ((name, documented), (_, computed)) in fields.iter().zip(&vector.fields) {
            assert_eq!(
                documented, computed,
                "vector {} field {name}: the doc says {documented}, the code computes {computed} \
                 (regenerate with RUNNEL_PRINT_VECTORS=1 if the protocol changed on purpose)",
                vector.label
            );
        }
    }
}

// Goal: the doc-block parser reads wrapped values and rejects nothing valid, so a mismatch
// reported by `doc_vectors_match_the_code` is a real difference, not a parsing artifact.
#[test]
fn rendered_vectors_parse_back() {
    let (vectors, _) = build_vectors();
    let text: String = vectors.iter().map(|v| format!("prose\n\n{}\nmore prose\n", v.render())).collect();
    let parsed = parse_doc_vectors(&text);
    assert_eq!(parsed.len(), vectors.len());
    for (vector, (label, fields)) in vectors.iter().zip(parsed) {
        assert_eq!(label, vector.label);
        assert_eq!(fields, vector.fields);
    }
}

/// A Data datagram on link 7 holding `frames`, tagged with the vectors' link key.
fn data_datagram(part_key: &StreamPartKey, frames: &[&[u8]], link_seq: u64, flags: u16, pad: bool) -> Vec<u8> {
    let mut builder = DatagramBuilder::new(DATAGRAM_LENGTH_DEFAULT);
    for frame in frames {
        assert!(builder.try_push(frame));
    }
    if pad {
        builder.pad_to(DATAGRAM_LENGTH_DEFAULT);
    }
    let fields = HeaderFields { flags: flags | FLAG_SINGLE_PUBLISHER, ..data_fields(part_key, anvil_key().address(), link_seq) };
    builder.finish(fields, &link_key()).to_vec()
}

/// The datagrams the seeds are made of, besides the vectors' own.
struct SeedDatagrams {
    /// The three batch frames in one padded datagram.
    batch: Vec<u8>,
    /// Frame 4 alone, then frames 2 and 3: message 5's pieces out of order.
    last_piece: Vec<u8>,
    first_frames: Vec<u8>,
    /// A NAK for frame sequences 2..=4, and an Unsubscribe.
    nak: Vec<u8>,
    unsubscribe: Vec<u8>,
    /// The single frame again, flagged repair.
    repair: Vec<u8>,
    /// Plumtree: an IHave announcing frame sequences 1..=6 (more than the seeds hold, so it
    /// opens a gap that grafts), and a Prune.
    ihave: Vec<u8>,
    prune: Vec<u8>,
    /// Subscribe, batch, single-frame datagram in one GRO-style buffer.
    coalesced: Vec<u8>,
}

fn seed_datagrams(encodings: &Encodings) -> SeedDatagrams {
    let link_key = link_key();
    let part_key = encodings.part_key;
    let address = anvil_key().address();
    let frames: Vec<&[u8]> = encodings.batch_frames.iter().map(Vec::as_slice).collect();
    let batch = data_datagram(&part_key, &frames, 43, 0, true);
    let last_piece = data_datagram(&part_key, &frames[2..], 44, 0, false);
    let first_frames = data_datagram(&part_key, &frames[..2], 45, 0, false);
    let mut builder = DatagramBuilder::new(DATAGRAM_LENGTH_DEFAULT);
    encode_nak_range(&NakRange { publisher: address, chain_id: CHAIN_ID, first_sequence: 2, last_sequence: 4 }, builder.body_mut());
    builder.set_count(1);
    let nak = builder.finish(HeaderFields::new(Kind::Nak, LINK_ID, 46, part_key.0), &link_key).to_vec();
    builder.reset();
    let unsubscribe = builder.finish(HeaderFields::new(Kind::Unsubscribe, LINK_ID, 47, part_key.0), &link_key).to_vec();
    let repair = data_datagram(&part_key, &[&encodings.single_frame], 48, FLAG_REPAIR, false);
    builder.reset();
    encode_nak_range(&NakRange { publisher: address, chain_id: CHAIN_ID, first_sequence: 1, last_sequence: 6 }, builder.body_mut());
    builder.set_count(1);
    let ihave = builder.finish(HeaderFields::new(Kind::IHave, LINK_ID, 49, part_key.0), &link_key).to_vec();
    builder.reset();
    let prune = builder.finish(HeaderFields::new(Kind::Prune, LINK_ID, 50, part_key.0), &link_key).to_vec();
    let coalesced = [&encodings.subscribe[..], &batch[..], &encodings.data_datagram[..]].concat();
    SeedDatagrams { batch, last_piece, first_frames, nak, unsubscribe, repair, ihave, prune, coalesced }
}

/// Seed inputs of every fuzz target, built from valid encodings.
fn fuzz_seeds(encodings: &Encodings) -> Vec<(&'static str, Vec<u8>)> {
    let link_key = link_key();
    let client_key = LinkKey([0x22; 32]);
    let part_key = encodings.part_key;
    let datagrams = seed_datagrams(encodings);
    let mut seeds: Vec<(&'static str, Vec<u8>)> = Vec::new();

    // datagram: every kind, padding, and a GRO-coalesced buffer; every frame verifies.
    let all = [
        &encodings.subscribe,
        &encodings.data_datagram,
        &datagrams.batch,
        &datagrams.last_piece,
        &datagrams.first_frames,
        &datagrams.nak,
        &datagrams.unsubscribe,
        &datagrams.repair,
        &datagrams.ihave,
        &datagrams.prune,
        &datagrams.coalesced,
    ];
    let mut verifier = Verifier::default();
    for datagram in all {
        for parsed in split_datagrams(datagram) {
            let parsed = parsed.expect("seed datagram parses");
            assert!(parsed.tag_matches(&link_key));
            if parsed.kind == Kind::Data {
                let frames: Vec<Frame<'_>> = parsed.frames().collect::<Result<_, _>>().expect("seed frames parse");
                assert_eq!(frames.len(), parsed.message_count() as usize);
                assert!(frames.iter().all(|frame| verifier.verify(&part_key, frame).is_ok()), "a seed frame does not verify");
            }
        }
        seeds.push(("datagram", datagram.to_vec()));
        if datagram.len() == Datagram::parse(datagram).map_or(0, |d| d.total_length()) {
            // filter: re-tag, joined, one seed per role.
            seeds.push(("filter", [&[0b1010u8][..], datagram].concat()));
            seeds.push(("filter", [&[0b1011u8][..], datagram].concat()));
        }
    }
    assert_eq!(Datagram::parse(&datagrams.nak).expect("nak").nak_ranges().expect("ranges").count(), 1);
    assert_eq!(Datagram::parse(&datagrams.ihave).expect("ihave").nak_ranges().expect("ranges").count(), 1);
    assert_eq!(Datagram::parse(&datagrams.prune).expect("prune").kind, Kind::Prune);

    // frame: the single frame, each batch frame, and all of them back to back.
    seeds.push(("frame", encodings.single_frame.clone()));
    for frame in &encodings.batch_frames {
        seeds.push(("frame", frame.clone()));
    }
    seeds.push(("frame", [&encodings.single_frame[..], &encodings.batch_frames.concat()[..]].concat()));

    // config: the documented example.
    let config = format!(
        "[node]\nlisten = \"127.0.0.1:7000\"\nshards = 2\ndatagram_length_max = 1472\nverify = \"all\"\n\n\
         [[links]]\nid = {LINK_ID}\nkey = \"{}\"\nrole = \"neighbor\"\npeer = \"127.0.0.1:7100\"\npeer_shards = 2\n\n\
         [[links]]\nid = {CLIENT_LINK_ID}\nkey = \"{}\"\nrole = \"client\"\n",
        hex::encode(link_key.0),
        hex::encode(client_key.0)
    );
    runnel_node::config::NodeConfig::parse(&config).expect("seed config parses");
    seeds.push(("config", config.into_bytes()));

    for script in relay_scripts(encodings, &datagrams, &client_key) {
        seeds.push(("relay", script));
    }

    // client_link: a full link file and one relying on the default datagram size.
    let link_file =
        format!("node = \"127.0.0.1:7000\"\nnode_shards = 2\nlink_id = {CLIENT_LINK_ID}\nkey = \"{}\"\n", hex::encode(client_key.0));
    let link = runnel_client::ClientLinkConfig::parse(&link_file).expect("seed link file parses");
    seeds.push(("client_link", link_file.into_bytes()));
    seeds.push(("client_link", link.to_toml().into_bytes()));

    // client: node traffic on link 7, in the format of dataplane/fuzz/fuzz_targets/client.rs;
    // each script ends with empty receives (1 ms each) so the chain settles and delivers.
    let chunk = |bytes: &[u8]| -> Vec<u8> { [&(bytes.len() as u16).to_le_bytes()[..], bytes].concat() };
    let idle = chunk(&[]).repeat(CLIENT_IDLE_RECEIVES);
    const CLIENT_VERIFY: u8 = 1;
    const CLIENT_REWRITE_TAGS: u8 = 2;
    seeds.push((
        "client",
        [vec![CLIENT_VERIFY], chunk(&encodings.data_datagram), chunk(&datagrams.batch), chunk(&datagrams.repair), idle.clone()].concat(),
    ));
    seeds.push((
        "client",
        [
            vec![CLIENT_VERIFY | CLIENT_REWRITE_TAGS],
            chunk(&datagrams.last_piece),
            chunk(&datagrams.first_frames),
            chunk(&datagrams.nak),
            chunk(&datagrams.coalesced),
            idle.clone(),
        ]
        .concat(),
    ));
    seeds.push(("client", [vec![0], chunk(&repair_gap(&datagrams.batch, &link_key)), chunk(&encodings.data_datagram), idle].concat()));

    // ipc: one archive of every request and reply shape (byte 0: even = request, odd = reply).
    seeds.extend(ipc_seeds(part_key).into_iter().map(|seed| ("ipc", seed)));
    seeds
}

/// Valid IPC archives, prefixed with the `ipc` fuzz target's selector byte.
fn ipc_seeds(part: StreamPartKey) -> Vec<Vec<u8>> {
    use runnel_node::command::Command;
    use runnel_node::config::{LinkConfig, LinkRole};
    use runnel_node::ipc::{
        decode_reply, decode_request, read_frame, write_frame, Reply, Request, WireCommand, WireError, WireEvent, WireLinkTraffic,
    };
    let neighbor = LinkConfig {
        id: 7,
        peer_link_id: None,
        key: LinkKey([9; 32]),
        role: LinkRole::Neighbor,
        peer: Some("10.1.0.2:7000".parse().unwrap()),
        peer_shards: 2,
        rate_datagrams_per_s: 1000,
        burst_datagrams: 64,
    };
    let commands = [
        Command::AddLink(neighbor),
        Command::RemoveLink { link_id: 7 },
        Command::Join { part },
        Command::Leave { part },
        Command::Policy(runnel_core::filter::FilterUpdate::Permit { part, publisher: [3; 20], until_ns: u64::MAX }),
        Command::Policy(runnel_core::filter::FilterUpdate::ScopeClient { link_id: 9, part, publish: false, subscribe: true }),
    ];
    let mut requests = vec![Request::Hello { version: runnel_node::ipc::IPC_VERSION }, Request::Status { id: 9 }];
    requests.extend(
        commands.iter().enumerate().map(|(id, command)| Request::Command { id: id as u64, command: WireCommand::from_command(command) }),
    );
    let replies = [
        Reply::Hello { version: 1, listen: vec!["127.0.0.1:7000".into()], shards: 1, links: vec![0x8000_0001] },
        Reply::Response { id: 1, error: None },
        Reply::Response { id: 2, error: Some(WireError { kind: "unknown_link".into(), message: "no link 7".into() }) },
        Reply::Event(WireEvent::SignatureFailure { shard: 0, link_id: 7, publisher: [3; 20], publisher_proven: true }),
        Reply::Event(WireEvent::NeighborSilent { shard: 1, link_id: 7, part: part.0 }),
        Reply::Status {
            id: 9,
            counters: vec![("frames_delivered".into(), 5)],
            links: vec![WireLinkTraffic { link_id: 7, frames_sent: 3, bytes_sent: 4416, frames_received: 1, bytes_received: 1472 }],
        },
        Reply::ProtocolError { message: "bad frame".into() },
    ];
    let archive = |frame: Vec<u8>| {
        let mut archive = Vec::new();
        assert!(read_frame(&mut &frame[..], &mut archive).unwrap());
        archive
    };
    let mut seeds = Vec::new();
    for request in requests {
        let mut frame = Vec::new();
        write_frame(&mut frame, &request).unwrap();
        let bytes = archive(frame);
        assert_eq!(decode_request(&bytes).unwrap(), request);
        seeds.push([vec![0], bytes].concat());
    }
    for reply in replies {
        let mut frame = Vec::new();
        write_frame(&mut frame, &reply).unwrap();
        let bytes = archive(frame);
        assert_eq!(decode_reply(&bytes).unwrap(), reply);
        seeds.push([vec![1], bytes].concat());
    }
    seeds
}

/// Empty receives at the end of a client seed: more than the client's settling delay, in ms.
const CLIENT_IDLE_RECEIVES: usize = 10;

/// Plays a client seed the way dataplane/fuzz/fuzz_targets/client.rs does (its tags are
/// valid already, so the rewrite option changes nothing) and returns what was delivered.
fn play_client_seed(seed: &[u8]) -> Vec<OwnedDelivery> {
    let (&options, mut input) = seed.split_first().expect("options byte");
    let link = ClientLinkConfig {
        node: "127.0.0.1:7000".parse().expect("address"),
        node_shards: 1,
        link_id: LINK_ID,
        key: link_key(),
        datagram_length_max: DATAGRAM_LENGTH_DEFAULT,
    };
    let mut core = ClientCore::new(&link, CoreOptions { verify: options & 1 != 0, link_seq_start: 1 });
    let mut now_us = 1_000_000;
    core.subscribe(now_us, &stream_part().key()).expect("one subscription");
    let mut delivered = Vec::new();
    let mut transmit = Vec::new();
    while let Some((length, rest)) = input.split_first_chunk::<2>() {
        let length = u16::from_le_bytes(*length) as usize;
        let (buffer, rest) = rest.split_at(length);
        input = rest;
        now_us += 1000;
        core.handle_receive(now_us, buffer, &mut |delivery| delivered.push(delivery.to_owned()));
        if core.poll_timeout().is_some_and(|due_us| due_us <= now_us) {
            core.handle_timeout(now_us);
        }
        core.flush();
        while core.poll_transmit(&mut transmit).is_some() {}
    }
    delivered
}

/// Scripts in the format of dataplane/fuzz/fuzz_targets/relay.rs.
fn relay_scripts(encodings: &Encodings, datagrams: &SeedDatagrams, client_key: &LinkKey) -> Vec<Vec<u8>> {
    let receive = |op: u8, bytes: &[u8]| -> Vec<u8> {
        let mut out = vec![op];
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
        out
    };
    let clock = |step_ms: u16| -> Vec<u8> {
        let mut out = vec![2];
        out.extend_from_slice(&step_ms.to_le_bytes());
        out
    };
    const FLUSH: u8 = 3;
    const VERIFY_ALL: u8 = 0;
    const VERIFY_NONE_REWRITE_TAGS: u8 = 3;
    let on_client_link = |datagram: &[u8], link_seq: u64| -> Vec<u8> {
        let mut datagram = datagram.to_vec();
        datagram[4..8].copy_from_slice(&CLIENT_LINK_ID.to_le_bytes());
        datagram[8..16].copy_from_slice(&link_seq.to_le_bytes());
        retag(datagram, client_key)
    };
    let client_subscribe = on_client_link(&encodings.subscribe, 1);
    let client_publish = on_client_link(&encodings.data_datagram, 2);
    vec![
        // A neighbor subscribes, then sends the single frame and the batch; flush.
        [
            vec![VERIFY_ALL],
            receive(0, &encodings.subscribe),
            receive(0, &encodings.data_datagram),
            receive(0, &datagrams.batch),
            vec![FLUSH],
        ]
        .concat(),
        // A client subscribes, a client publishes, the neighbor forwards the same frame (duplicate).
        [
            vec![VERIFY_ALL],
            receive(1, &client_subscribe),
            receive(0, &encodings.subscribe),
            receive(1, &client_publish),
            receive(0, &encodings.data_datagram),
            vec![FLUSH],
            clock(1000),
            vec![FLUSH],
        ]
        .concat(),
        // A gap (the frame before the batch is missing), time passes: NAKs and loss.
        [
            vec![VERIFY_NONE_REWRITE_TAGS],
            receive(1, &client_subscribe),
            receive(0, &repair_gap(&datagrams.batch, &link_key())),
            clock(10),
            vec![FLUSH],
            clock(100),
            clock(5000),
            vec![FLUSH],
        ]
        .concat(),
        // The pieces of message 5 out of order, a NAK asking for repair, an unsubscribe, a GRO buffer.
        [
            vec![VERIFY_ALL],
            receive(0, &encodings.subscribe),
            receive(1, &client_subscribe),
            receive(0, &encodings.data_datagram),
            receive(0, &datagrams.last_piece),
            receive(0, &datagrams.first_frames),
            receive(0, &datagrams.nak),
            vec![FLUSH],
            receive(0, &datagrams.unsubscribe),
            receive(0, &datagrams.coalesced),
            clock(4000),
            vec![FLUSH],
        ]
        .concat(),
        // Plumtree: the neighbor announces more than it sent (a gap, grafted by a NAK after the
        // graft delay), prunes this relay, then repeats a frame in full (pruned back).
        [
            vec![VERIFY_ALL],
            receive(0, &encodings.subscribe),
            receive(1, &client_subscribe),
            receive(0, &encodings.data_datagram),
            receive(0, &datagrams.ihave),
            vec![FLUSH],
            clock(10),
            vec![FLUSH],
            receive(0, &datagrams.prune),
            receive(1, &client_publish),
            receive(0, &datagrams.batch),
            vec![FLUSH],
            clock(100),
            vec![FLUSH],
        ]
        .concat(),
    ]
}

/// Recomputes the link tag of a single datagram after its header was edited.
fn retag(mut datagram: Vec<u8>, key: &LinkKey) -> Vec<u8> {
    let tag = link_tag(key, &datagram[..TAGGED_HEADER_LENGTH]);
    datagram[TAGGED_HEADER_LENGTH..HEADER_LENGTH].copy_from_slice(&tag.to_le_bytes());
    datagram
}

/// The batch datagram with a later link sequence, so that it arrives as the first thing on
/// its chain after the single frame was never seen: frames 2..=4 behind a missing 1.
fn repair_gap(batch_datagram: &[u8], key: &LinkKey) -> Vec<u8> {
    let mut datagram = batch_datagram.to_vec();
    datagram[8..16].copy_from_slice(&100u64.to_le_bytes());
    retag(datagram, key)
}

// Goal: the fuzz seed corpora are valid encodings of every input kind (each parses, tags
// match, frames verify); with RUNNEL_FUZZ_SEEDS=<dir> they are written to <dir>/<target>/.
#[test]
fn fuzz_seed_corpora() {
    let (_, encodings) = build_vectors();
    let seeds = fuzz_seeds(&encodings);
    for target in ["datagram", "frame", "config", "relay", "client_link", "client", "filter", "ipc"] {
        assert!(seeds.iter().any(|(t, _)| *t == target), "no seed for fuzz target {target}");
    }
    // The client seeds reach the delivery oracle: every message of the chain from 1 on, in
    // order, message 5 joined from its two pieces.
    let mut expected: Vec<(u64, Vec<u8>)> = vec![(1, single_message().payload)];
    expected.extend(batch_messages().into_iter().map(|m| (m.sequence, m.payload)));
    for (_, seed) in seeds.iter().filter(|(target, _)| *target == "client") {
        let delivered: Vec<(u64, Vec<u8>)> = play_client_seed(seed).into_iter().map(|d| (d.sequence, d.payload)).collect();
        assert_eq!(delivered, expected, "client seed {}", hex::encode(&seed[..1]));
    }
    let Some(directory) = std::env::var_os("RUNNEL_FUZZ_SEEDS") else {
        return;
    };
    let directory = PathBuf::from(directory);
    for (index, (target, seed)) in seeds.iter().enumerate() {
        let target_directory = directory.join(target);
        std::fs::create_dir_all(&target_directory).unwrap_or_else(|e| panic!("cannot create {}: {e}", target_directory.display()));
        let path = target_directory.join(format!("seed-{index:02}"));
        std::fs::write(&path, seed).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    println!("wrote {} fuzz seeds under {}", seeds.len(), directory.display());
}

// Goal: every flag bit the spec names has the value the frame module gives it, so the
// hand-built frames above and the doc's flag table say the same thing.
#[test]
fn frame_flags_match_the_spec() {
    assert_eq!((FRAME_FLAG_HAS_PREVIOUS, FRAME_FLAG_CONTINUES, FRAME_FLAG_CONTINUATION), (1, 2, 4));
}
