//! Traffic reports: what a node signs, once per settlement epoch, about the traffic on each
//! of its links — the receipts settlement pays from (docs/settlement.md).
//!
//! A report says, for every neighbor, how many bytes and messages the node sent to it and
//! received from it during the epoch. The settlement operator credits node S with the bytes
//! neighbor R says it *received from S*, if S's own report agrees it sent at least that
//! much; the rules live in `runnel_chain::accounting`. This module is only the signed
//! encoding, with no I/O, so that a fuzz target reaches it without pulling a chain client.
//!
//! **Encoding** (big-endian integers, as `abi.encodePacked` would lay them out, so that a
//! contract could one day check a report on-chain):
//!
//! ```text
//! version u8 = 1 ‖ epoch u64 ‖ node [20] ‖ link count u16 ‖
//!     count × (neighbor [20] ‖ bytes_sent u64 ‖ messages_sent u64 ‖ bytes_received u64 ‖ messages_received u64) ‖
//! signature [65] (r ‖ s ‖ v)
//! ```
//!
//! The signature is the node's EIP-191 signature (`personal_sign`, see [`crate::crypto`]) of
//! `keccak256("runnel-traffic-report-v1" ‖ everything before the signature)`.
//!
//! **Canonical**: a report has exactly one encoding. Decoding rejects a version other than
//! 1, epoch 0, the zero address as node or neighbor, a link to the node itself, neighbors
//! not in strictly ascending order (so no duplicates), more than [`LINKS_MAX`] links, any
//! trailing or missing byte, `v` other than 27 or 28, and a high-`s` signature (EIP-2), so
//! that nobody can re-encode someone's report into different bytes with the same meaning.
//! Decoding does not check the signature (that is ECDSA work, done once the cheap checks
//! passed): [`SignedReport::verify`] does.
//!
//! **Limits**: at most [`LINKS_MAX`] links per report, so at most [`REPORT_BYTES_MAX`]
//! bytes; the length is checked before anything else is read.

use crate::crypto::{keccak256, PublisherKey, SignatureError, Verifier};
use crate::wire::SIGNATURE_LENGTH;
use std::fmt;

/// The only encoding version.
pub const REPORT_VERSION: u8 = 1;
/// Domain tag hashed in front of the report body before it is signed.
pub const REPORT_DOMAIN: &[u8] = b"runnel-traffic-report-v1";
/// Links per report: far above a node's neighbor count, small enough to bound a report.
pub const LINKS_MAX: usize = 1024;
/// Bytes of the fixed header: version, epoch, node, link count.
pub const REPORT_HEADER_LENGTH: usize = 1 + 8 + 20 + 2;
/// Bytes of one link entry: neighbor and four counters.
pub const LINK_ENTRY_LENGTH: usize = 20 + 4 * 8;
/// The longest valid encoding.
pub const REPORT_BYTES_MAX: usize = REPORT_HEADER_LENGTH + LINKS_MAX * LINK_ENTRY_LENGTH + SIGNATURE_LENGTH;

/// half the secp256k1 group order: a canonical (EIP-2) signature's `s` is at most this.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4,
    0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// One link's traffic in one epoch, as the reporting node counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkTraffic {
    pub neighbor: [u8; 20],
    pub bytes_sent: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub messages_received: u64,
}

/// A node's report of one epoch, before it is signed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficReport {
    pub epoch: u64,
    pub node: [u8; 20],
    /// Any order: [`TrafficReport::sign`] sorts them by neighbor.
    pub links: Vec<LinkTraffic>,
}

/// A report with its node's signature, valid in form (made by [`TrafficReport::sign`] or
/// [`SignedReport::decode`]); whether the signature is the node's is [`SignedReport::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReport {
    report: TrafficReport,
    signature: [u8; SIGNATURE_LENGTH],
}

