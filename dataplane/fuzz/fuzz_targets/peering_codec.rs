//! Fuzz target `peering_codec`: the neighbor protocol's decoders (`runnel_peering::wire`)
//! over arbitrary bytes — what any libp2p peer can write on `/runnel/neighbor/1.0.0`.
//!
//! The crate is built without its `swarm` feature, so this build compiles the pure codec
//! only, not libp2p.
//!
//! Oracles: decoding never panics; whatever decodes as a request or a response re-encodes
//! to exactly the input bytes (the encoding is canonical: one byte string per message), and
//! nothing longer than `MESSAGE_BYTES_MAX` decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_peering::wire::{decode_request, decode_response, encode_request, encode_response, MESSAGE_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        assert!(data.len() <= MESSAGE_BYTES_MAX);
        assert_eq!(encode_request(&request), data, "request encoding is canonical");
    }
    if let Ok(response) = decode_response(data) {
        assert!(data.len() <= MESSAGE_BYTES_MAX);
        assert_eq!(encode_response(&response), data, "response encoding is canonical");
    }
});
