//! Fuzz target `frame`: frames, their messages and their signature check over arbitrary bytes.
//!
//! Parses frames back to back with [`Frame::parse`] (as a repair ring's bytes are walked),
//! re-walks every parsed frame's messages with [`Frame::messages`] (which trusts the parse and
//! does no checks of its own), and verifies each frame with a [`Verifier`] whose caches are
//! tiny (so eviction paths run too), twice: the first check of a publisher recovers its public
//! key, the second takes the cached-key (or cached-root) path. Neither the parser, the message
//! walk nor secp256k1 on malformed r/s/v may panic.
//!
//! Oracles: a parsed frame is its declared length and lies in the input; its messages are
//! `message_count` consecutive, non-overlapping pieces of the frame, in order, with implied
//! sequences and previous references, and end exactly where the trailer begins; a frame
//! parses again from its own bytes; and the cached check agrees with the first.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_proto::crypto::Verifier;
use runnel_proto::frame::{
    Frame, SignatureKind, FRAME_FLAG_CONTINUATION, FRAME_FLAG_CONTINUES, FRAME_HEADER_LENGTH, MESSAGE_ENTRY_LENGTH, PROOF_DEPTH_MAX,
    PROOF_ENTRY_LENGTH,
};
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::SIGNATURE_LENGTH;
use std::ops::Range;

/// Where `piece` lies in `whole`; panics if it is not inside it.
fn range_in(whole: &[u8], piece: &[u8]) -> Range<usize> {
    let start = (piece.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    assert!(start <= whole.len() && piece.len() <= whole.len() - start, "a message slice lies outside its frame");
    start..start + piece.len()
}

/// Re-walks the messages of a parsed frame and checks they tile it.
fn check_messages(frame: &Frame<'_>) {
    let bytes = frame.bytes;
    let mut end = FRAME_HEADER_LENGTH;
    let mut expected_previous = frame.previous();
    let mut count = 0usize;
    for (index, message) in frame.messages().enumerate() {
        // Parsing checked that first_message_sequence + message_count does not overflow.
        let expected_sequence = frame.first_message_sequence() + index as u64;
        let group_key_id = range_in(bytes, message.group_key_id);
        let payload = range_in(bytes, message.payload);
        assert_eq!(group_key_id.start, end + MESSAGE_ENTRY_LENGTH, "a group key id follows its message entry");
        assert_eq!(payload.start, group_key_id.end, "a payload follows its group key id");
        end = payload.end;
        match (frame.signature_kind(), message.signature) {
            (SignatureKind::Single, Some(signature)) => {
                let signature = range_in(bytes, signature);
                assert_eq!(signature.start, end, "a signature follows its payload");
                end = signature.end;
            }
            (SignatureKind::Batch, None) => {}
            (kind, signature) => panic!("{kind:?} frame with signature {signature:?}"),
        }
        assert_eq!((message.sequence, message.previous), (expected_sequence, expected_previous), "implied fields");
        expected_previous = Some((message.timestamp_ms, message.sequence));
        let first = index == 0;
        let last = index + 1 == frame.message_count() as usize;
        assert_eq!(message.continuation, first && frame.flags() & FRAME_FLAG_CONTINUATION != 0);
        assert_eq!(message.continues, last && frame.flags() & FRAME_FLAG_CONTINUES != 0);
        count += 1;
    }
    assert_eq!(count, frame.message_count() as usize, "messages() yields message_count messages");
    let trailer = match frame.trailer() {
        Some((_, proof)) => {
            assert!(proof.len() % PROOF_ENTRY_LENGTH == 0 && proof.len() <= PROOF_ENTRY_LENGTH * PROOF_DEPTH_MAX);
            assert!(frame.leaf_index() < 1 << (proof.len() / PROOF_ENTRY_LENGTH));
            SIGNATURE_LENGTH + proof.len()
        }
        None => 0,
    };
    assert_eq!(end + trailer, bytes.len(), "the messages and the trailer make up the frame");
    assert_eq!(frame.signed_bytes().len(), end);
}

fuzz_target!(|data: &[u8]| {
    // The stream part the seed corpus (tests/protocol_vectors.rs) signs for, so valid seeds
    // verify and mutations reach every branch of the verifier.
    let key = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sensors/temperature#0").expect("valid stream part").key();
    let mut verifier = Verifier::new(1, 1);
    let mut rest = data;
    while let Ok(frame) = Frame::parse(rest) {
        assert!(frame.bytes.len() <= rest.len());
        assert_eq!(frame.bytes.len(), frame.header.frame_length.to_native() as usize);
        assert_eq!(
            Frame::parse(frame.bytes).map(|again| again.bytes.len()).ok(),
            Some(frame.bytes.len()),
            "a frame parses from its own bytes"
        );
        check_messages(&frame);
        let first = verifier.verify(&key, &frame);
        let second = verifier.verify(&key, &frame);
        assert_eq!(first.is_ok(), second.is_ok(), "a cached check disagrees with the first check");
        rest = &rest[frame.bytes.len()..];
    }
});
