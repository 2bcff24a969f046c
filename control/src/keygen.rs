//! `runnel keygen`: a publisher key (Ethereum account) or a link key.

use runnel_proto::crypto::{address_hex, PublisherKey};

pub fn run(link: bool) {
    if link {
        println!("{}", hex::encode(link_key_bytes()));
    } else {
        let key = PublisherKey::generate();
        println!("{{\"address\":\"{}\",\"private_key\":\"{}\"}}", address_hex(&key.address()), key.secret_hex());
    }
}

/// A fresh 32-byte link key from the OS-seeded RNG.
pub fn link_key_bytes() -> [u8; 32] {
    rand::random()
}
