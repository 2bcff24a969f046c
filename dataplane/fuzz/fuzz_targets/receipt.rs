//! Fuzz target `receipt`: the traffic report decoder (`runnel_proto::receipt`) over
//! arbitrary bytes — what any node can send the settlement operator.
//!
//! Oracles: decoding never panics; whatever decodes is at most `REPORT_BYTES_MAX` bytes,
//! re-encodes to exactly the input (the encoding is canonical: one byte string per report),
//! and its signature check returns (an error, or the report's own node) without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_proto::crypto::Verifier;
use runnel_proto::receipt::{SignedReport, REPORT_BYTES_MAX};
use std::cell::RefCell;

thread_local! {
    static VERIFIER: RefCell<Verifier> = RefCell::new(Verifier::new(1024, 1));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = SignedReport::decode(data) {
        assert!(data.len() <= REPORT_BYTES_MAX);
        assert_eq!(report.encode(), data, "report encoding is canonical");
        let _ = VERIFIER.with(|verifier| report.verify(&mut verifier.borrow_mut()));
    }
});
