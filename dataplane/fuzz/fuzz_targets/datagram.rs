//! Fuzz target `datagram`: the datagram decoders over arbitrary bytes.
//!
//! Feeds the input to [`Datagram::parse`] and to [`split_datagrams`] (a GRO-coalesced receive
//! buffer), and for every datagram that parses walks all of its body decoders: `frames()`
//! (and each frame's messages), `nak_ranges()` and the link tag check. None may panic, and
//! each accepted piece must lie inside the bytes it came from: frames back to back from the
//! start of the body, at most `message_count` of them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_proto::linktag::LinkKey;
use runnel_proto::wire::{split_datagrams, Datagram, HEADER_LENGTH};

fn walk(datagram: &Datagram<'_>, key: &LinkKey) {
    assert!(datagram.total_length() >= HEADER_LENGTH);
    assert_eq!(datagram.body.len(), datagram.total_length() - HEADER_LENGTH);
    let _ = datagram.tag_matches(key);
    let _ = (datagram.link_id(), datagram.link_seq(), datagram.stream_part_key(), datagram.flags(), datagram.kind);
    let mut body_used = 0;
    let mut frames = 0usize;
    for frame in datagram.frames() {
        let Ok(frame) = frame else { break };
        assert_eq!(
            frame.bytes.as_ptr() as usize - datagram.body.as_ptr() as usize,
            body_used,
            "frames lie back to back from the start of the body"
        );
        body_used += frame.bytes.len();
        assert!(body_used <= datagram.body.len(), "frames overrun the body");
        frames += 1;
        let _ = (frame.previous(), frame.publisher(), frame.chain_id(), frame.sequence(), frame.signature_kind(), frame.trailer());
        let messages = frame.messages().inspect(|message| assert!(message.payload.len() < frame.bytes.len())).count();
        assert_eq!(messages, frame.message_count() as usize);
    }
    assert!(frames <= datagram.message_count() as usize, "more frames than message_count");
    if let Ok(ranges) = datagram.nak_ranges() {
        for range in ranges {
            assert!(range.first_sequence.to_native() <= range.last_sequence.to_native());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let key = LinkKey([0x5a; 32]);
    if let Ok(datagram) = Datagram::parse(data) {
        assert!(datagram.total_length() <= data.len());
        walk(&datagram, &key);
    }
    let mut walked = 0;
    for datagram in split_datagrams(data) {
        let Ok(datagram) = datagram else { break };
        walked += datagram.total_length();
        assert!(walked <= data.len(), "split_datagrams walked past the buffer");
        walk(&datagram, &key);
    }
});
