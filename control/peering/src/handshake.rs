//! The cryptography and bookkeeping of one neighbor handshake: ephemeral X25519 keys, the
//! link key derivation, endpoint checks and link id allocation. No I/O.
//!
//! **Link key.** Each side contributes a fresh X25519 key pair per handshake (the initiator
//! in its Propose, the responder in its Accept); the link key is
//!
//! ```text
//! blake3::derive_key(LINK_KEY_CONTEXT,
//!     X25519(shared) ‖ len ‖ initiator PeerId ‖ len ‖ responder PeerId ‖ stream part key ‖
//!     initiator link id (u32 BE) ‖ responder link id (u32 BE) ‖
//!     initiator ephemeral public ‖ responder ephemeral public)
//! ```
//!
//! The key itself never travels, not even inside the transport's encryption; the public
//! halves travel inside the Noise (TCP) or TLS (QUIC) session that authenticated both
//! PeerIds, so nobody but the two peers can substitute them. Binding both PeerIds, the part
//! and both link ids means one handshake's key is good for exactly one link. Ephemeral
//! secrets are dropped (and zeroed, x25519-dalek's `zeroize`) right after use, so a later
//! theft of a node's identity key does not reveal past link keys.
//!
//! x25519-dalek is not a new dependency: libp2p-noise already builds it.

use crate::wire::Endpoint;
use libp2p::PeerId;
use runnel_keystore::Secret;
use std::collections::HashSet;
use std::ops::RangeInclusive;
use x25519_dalek::{PublicKey, StaticSecret};

/// blake3 `derive_key` context of link keys; changing it changes every key.
pub const LINK_KEY_CONTEXT: &str = "runnel-peering 2026-12 neighbor link key v1";
/// blake3 `derive_key` context of client link keys.
pub const CLIENT_LINK_KEY_CONTEXT: &str = "runnel-peering 2026-12 client link key v1";
/// Most shards a dataplane endpoint may claim (a node runs one per core).
pub const SHARDS_MAX: u16 = 1024;

/// One side's ephemeral X25519 key pair for one handshake.
pub struct Ephemeral {
    secret: StaticSecret,
    public: [u8; 32],
}

impl Ephemeral {
    pub fn generate() -> Self {
        let mut bytes: [u8; 32] = rand::random();
        let secret = StaticSecret::from(bytes);
        wipe(&mut bytes);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The shared secret with `their_public`, or `None` when their key is a low-order point
    /// (the result would not depend on our secret: a peer could force a known key).
    fn shared(self, their_public: &[u8; 32]) -> Option<Secret> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        shared.was_contributory().then(|| Secret::from_bytes(shared.to_bytes()))
    }
}

impl std::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ephemeral(public {})", hex::encode(&self.public[..8]))
    }
}

fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// Everything both sides put into the link key besides the shared secret.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    pub initiator: &'a PeerId,
    pub responder: &'a PeerId,
    pub part: &'a [u8; 32],
    pub initiator_link_id: u32,
    pub responder_link_id: u32,
    pub initiator_public: &'a [u8; 32],
    pub responder_public: &'a [u8; 32],
}

/// The link key of a handshake: `ours` is this side's ephemeral key, `theirs` the public key
/// the other side sent. `None` when their public key is a low-order point.
pub fn derive_link_key(ours: Ephemeral, theirs: &[u8; 32], transcript: &Transcript<'_>) -> Option<Secret> {
    derive(LINK_KEY_CONTEXT, ours, theirs, transcript)
}

/// The key of a client link (`ClientLink` / `ClientGrant`): derived as a neighbor link's, in
/// its own context, with the client as initiator and the client's link id 0 (a client link
/// has one id, the node's), so no client key can equal a neighbor key.
pub fn derive_client_link_key(ours: Ephemeral, theirs: &[u8; 32], transcript: &Transcript<'_>) -> Option<Secret> {
    derive(CLIENT_LINK_KEY_CONTEXT, ours, theirs, transcript)
}

fn derive(context: &str, ours: Ephemeral, theirs: &[u8; 32], transcript: &Transcript<'_>) -> Option<Secret> {
    let shared = ours.shared(theirs)?;
    let mut hasher = blake3::Hasher::new_derive_key(context);
    hasher.update(shared.expose());
    for peer in [transcript.initiator, transcript.responder] {
        let bytes = peer.to_bytes();
        hasher.update(&(bytes.len() as u16).to_be_bytes());
        hasher.update(&bytes);
    }
    hasher.update(transcript.part);
    hasher.update(&transcript.initiator_link_id.to_be_bytes());
    hasher.update(&transcript.responder_link_id.to_be_bytes());
    hasher.update(transcript.initiator_public);
    hasher.update(transcript.responder_public);
    Some(Secret::from_bytes(*hasher.finalize().as_bytes()))
}

/// Why a peer's dataplane endpoint is unusable, or `Ok`.
pub fn validate_endpoint(endpoint: &Endpoint) -> Result<(), &'static str> {
    if endpoint.address.port() == 0 {
        return Err("port 0");
    }
    if endpoint.address.ip().is_unspecified() || endpoint.address.ip().is_multicast() {
        return Err("unspecified or multicast address");
    }
    if endpoint.shards == 0 || endpoint.shards > SHARDS_MAX {
        return Err("shard count outside 1..=1024");
    }
    if u32::from(endpoint.address.port()) + u32::from(endpoint.shards) - 1 > u32::from(u16::MAX) {
        return Err("shard ports run past 65535");
    }
    Ok(())
}