/// Why bytes are not a report, or a report cannot be signed or is not its node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportError {
    TooLong {
        length: usize,
    },
    TooShort {
        length: usize,
        needed: usize,
    },
    Version(u8),
    ZeroEpoch,
    TooManyLinks {
        count: usize,
    },
    ZeroAddress,
    SelfLink,
    /// Neighbors must be strictly ascending; `index` is the first one that is not.
    LinksNotAscending {
        index: usize,
    },
    SignatureV(u8),
    SignatureHighS,
    /// The key signing is not the report's node.
    NotOwnReport,
    /// The signature is malformed or not the node's.
    BadSignature(SignatureError),
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::TooLong { length } => write!(f, "traffic report of {length} bytes: at most {REPORT_BYTES_MAX} are allowed"),
            ReportError::TooShort { length, needed } => write!(f, "traffic report of {length} bytes is cut short: {needed} are needed"),
            ReportError::Version(version) => write!(f, "traffic report version {version}: only {REPORT_VERSION} is known"),
            ReportError::ZeroEpoch => f.write_str("traffic report for epoch 0: epochs start at 1"),
            ReportError::TooManyLinks { count } => write!(f, "traffic report with {count} links: at most {LINKS_MAX} are allowed"),
            ReportError::ZeroAddress => f.write_str("traffic report names the zero address as node or neighbor"),
            ReportError::SelfLink => f.write_str("traffic report lists a link from the node to itself"),
            ReportError::LinksNotAscending { index } => {
                write!(f, "traffic report link {index} is not after the one before it: neighbors must be unique and ascending")
            }
            ReportError::SignatureV(v) => write!(f, "traffic report signature has v = {v}: it must be 27 or 28"),
            ReportError::SignatureHighS => f.write_str("traffic report signature has a high s (not EIP-2 canonical)"),
            ReportError::NotOwnReport => {
                f.write_str("a node signs only its own traffic report: the key's address is not the report's node")
            }
            ReportError::BadSignature(SignatureError::Malformed) => f.write_str("traffic report signature is malformed"),
            ReportError::BadSignature(SignatureError::WrongSigner) => f.write_str("traffic report is not signed by its node"),
        }
    }
}

impl std::error::Error for ReportError {}

impl TrafficReport {
    /// Signs the report with `key`, the node's own (links sorted first).
    pub fn sign(mut self, key: &PublisherKey) -> Result<SignedReport, ReportError> {
        if key.address() != self.node {
            return Err(ReportError::NotOwnReport);
        }
        self.links.sort_by_key(|link| link.neighbor);
        self.check()?;
        let signature = key.sign_digest(&self.digest());
        Ok(SignedReport { report: self, signature })
    }

    /// The form rules of the module doc, over the fields (links in their present order).
    pub fn check(&self) -> Result<(), ReportError> {
        if self.epoch == 0 {
            return Err(ReportError::ZeroEpoch);
        }
        if self.links.len() > LINKS_MAX {
            return Err(ReportError::TooManyLinks { count: self.links.len() });
        }
        if self.node == [0; 20] {
            return Err(ReportError::ZeroAddress);
        }
        for (index, link) in self.links.iter().enumerate() {
            if link.neighbor == [0; 20] {
                return Err(ReportError::ZeroAddress);
            }
            if link.neighbor == self.node {
                return Err(ReportError::SelfLink);
            }
            if index > 0 && self.links[index - 1].neighbor >= link.neighbor {
                return Err(ReportError::LinksNotAscending { index });
            }
        }
        Ok(())
    }

    /// The link to `neighbor`, if the report lists it.
    pub fn link(&self, neighbor: &[u8; 20]) -> Option<&LinkTraffic> {
        self.links.binary_search_by(|link| link.neighbor.cmp(neighbor)).ok().map(|index| &self.links[index])
    }

    /// The bytes that are signed (everything before the signature).
    fn write_body(&self, out: &mut Vec<u8>) {
        out.push(REPORT_VERSION);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.node);
        out.extend_from_slice(&(self.links.len() as u16).to_be_bytes());
        for link in &self.links {
            out.extend_from_slice(&link.neighbor);
            for counter in [link.bytes_sent, link.messages_sent, link.bytes_received, link.messages_received] {
                out.extend_from_slice(&counter.to_be_bytes());
            }
        }
    }

    /// `keccak256(REPORT_DOMAIN ‖ body)`: what the node signs (EIP-191).
    pub fn digest(&self) -> [u8; 32] {
        let mut body = Vec::with_capacity(REPORT_HEADER_LENGTH + self.links.len() * LINK_ENTRY_LENGTH);
        self.write_body(&mut body);
        keccak256(&[REPORT_DOMAIN, &body])
    }
}

impl SignedReport {
    pub fn report(&self) -> &TrafficReport {
        &self.report
    }

    pub fn signature(&self) -> &[u8; SIGNATURE_LENGTH] {
        &self.signature
    }

