//! Protocol test vectors: computes every vector of `docs/protocol.md` and checks it against
//! the hex written there, so the spec can never drift from the code.
//!
//! How it works: each vector is a fenced block in the doc opened with ```` ```vector <label> ````
//! and holding `name: value` lines (long hex values continue on indented lines). The test
//! builds the same blocks from the code and compares them field by field. Where the spec
//! states a layout (canonical bytes, record, header, Merkle tree), the test also builds the
//! bytes by hand from that statement and checks the library produces the same, so the prose
//! is tested too, not only the hex.
//!
//! Regenerate the doc's blocks after a deliberate protocol change with
//! `RUNNEL_PRINT_VECTORS=1 cargo test --release -p runnel-dataplane --test protocol_vectors -- --nocapture`
//! and paste them over the old ones.
//!
//! The same valid encodings seed the fuzz corpora: with `RUNNEL_FUZZ_SEEDS=<dir>` the
//! `fuzz_seed_corpora` test writes `<dir>/<target>/seed-*` for every target in
//! `dataplane/fuzz` (scripts/test.sh does this before fuzzing).

use runnel_proto::crypto::{
    batch_leaf, batch_root_digest, batch_root_from_path, eip191_hash, keccak256, message_digest, write_canonical, PublisherKey,
    SignedFields, Verifier, VerifyCost,
};
use runnel_proto::linktag::{link_tag, LinkKey};
use runnel_proto::stream::{StreamPart, StreamPartKey};
use runnel_proto::wire::{
    encode_fragment, encode_nak_range, split_datagrams, ContentType, Datagram, DatagramBuilder, Encryption, FragmentHeader, HeaderFields,
    Kind, MessageFields, NakRange, Record, FLAG_REPAIR, FLAG_SINGLE_PUBLISHER, HEADER_LENGTH, MESSAGE_HEADER_LENGTH, SIGNATURE_LENGTH,
    TAGGED_HEADER_LENGTH,
};
use siphasher::sip::SipHasher24;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

/// Anvil/Hardhat account 0: a published test key, never a real one.
const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const ANVIL_ADDRESS_0: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
/// The stream part of every vector, written with an upper-case owner to show canonicalization.
const STREAM_PART_INPUT: &str = "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266/sensors/temperature#0";
const LINK_ID: u32 = 7;
/// Link id of the client link the relay fuzz target configures besides `LINK_ID`.
const CLIENT_LINK_ID: u32 = 8;
/// Hex characters per line when a value is wrapped (32 bytes).
const HEX_LINE_LENGTH: usize = 64;

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

/// The message of vector `message`.
fn message_fields(publisher: [u8; 20]) -> MessageFields {
    MessageFields {
        publisher,
        chain_id: 1,
        timestamp_ms: 1_700_000_000_000,
        sequence: 1,
        previous: Some((1_699_999_999_000, 0)),
        content_type: ContentType::Json,
        encryption: Encryption::None,
        group_key_id: Vec::new(),
        payload: br#"{"temperature":21.5}"#.to_vec(),
    }
}

/// The three messages of vector `batch`: they continue the chain of `message`; the middle
/// one is an encrypted binary payload with a group key id, so every field is non-trivial.
fn batch_fields(publisher: [u8; 20]) -> Vec<MessageFields> {
    let first = message_fields(publisher);
    let mut batch = Vec::new();
    for i in 0..3u64 {
        let mut fields = first.clone();
        fields.sequence = 2 + i;
        fields.timestamp_ms = 1_700_000_001_000 + 1000 * i;
        fields.previous = Some((fields.timestamp_ms - 1000, fields.sequence - 1));
        fields.payload = format!("{{\"temperature\":{}.5}}", 22 + i).into_bytes();
        if i == 1 {
            fields.content_type = ContentType::Binary;
            fields.encryption = Encryption::Aes256Gcm;
            fields.group_key_id = b"group-key-1".to_vec();
            fields.payload = (0u8..28).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect();
        }
        batch.push(fields);
    }
    batch
}

