//! Fuzz target `record`: message records and their signature check over arbitrary bytes.
//!
//! Parses records back to back with [`Record::parse`] and verifies each with a
//! [`Verifier`] whose caches are tiny (so eviction paths run too), twice: the first check
//! of a publisher recovers its public key, the second takes the cached-key (or cached-root)
//! path. Neither the parser nor secp256k1 on malformed r/s/v may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_proto::crypto::Verifier;
use runnel_proto::stream::StreamPart;
use runnel_proto::wire::Record;

fuzz_target!(|data: &[u8]| {
    // The stream part the seed corpus (tests/protocol_vectors.rs) signs for, so valid seeds
    // verify and mutations reach every branch of the verifier.
    let key = StreamPart::parse("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/sensors/temperature#0").expect("valid stream part").key();
    let mut verifier = Verifier::new(1, 1);
    let mut rest = data;
    while let Ok(record) = Record::parse(rest) {
        assert!(record.bytes.len() <= rest.len());
        let first = verifier.verify(&key, &record);
        let second = verifier.verify(&key, &record);
        assert_eq!(first.is_ok(), second.is_ok(), "a cached check disagrees with the first check");
        rest = &rest[record.bytes.len()..];
    }
});