    /// The canonical encoding (the module doc's layout).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPORT_HEADER_LENGTH + self.report.links.len() * LINK_ENTRY_LENGTH + SIGNATURE_LENGTH);
        self.report.write_body(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes untrusted bytes; every way they can be wrong is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<SignedReport, ReportError> {
        if bytes.len() > REPORT_BYTES_MAX {
            return Err(ReportError::TooLong { length: bytes.len() });
        }
        let header = bytes
            .get(..REPORT_HEADER_LENGTH)
            .ok_or(ReportError::TooShort { length: bytes.len(), needed: REPORT_HEADER_LENGTH + SIGNATURE_LENGTH })?;
        let mut reader = Reader(header);
        let version = reader.u8();
        if version != REPORT_VERSION {
            return Err(ReportError::Version(version));
        }
        let epoch = reader.u64();
        let node = reader.address();
        let count = reader.u16() as usize;
        if count > LINKS_MAX {
            return Err(ReportError::TooManyLinks { count });
        }
        let needed = REPORT_HEADER_LENGTH + count * LINK_ENTRY_LENGTH + SIGNATURE_LENGTH;
        if bytes.len() != needed {
            return Err(if bytes.len() < needed {
                ReportError::TooShort { length: bytes.len(), needed }
            } else {
                ReportError::TooLong { length: bytes.len() }
            });
        }
        let mut reader = Reader(&bytes[REPORT_HEADER_LENGTH..]);
        let links = (0..count)
            .map(|_| LinkTraffic {
                neighbor: reader.address(),
                bytes_sent: reader.u64(),
                messages_sent: reader.u64(),
                bytes_received: reader.u64(),
                messages_received: reader.u64(),
            })
            .collect();
        let signature: [u8; SIGNATURE_LENGTH] = reader.array();
        let report = TrafficReport { epoch, node, links };
        report.check()?;
        if !matches!(signature[64], 27 | 28) {
            return Err(ReportError::SignatureV(signature[64]));
        }
        if signature[32..64] > HALF_ORDER[..] {
            return Err(ReportError::SignatureHighS);
        }
        Ok(SignedReport { report, signature })
    }

    /// Checks that the report's node made the signature (`verifier` caches recovered keys).
    pub fn verify(&self, verifier: &mut Verifier) -> Result<(), ReportError> {
        verifier.check_signed_digest(&self.report.node, &self.report.digest(), &self.signature).map_err(ReportError::BadSignature)
    }
}

/// Reads fixed-width fields from a slice whose length the caller has checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("the caller checked the length")
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }

    fn address(&mut self) -> [u8; 20] {
        self.array()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anvil/Hardhat account 0, a published test key.
    const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    fn report(key: &PublisherKey) -> TrafficReport {
        TrafficReport {
            epoch: 7,
            node: key.address(),
            links: vec![
                LinkTraffic { neighbor: [0x22; 20], bytes_sent: 1_000, messages_sent: 10, bytes_received: 2_000, messages_received: 20 },
                LinkTraffic { neighbor: [0x11; 20], bytes_sent: u64::MAX, messages_sent: 1, bytes_received: 0, messages_received: 0 },
            ],
        }
    }

    // Goal: a signed report survives encode/decode unchanged, verifies, and its layout is
    // the one the module doc states (built here by hand).
    #[test]
    fn round_trip_and_layout() {
        let key = PublisherKey::from_hex(ANVIL_KEY_0).unwrap();
        let signed = report(&key).sign(&key).unwrap();
        assert_eq!(signed.report().links[0].neighbor, [0x11; 20], "sign sorts the links");
        let bytes = signed.encode();
        assert_eq!(bytes.len(), REPORT_HEADER_LENGTH + 2 * LINK_ENTRY_LENGTH + SIGNATURE_LENGTH);
        let mut by_hand = vec![1u8];
        by_hand.extend_from_slice(&7u64.to_be_bytes());
        by_hand.extend_from_slice(&key.address());
        by_hand.extend_from_slice(&[0, 2]);
        by_hand.extend_from_slice(&[0x11; 20]);
        for counter in [u64::MAX, 1, 0, 0] {
            by_hand.extend_from_slice(&counter.to_be_bytes());
        }
        by_hand.extend_from_slice(&[0x22; 20]);
        for counter in [1_000u64, 10, 2_000, 20] {
            by_hand.extend_from_slice(&counter.to_be_bytes());
        }
        assert_eq!(&bytes[..bytes.len() - SIGNATURE_LENGTH], &by_hand[..]);
        assert_eq!(signed.report().digest(), keccak256(&[REPORT_DOMAIN, &by_hand]));
        let decoded = SignedReport::decode(&bytes).unwrap();
        assert_eq!(decoded, signed);
        assert_eq!(decoded.encode(), bytes);
        decoded.verify(&mut Verifier::default()).unwrap();
        assert_eq!(decoded.report().link(&[0x22; 20]).map(|l| l.bytes_received), Some(2_000));
        assert_eq!(decoded.report().link(&[0x33; 20]), None);
    }

    // Goal: every form rule is an error on decode, with its own variant, and no prefix or
    // extension of a valid report decodes.
    #[test]
    fn malformed_reports_are_errors() {
        let key = PublisherKey::from_hex(ANVIL_KEY_0).unwrap();
        let bytes = report(&key).sign(&key).unwrap().encode();
        for length in 0..bytes.len() {
            assert!(SignedReport::decode(&bytes[..length]).is_err(), "a {length}-byte prefix decoded");
        }
        assert!(matches!(SignedReport::decode(&[bytes.clone(), vec![0]].concat()), Err(ReportError::TooLong { .. })));
        assert!(matches!(SignedReport::decode(&vec![1; REPORT_BYTES_MAX + 1]), Err(ReportError::TooLong { .. })));
        let patched = |offset: usize, value: &[u8]| {
            let mut copy = bytes.clone();
            copy[offset..offset + value.len()].copy_from_slice(value);
            SignedReport::decode(&copy)
        };
        assert_eq!(patched(0, &[2]), Err(ReportError::Version(2)));
        assert_eq!(patched(1, &0u64.to_be_bytes()), Err(ReportError::ZeroEpoch));
        assert_eq!(patched(9, &[0; 20]), Err(ReportError::ZeroAddress));
        assert_eq!(patched(29, &((LINKS_MAX + 1) as u16).to_be_bytes()), Err(ReportError::TooManyLinks { count: LINKS_MAX + 1 }));
        assert!(matches!(patched(29, &[0, 3]), Err(ReportError::TooShort { .. })));
        let second = REPORT_HEADER_LENGTH + LINK_ENTRY_LENGTH;
        assert_eq!(patched(second, &[0x11; 20]), Err(ReportError::LinksNotAscending { index: 1 }));
        assert_eq!(patched(second, &[0x10; 20]), Err(ReportError::LinksNotAscending { index: 1 }));
        assert_eq!(patched(second, &key.address()), Err(ReportError::SelfLink));
        let v = bytes.len() - 1;
        assert_eq!(patched(v, &[1]), Err(ReportError::SignatureV(1)));
        assert_eq!(patched(v - 32, &[0xff; 32]), Err(ReportError::SignatureHighS));
    }

    // Goal: a report whose bytes or signature were changed, or signed by another key, is
    // not its node's; a missing (all-zero) signature is malformed.
    #[test]
    fn forged_reports_do_not_verify() {
        let key = PublisherKey::from_hex(ANVIL_KEY_0).unwrap();
        let mut verifier = Verifier::default();
        let bytes = report(&key).sign(&key).unwrap().encode();
        let mut inflated = bytes.clone();
        inflated[REPORT_HEADER_LENGTH + LINK_ENTRY_LENGTH + 20 + 16] ^= 0x01; // bytes_received of the second link
        let inflated = SignedReport::decode(&inflated).unwrap();
        assert_eq!(inflated.verify(&mut verifier), Err(ReportError::BadSignature(SignatureError::WrongSigner)));
        let mut unsigned = bytes.clone();
        let signature_at = bytes.len() - SIGNATURE_LENGTH;
        unsigned[signature_at..].copy_from_slice(&[[0u8; 64].as_slice(), &[27]].concat());
        let unsigned = SignedReport::decode(&unsigned).unwrap();
        assert!(matches!(unsigned.verify(&mut verifier), Err(ReportError::BadSignature(_))));
        let other = PublisherKey::generate();
        assert_eq!(report(&key).sign(&other), Err(ReportError::NotOwnReport));
        let mut claimed = report(&other).sign(&other).unwrap().encode();
        claimed[9..29].copy_from_slice(&key.address());
        assert_eq!(
            SignedReport::decode(&claimed).unwrap().verify(&mut verifier),
            Err(ReportError::BadSignature(SignatureError::WrongSigner))
        );
    }

    // Goal: the largest report encodes to REPORT_BYTES_MAX and decodes; an empty one works.
    #[test]
    fn bounds() {
        let key = PublisherKey::generate();
        let links = (1..=LINKS_MAX as u32)
            .map(|i| {
                let mut neighbor = [0u8; 20];
                neighbor[16..].copy_from_slice(&i.to_be_bytes());
                LinkTraffic { neighbor, ..LinkTraffic::default() }
            })
            .collect();
        let largest = TrafficReport { epoch: u64::MAX, node: key.address(), links }.sign(&key).unwrap();
        assert_eq!(largest.encode().len(), REPORT_BYTES_MAX);
        assert_eq!(SignedReport::decode(&largest.encode()).unwrap(), largest);
        let empty = TrafficReport { epoch: 1, node: key.address(), links: vec![] }.sign(&key).unwrap();
        assert_eq!(SignedReport::decode(&empty.encode()).unwrap(), empty);
        let mut too_many = largest.report().clone();
        too_many.links.push(LinkTraffic { neighbor: [0xff; 20], ..LinkTraffic::default() });
        assert_eq!(too_many.sign(&key), Err(ReportError::TooManyLinks { count: LINKS_MAX + 1 }));
    }
}