/// The canonical byte string built by hand from the spec's statement (docs/protocol.md,
/// "Canonical signed bytes"), independently of `crypto::write_canonical`.
fn canonical_by_spec(key: &StreamPartKey, fields: &MessageFields) -> Vec<u8> {
    let mut out = b"runnel-message-v1".to_vec();
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&fields.publisher);
    out.extend_from_slice(&fields.chain_id.to_be_bytes());
    out.extend_from_slice(&fields.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&fields.sequence.to_be_bytes());
    out.push(fields.previous.is_some() as u8);
    let (previous_timestamp_ms, previous_sequence) = fields.previous.unwrap_or((0, 0));
    out.extend_from_slice(&previous_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&previous_sequence.to_be_bytes());
    out.push(fields.content_type as u8);
    out.push(fields.encryption as u8);
    out.push(fields.group_key_id.len() as u8);
    out.extend_from_slice(&fields.group_key_id);
    out.extend_from_slice(&(fields.payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&fields.payload);
    out
}

/// A message record built by hand from the spec's record table.
fn record_by_spec(fields: &MessageFields, signature: &[u8], leaf_index: u32, path: &[[u8; 32]]) -> Vec<u8> {
    let length = MESSAGE_HEADER_LENGTH + fields.group_key_id.len() + fields.payload.len() + SIGNATURE_LENGTH + 32 * path.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(length as u32).to_le_bytes()); // 0 record_length
    out.extend_from_slice(&fields.publisher); // 4 publisher
    out.extend_from_slice(&fields.chain_id.to_le_bytes()); // 24
    out.extend_from_slice(&fields.timestamp_ms.to_le_bytes()); // 32
    out.extend_from_slice(&fields.sequence.to_le_bytes()); // 40
    let (previous_timestamp_ms, previous_sequence) = fields.previous.unwrap_or((0, 0));
    out.extend_from_slice(&previous_timestamp_ms.to_le_bytes()); // 48
    out.extend_from_slice(&previous_sequence.to_le_bytes()); // 56
    out.push(fields.content_type as u8); // 64
    out.push(fields.encryption as u8); // 65
    out.push(if path.is_empty() { 0 } else { 1 }); // 66 signature_kind
    out.push(fields.previous.is_some() as u8); // 67 flags
    out.push(fields.group_key_id.len() as u8); // 68
    out.push(path.len() as u8); // 69 proof_depth
    out.extend_from_slice(&[0, 0]); // 70 reserved
    out.extend_from_slice(&leaf_index.to_le_bytes()); // 72
    out.extend_from_slice(&(fields.payload.len() as u32).to_le_bytes()); // 76
    assert_eq!(out.len(), MESSAGE_HEADER_LENGTH);
    out.extend_from_slice(&fields.group_key_id);
    out.extend_from_slice(&fields.payload);
    out.extend_from_slice(signature);
    for node in path {
        out.extend_from_slice(node);
    }
    out
}

/// A datagram header built by hand from the spec's header table (tag computed separately).
fn header_by_spec(fields: &HeaderFields, key: &LinkKey) -> Vec<u8> {
    let mut out = b"RN".to_vec(); // 0 magic
    out.push(1); // 2 version
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

fn blake3_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[1]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

fn canonical(key: &StreamPartKey, fields: &MessageFields) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&SignedFields::from_fields(key, fields), |part| out.extend_from_slice(part));
    out
}

/// Everything the vectors and the fuzz seeds are made of.
struct Encodings {
    part_key: StreamPartKey,
    /// The single-signature record of vector `message`.
    record: Vec<u8>,
    /// The Subscribe datagram of vector `link-tag`.
    subscribe: Vec<u8>,
    /// The Data datagram of vector `data-datagram`.
    data_datagram: Vec<u8>,
    /// The three batch-signed records of vector `batch`, back to back, and their lengths.
    batch_records: Vec<u8>,
    batch_lengths: Vec<usize>,
}

fn subscribe_fields(part_key: &StreamPartKey) -> HeaderFields {
    HeaderFields {
        kind: Kind::Subscribe,
        link_id: LINK_ID,
        link_seq: 1,
        stream_part_key: part_key.0,
        flags: 0,
        message_count: 0,
        total_length: HEADER_LENGTH as u16,
        publisher: [0; 20],
    }
}