/// This node's link ids for neighbor links: unique among the live ones, taken in order from
/// a range (by default the upper half of u32, so ids from config files and client links,
/// which use small numbers, never meet them), starting at a random point so a restarted
/// control process is unlikely to hand out an id its dataplane still holds, and not reused
/// until the range wraps, so a late datagram of a dropped link never lands on a new one.
///
/// Bounded: at most `in_use_max` ids live at once (the most neighbors and proposals the
/// overlay can hold), so `allocate` scans at most that many ids.
#[derive(Debug)]
pub struct LinkIds {
    range: RangeInclusive<u32>,
    next: u32,
    in_use: HashSet<u32>,
    in_use_max: usize,
}

impl LinkIds {
    /// Panics when the range is empty or smaller than `in_use_max` (a configuration bug
    /// that `PeeringConfig::validate` reports first).
    pub fn new(range: RangeInclusive<u32>, in_use_max: usize, start: u32) -> Self {
        let size = u64::from(*range.end()) - u64::from(*range.start()) + 1;
        assert!(!range.is_empty() && size >= in_use_max as u64, "link id range {range:?} smaller than {in_use_max} ids");
        let next = range.start() + (u64::from(start) % size) as u32;
        Self { range, next, in_use: HashSet::new(), in_use_max }
    }

    /// A fresh id, or `None` when `in_use_max` ids are live.
    pub fn allocate(&mut self) -> Option<u32> {
        if self.in_use.len() >= self.in_use_max {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == *self.range.end() { *self.range.start() } else { id + 1 };
            if self.in_use.insert(id) {
                return Some(id);
            }
        }
    }

    pub fn release(&mut self, id: u32) {
        let was_live = self.in_use.remove(&id);
        debug_assert!(was_live, "link id {id} released twice");
    }

    pub fn live(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript<'a>(a: &'a PeerId, b: &'a PeerId, ap: &'a [u8; 32], bp: &'a [u8; 32]) -> Transcript<'a> {
        Transcript {
            initiator: a,
            responder: b,
            part: &[5; 32],
            initiator_link_id: 1,
            responder_link_id: 2,
            initiator_public: ap,
            responder_public: bp,
        }
    }

    // Goal: both sides derive the same key from their own secret and the other's public key,
    // and any change in the transcript changes it.
    #[test]
    fn both_sides_derive_the_same_key() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (ours, theirs) = (Ephemeral::generate(), Ephemeral::generate());
        let (ap, bp) = (ours.public(), theirs.public());
        let t = transcript(&a, &b, &ap, &bp);
        let (ours2, theirs2) = (ours.secret.clone(), theirs.secret.clone());
        let initiator = derive_link_key(ours, &bp, &t).unwrap();
        let responder = derive_link_key(theirs, &ap, &t).unwrap();
        assert_eq!(initiator.expose(), responder.expose());
        let mut other = t;
        other.responder_link_id = 3;
        let changed = derive_link_key(Ephemeral { secret: ours2, public: ap }, &bp, &other).unwrap();
        assert_ne!(changed.expose(), initiator.expose());
        let swapped = transcript(&b, &a, &ap, &bp);
        let changed = derive_link_key(Ephemeral { secret: theirs2, public: bp }, &ap, &swapped).unwrap();
        assert_ne!(changed.expose(), initiator.expose());
    }

    // Goal: a low-order public key (all zeros) is refused instead of giving a key the peer knows.
    #[test]
    fn low_order_public_key_is_refused() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let ours = Ephemeral::generate();
        let ap = ours.public();
        assert!(derive_link_key(ours, &[0; 32], &transcript(&a, &b, &ap, &[0; 32])).is_none());
    }

    // Goal: link ids are unique among live ones, stay in the range, wrap, and run out at the bound.
    #[test]
    fn link_ids_never_collide() {
        let mut ids = LinkIds::new(10..=13, 3, 2);
        let first: Vec<u32> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(first, vec![12, 13, 10]);
        assert_eq!(ids.allocate(), None);
        ids.release(13);
        assert_eq!(ids.allocate(), Some(11), "the freed id is not reused before the range wraps");
        ids.release(10);
        assert_eq!(ids.allocate(), Some(13));
        let live: HashSet<u32> = ids.in_use.iter().copied().collect();
        assert_eq!(live, HashSet::from([11, 12, 13]));
    }

    #[test]
    fn endpoints_are_checked() {
        let ok = Endpoint { address: "127.0.0.1:4000".parse().unwrap(), shards: 2 };
        assert_eq!(validate_endpoint(&ok), Ok(()));
        for bad in [
            Endpoint { address: "127.0.0.1:0".parse().unwrap(), shards: 2 },
            Endpoint { address: "0.0.0.0:4000".parse().unwrap(), shards: 2 },
            Endpoint { address: "127.0.0.1:4000".parse().unwrap(), shards: 0 },
            Endpoint { address: "127.0.0.1:65535".parse().unwrap(), shards: 2 },
        ] {
            assert!(validate_endpoint(&bad).is_err(), "{bad:?}");
        }
    }
}
