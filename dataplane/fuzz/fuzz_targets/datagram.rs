//! Fuzz target `datagram`: the datagram decoders over arbitrary bytes.
//!
//! Feeds the input to [`Datagram::parse`] and to [`split_datagrams`] (a GRO-coalesced receive
//! buffer), and for every datagram that parses walks all of its body decoders: `records()`,
//! `fragment()`, `nak_ranges()` and the link tag check. None may panic, and each accepted
//! piece must lie inside the bytes it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_proto::linktag::LinkKey;
use runnel_proto::wire::{split_datagrams, Datagram, HEADER_LENGTH};

fn walk(datagram: &Datagram<'_>, key: &LinkKey) {
    assert!(datagram.total_length() >= HEADER_LENGTH);
    assert_eq!(datagram.body.len(), datagram.total_length() - HEADER_LENGTH);
    let _ = datagram.tag_matches(key);
    let _ = (datagram.link_id(), datagram.link_seq(), datagram.stream_part_key(), datagram.flags());
    let mut body_used = 0;
    for record in datagram.records() {
        let Ok(record) = record else { break };
        body_used += record.bytes.len();
        assert!(body_used <= datagram.body.len(), "records overrun the body");
        let _ = (record.previous(), record.publisher(), record.chain_id(), record.sequence(), record.signature_kind());
    }
    if let Ok((header, slice)) = datagram.fragment() {
        let end = header.offset.to_native() as usize + slice.len();
        assert!(end <= header.record_length.to_native() as usize);
    }
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