fn data_fields(part_key: &StreamPartKey, publisher: [u8; 20], link_seq: u64) -> HeaderFields {
    HeaderFields {
        kind: Kind::Data,
        link_id: LINK_ID,
        link_seq,
        stream_part_key: part_key.0,
        flags: FLAG_SINGLE_PUBLISHER,
        message_count: 0,
        total_length: 0,
        publisher,
    }
}

fn build_vectors() -> (Vec<Vector>, Encodings) {
    let key = anvil_key();
    let address = key.address();
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

    // (c) one message signed by anvil account 0.
    assert_eq!(runnel_proto::crypto::address_hex(&address), ANVIL_ADDRESS_0);
    let fields = message_fields(address);
    let canonical_bytes = canonical(&part_key, &fields);
    assert_eq!(canonical_bytes, canonical_by_spec(&part_key, &fields), "canonical bytes disagree with the spec");
    let digest = message_digest(&SignedFields::from_fields(&part_key, &fields));
    assert_eq!(digest, keccak256(&[&canonical_bytes]));
    let eip191 = eip191_hash(&digest);
    assert_eq!(eip191, keccak256(&[b"\x19Ethereum Signed Message:\n32", &digest]));
    let mut record = Vec::new();
    key.sign_into(&part_key, &fields, &mut record);
    let parsed = Record::parse(&record).expect("vector record parses");
    let signature = *parsed.signature;
    assert_eq!(record, record_by_spec(&fields, &signature, 0, &[]), "record table disagrees with the encoder");
    assert_eq!(Verifier::default().verify(&part_key, &parsed), Ok(VerifyCost::Ecdsa));
    let mut v = Vector::new("message");
    v.text("private_key", ANVIL_KEY_0.trim_start_matches("0x"));
    v.text("publisher", ANVIL_ADDRESS_0);
    v.hex("stream_part_key", &part_key.0);
    v.text("chain_id", fields.chain_id);
    v.text("timestamp_ms", fields.timestamp_ms);
    v.text("sequence", fields.sequence);
    let (previous_timestamp_ms, previous_sequence) = fields.previous.expect("has previous");
    v.text("previous_timestamp_ms", previous_timestamp_ms);
    v.text("previous_sequence", previous_sequence);
    v.text("content_type", "0(JSON)");
    v.text("encryption", "0(none)");
    v.text("payload_utf8", String::from_utf8(fields.payload.clone()).expect("UTF-8"));
    v.hex("canonical", &canonical_bytes);
    v.hex("digest", &digest);
    v.hex("eip191_hash", &eip191);
    v.hex("signature", &signature);
    v.hex("record", &record);
    vectors.push(v);

    // (d) the record in a Data datagram.
    let mut builder = DatagramBuilder::new(runnel_proto::wire::DATAGRAM_LENGTH_DEFAULT);
    assert!(builder.try_push(&record));
    let data_datagram = builder.finish(data_fields(&part_key, address, 42), &link_key).to_vec();
    let header_fields = HeaderFields { message_count: 1, total_length: data_datagram.len() as u16, ..data_fields(&part_key, address, 42) };
    assert_eq!(data_datagram[..HEADER_LENGTH], header_by_spec(&header_fields, &link_key)[..]);
    let parsed = Datagram::parse(&data_datagram).expect("vector datagram parses");
    assert!(parsed.tag_matches(&link_key));
    assert_eq!(parsed.records().map(|r| r.expect("record").bytes.to_vec()).collect::<Vec<_>>(), vec![record.clone()]);
    let mut v = Vector::new("data-datagram");
    v.hex("link_key", &link_key.0);
    v.text("link_id", LINK_ID);
    v.text("link_seq", 42);
    v.text("flags", "0x0001(single-publisher)");
    v.text("total_length", data_datagram.len());
    v.hex("tag_bytes", &data_datagram[TAGGED_HEADER_LENGTH..HEADER_LENGTH]);
    v.hex("datagram", &data_datagram);
    vectors.push(v);

    // (e) a 3-message batch: tree by hand, records from the library, both must agree.
    let batch = batch_fields(address);
    let mut leaves: Vec<[u8; 32]> = batch
        .iter()
        .map(|f| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&[0]);
            hasher.update(&canonical_by_spec(&part_key, f));
            let leaf = *hasher.finalize().as_bytes();
            assert_eq!(leaf, batch_leaf(&SignedFields::from_fields(&part_key, f)));
            leaf
        })
        .collect();
    leaves.push([0; 32]);
    let node_01 = blake3_node(&leaves[0], &leaves[1]);
    let node_23 = blake3_node(&leaves[2], &leaves[3]);
    let root = blake3_node(&node_01, &node_23);
    let root_digest = batch_root_digest(&root);
    assert_eq!(root_digest, keccak256(&[b"runnel-batch-v1", &root]));
    let mut batch_records = Vec::new();
    let batch_lengths = key.sign_batch_into(&part_key, &batch, &mut batch_records);
    let mut verifier = Verifier::default();
    let mut at = 0;
    let mut batch_signature = [0u8; SIGNATURE_LENGTH];
    let paths = [[leaves[1], node_23], [leaves[0], node_23], [leaves[3], node_01]];
    for (index, length) in batch_lengths.iter().enumerate() {
        let record = Record::parse(&batch_records[at..at + length]).expect("batch record parses");
        batch_signature = *record.signature;
        let leaf = batch_leaf(&SignedFields::from_record(&part_key, &record));
        assert_eq!(batch_root_from_path(leaf, index as u32, record.proof), root, "record {index} path");
        assert_eq!(record.bytes, record_by_spec(&batch[index], &batch_signature, index as u32, &paths[index]));
        let expected = if index == 0 { VerifyCost::Ecdsa } else { VerifyCost::CachedRoot };
        assert_eq!(verifier.verify(&part_key, &record), Ok(expected));
        at += length;
    }
    let mut v = Vector::new("batch");
    for (index, f) in batch.iter().enumerate() {
        v.hex(&format!("canonical_{index}"), &canonical(&part_key, f));
    }
    for (index, leaf) in leaves.iter().enumerate() {
        v.hex(&format!("leaf_{index}"), leaf);
    }
    v.hex("node_01", &node_01);
    v.hex("node_23", &node_23);
    v.hex("root", &root);
    v.hex("root_digest", &root_digest);
    v.hex("root_eip191_hash", &eip191_hash(&root_digest));
    v.hex("signature", &batch_signature);
    let third = batch_lengths[0] + batch_lengths[1];
    v.hex("record_2", &batch_records[third..]);
    vectors.push(v);

    let encodings = Encodings { part_key, record, subscribe, data_datagram, batch_records, batch_lengths };
    (vectors, encodings)
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

