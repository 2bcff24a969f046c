//! Fuzz target `client_link`: the client link file parser over arbitrary UTF-8.
//!
//! The link file is the one path a `runnel pub` / `runnel sub` user passes: every mistake
//! must be an error naming the field, never a panic. Oracle: a file that parses, written
//! back with `to_toml`, parses to an equal value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_client::ClientLinkConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = ClientLinkConfig::parse(text) {
        let again = ClientLinkConfig::parse(&link.to_toml()).expect("to_toml output parses");
        assert_eq!(again, link, "to_toml does not round-trip");
        for shard in 0..link.node_shards {
            let _ = link.shard_address(shard);
        }
    }
});
