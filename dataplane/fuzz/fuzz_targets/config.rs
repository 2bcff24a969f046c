//! Fuzz target `config`: the node configuration parser over arbitrary UTF-8.
//!
//! A config file is operator input: every mistake must be a `ConfigError` naming the field,
//! never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_node::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = NodeConfig::parse(text) {
        assert!(config.shards >= 1);
        assert!(config.links.iter().all(|link| link.peer_shards >= 1));
    }
});