/// Seed inputs of every fuzz target, built from valid encodings.
fn fuzz_seeds(encodings: &Encodings) -> Vec<(&'static str, Vec<u8>)> {
    let link_key = link_key();
    let client_key = LinkKey([0x22; 32]);
    let address = anvil_key().address();
    let part_key = encodings.part_key;
    let mut seeds: Vec<(&'static str, Vec<u8>)> = Vec::new();

    // datagram: every kind, padding, and a GRO-coalesced buffer.
    let mut builder = DatagramBuilder::new(1472);
    let mut at = 0;
    for length in &encodings.batch_lengths {
        assert!(builder.try_push(&encodings.batch_records[at..at + length]));
        at += length;
    }
    builder.pad_to(1472);
    let batch_datagram = builder.finish(data_fields(&part_key, address, 43), &link_key).to_vec();
    builder.reset();
    let cut = encodings.record.len() / 2;
    let mut fragments = Vec::new();
    for (seq, (offset, slice)) in [(0, &encodings.record[..cut]), (cut, &encodings.record[cut..])].into_iter().enumerate() {
        builder.reset();
        let header = FragmentHeader {
            publisher: address,
            chain_id: 1,
            sequence: 1,
            record_length: encodings.record.len() as u32,
            offset: offset as u32,
            fragment_length: slice.len() as u16,
            reserved: 0,
        };
        encode_fragment(&header, slice, builder.body_mut());
        builder.set_count(1);
        let fields =
            HeaderFields { kind: Kind::Fragment, flags: FLAG_SINGLE_PUBLISHER, ..data_fields(&part_key, address, 44 + seq as u64) };
        fragments.push(builder.finish(fields, &link_key).to_vec());
    }
    builder.reset();
    encode_nak_range(&NakRange { publisher: address, chain_id: 1, first_sequence: 2, last_sequence: 4 }, builder.body_mut());
    builder.set_count(1);
    let nak = builder
        .finish(HeaderFields { kind: Kind::Nak, flags: 0, publisher: [0; 20], ..data_fields(&part_key, address, 46) }, &link_key)
        .to_vec();
    builder.reset();
    let unsubscribe = builder
        .finish(HeaderFields { kind: Kind::Unsubscribe, flags: 0, publisher: [0; 20], ..data_fields(&part_key, address, 47) }, &link_key)
        .to_vec();
    builder.reset();
    assert!(builder.try_push(&encodings.record));
    let repair = builder
        .finish(HeaderFields { flags: FLAG_SINGLE_PUBLISHER | FLAG_REPAIR, ..data_fields(&part_key, address, 48) }, &link_key)
        .to_vec();
    let coalesced: Vec<u8> = [&encodings.subscribe[..], &batch_datagram[..], &encodings.data_datagram[..]].concat();
    for datagram in
        [&encodings.subscribe, &encodings.data_datagram, &batch_datagram, &fragments[0], &nak, &unsubscribe, &repair, &coalesced]
    {
        for parsed in split_datagrams(datagram) {
            let parsed = parsed.expect("seed datagram parses");
            assert!(parsed.tag_matches(&link_key));
            if parsed.kind == Kind::Data {
                assert!(parsed.records().all(|r| r.is_ok()), "seed Data datagram has a bad record");
            }
        }
        seeds.push(("datagram", datagram.to_vec()));
        if datagram.len() == Datagram::parse(datagram).map_or(0, |d| d.total_length()) {
            // filter: re-tag, joined, one seed per role.
            seeds.push(("filter", [&[0b1010u8][..], datagram].concat()));
            seeds.push(("filter", [&[0b1011u8][..], datagram].concat()));
        }
    }
    assert!(Datagram::parse(&fragments[1]).expect("fragment").fragment().is_ok());
    assert_eq!(Datagram::parse(&nak).expect("nak").nak_ranges().expect("ranges").count(), 1);

    // record: single, each batch record, and all records back to back.
    seeds.push(("record", encodings.record.clone()));
    let mut at = 0;
    for length in &encodings.batch_lengths {
        seeds.push(("record", encodings.batch_records[at..at + length].to_vec()));
        at += length;
    }
    seeds.push(("record", [&encodings.record[..], &encodings.batch_records[..]].concat()));

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

    // relay: scripts in the format of dataplane/fuzz/fuzz_targets/relay.rs.
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
    let mut client_publish = builder_datagram(&encodings.record, client_key, address, &part_key);
    client_publish[4..8].copy_from_slice(&CLIENT_LINK_ID.to_le_bytes());
    client_publish = retag(client_publish, &client_key);
    let client_subscribe = retag(
        {
            let mut d = encodings.subscribe.clone();
            d[4..8].copy_from_slice(&CLIENT_LINK_ID.to_le_bytes());
            d
        },
        &client_key,
    );
    let scripts: Vec<Vec<u8>> = vec![
        // A neighbor subscribes, then sends a record and a batch; flush.
        [
            vec![VERIFY_ALL],
            receive(0, &encodings.subscribe),
            receive(0, &encodings.data_datagram),
            receive(0, &batch_datagram),
            vec![FLUSH],
        ]
        .concat(),
        // A client subscribes, a client publishes, the neighbor forwards the same record (duplicate).
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
        // A gap (the batch before the single record is missing), time passes: NAKs and loss.
        [
            vec![VERIFY_NONE_REWRITE_TAGS],
            receive(1, &client_subscribe),
            receive(0, &repair_gap(&batch_datagram, &link_key)),
            clock(10),
            vec![FLUSH],
            clock(100),
            clock(5000),
            vec![FLUSH],
        ]
        .concat(),
        // Fragments of one record, a NAK asking for repair, an unsubscribe, a GRO buffer.
        [
            vec![VERIFY_ALL],
            receive(0, &encodings.subscribe),
            receive(0, &fragments[0]),
            receive(0, &fragments[1]),
            receive(0, &nak),
            vec![FLUSH],
            receive(0, &unsubscribe),
            receive(0, &coalesced),
            clock(4000),
            vec![FLUSH],
        ]
        .concat(),
    ];
    for script in scripts {
        seeds.push(("relay", script));
    }

    // client_link: a full link file and one relying on the default datagram size.
    let link_file =
        format!("node = \"127.0.0.1:7000\"\nnode_shards = 2\nlink_id = {CLIENT_LINK_ID}\nkey = \"{}\"\n", hex::encode(client_key.0));
    let link = runnel_client::ClientLinkConfig::parse(&link_file).expect("seed link file parses");
    seeds.push(("client_link", link_file.into_bytes()));
    seeds.push(("client_link", link.to_toml().into_bytes()));

    // client: node traffic on link 7, in the format of dataplane/fuzz/fuzz_targets/client.rs.
    let chunk = |bytes: &[u8]| -> Vec<u8> { [&(bytes.len() as u16).to_le_bytes()[..], bytes].concat() };
    const CLIENT_VERIFY: u8 = 1;
    const CLIENT_REWRITE_TAGS: u8 = 2;
    seeds.push(("client", [vec![CLIENT_VERIFY], chunk(&encodings.data_datagram), chunk(&batch_datagram), chunk(&repair)].concat()));
    seeds.push((
        "client",
        [vec![CLIENT_VERIFY | CLIENT_REWRITE_TAGS], chunk(&fragments[0]), chunk(&fragments[1]), chunk(&coalesced)].concat(),
    ));
    seeds.push(("client", [vec![0], chunk(&repair_gap(&batch_datagram, &link_key)), chunk(&encodings.data_datagram)].concat()));
    seeds
}

/// A Data datagram holding one record, tagged with `key`.
fn builder_datagram(record: &[u8], key: LinkKey, publisher: [u8; 20], part_key: &StreamPartKey) -> Vec<u8> {
    let mut builder = DatagramBuilder::new(1472);
    assert!(builder.try_push(record));
    builder.finish(data_fields(part_key, publisher, 1), &key).to_vec()
}

/// Recomputes the link tag of a single datagram after its header was edited.
fn retag(mut datagram: Vec<u8>, key: &LinkKey) -> Vec<u8> {
    let tag = link_tag(key, &datagram[..TAGGED_HEADER_LENGTH]);
    datagram[TAGGED_HEADER_LENGTH..HEADER_LENGTH].copy_from_slice(&tag.to_le_bytes());
    datagram
}

/// The batch datagram with a later link sequence, so that it arrives as the first thing on
/// its chain after the single record was never seen: sequences 2..=4 behind a missing 1.
fn repair_gap(batch_datagram: &[u8], key: &LinkKey) -> Vec<u8> {
    let mut datagram = batch_datagram.to_vec();
    datagram[8..16].copy_from_slice(&100u64.to_le_bytes());
    retag(datagram, key)
}

// Goal: the fuzz seed corpora are valid encodings of every input kind (each parses, tags
// match, records verify); with RUNNEL_FUZZ_SEEDS=<dir> they are written to <dir>/<target>/.
#[test]
fn fuzz_seed_corpora() {
    let (_, encodings) = build_vectors();
    let seeds = fuzz_seeds(&encodings);
    for target in ["datagram", "record", "config", "relay", "client_link", "client", "filter"] {
        assert!(seeds.iter().any(|(t, _)| *t == target), "no seed for fuzz target {target}");
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
