//! A node's identity: one secp256k1 key is both its libp2p PeerId and its Ethereum address.
//!
//! The caller loads the 32 raw bytes (with `runnel-keystore`: a 0600 key file or a Web3
//! keystore) and hands them over once; this type keeps the two key objects built from them
//! (libp2p's secp256k1 keypair, and the `PublisherKey` that signs like an Ethereum wallet)
//! and shows neither in `Debug`: only the PeerId and the address.

use libp2p::identity::{secp256k1, Keypair};
use libp2p::PeerId;
use runnel_keystore::Secret;
use runnel_proto::crypto::{address_hex, PublisherKey};
use std::fmt;

/// The node's identity key, as libp2p and as Ethereum see it.
#[derive(Clone)]
pub struct Identity {
    keypair: Keypair,
    peer_id: PeerId,
    publisher: PublisherKey,
}

/// Why 32 bytes are not a secp256k1 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityError(pub String);

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityError {}

impl Identity {
    /// The identity of a loaded key (`runnel_keystore::load_secret(..)?.secret`).
    pub fn from_secret(secret: &Secret) -> Result<Self, IdentityError> {
        Self::from_bytes(secret.expose())
    }

    /// The identity of a raw 32-byte secp256k1 private key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, IdentityError> {
        // libp2p zeroes the copy it parses.
        let mut copy = *bytes;
        let secret = secp256k1::SecretKey::try_from_bytes(&mut copy)
            .map_err(|_| IdentityError("identity key is zero or not below the secp256k1 group order".into()))?;
        let keypair = Keypair::from(secp256k1::Keypair::from(secret));
        // PublisherKey parses hex; the digits live on the stack and are wiped after.
        let mut digits = [0u8; 64];
        hex::encode_to_slice(bytes, &mut digits).expect("64 digits for 32 bytes");
        let publisher = PublisherKey::from_hex(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
            .map_err(|error| IdentityError(error.to_string()));
        digits.fill(0);
        std::hint::black_box(&mut digits);
        let publisher = publisher?;
        Ok(Self { peer_id: keypair.public().to_peer_id(), keypair, publisher })
    }

    /// A new random identity (tests, `runnel dev`).
    pub fn generate() -> Self {
        let keypair = Keypair::generate_secp256k1();
        let secret = keypair.clone().try_into_secp256k1().expect("a secp256k1 keypair").secret().to_bytes();
        let identity = Self::from_bytes(&secret).expect("libp2p generated a valid key");
        let mut secret = secret;
        secret.fill(0);
        std::hint::black_box(&mut secret);
        identity
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The Ethereum address of the same key.
    pub fn address(&self) -> [u8; 20] {
        self.publisher.address()
    }

    /// `0x` + 40 lower-case hex digits.
    pub fn address_hex(&self) -> String {
        address_hex(&self.publisher.address())
    }

    /// The key as a publisher (EIP-191 signatures), for what the node signs itself.
    pub fn publisher_key(&self) -> &PublisherKey {
        &self.publisher
    }

    pub(crate) fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

/// The Ethereum address behind a PeerId: a secp256k1 PeerId carries its public key inline
/// (an identity multihash), and the address is that key's. `None` for other key types (an
/// ed25519 peer has no Ethereum account).
pub fn address_of_peer(peer: &PeerId) -> Option<[u8; 20]> {
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    runnel_proto::crypto::address_of_sec1(&public.try_into_secp256k1().ok()?.to_bytes())
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(peer {}, address {})", self.peer_id, self.address_hex())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.peer_id, self.address_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// anvil's (and hardhat's) first development account.
    const ANVIL_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const ANVIL_ADDRESS: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
    /// Its PeerId: the identity multihash of the protobuf-encoded compressed public key.
    const ANVIL_PEER_ID: &str = "16Uiu2HAmMUjGmiUhJeiZgu6ZZnLRkE2VViR2JgjqtW9aTZnHQqgg";

    fn anvil() -> Identity {
        let secret = Secret::from_hex(ANVIL_KEY).unwrap();
        Identity::from_secret(&secret).unwrap()
    }

    // Goal: the anvil key gives its well-known address and a stable PeerId, and the PeerId
    // carries the same public key the address is computed from.
    #[test]
    fn anvil_key_gives_address_and_peer_id() {
        let identity = anvil();
        assert_eq!(identity.address_hex(), ANVIL_ADDRESS);
        assert_eq!(identity.peer_id().to_string(), ANVIL_PEER_ID);
        let multihash = *identity.peer_id().as_ref();
        assert_eq!(multihash.code(), 0, "identity multihash: the public key is inside the PeerId");
        let public = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).unwrap();
        let public = public.try_into_secp256k1().unwrap();
        let secret = ::secp256k1::SecretKey::from_byte_array(hex::decode(ANVIL_KEY).unwrap().try_into().unwrap()).unwrap();
        let expected = ::secp256k1::PublicKey::from_secret_key(::secp256k1::SECP256K1, &secret);
        assert_eq!(public.to_bytes(), expected.serialize());
        assert_eq!(runnel_proto::crypto::address_of(&expected), identity.address());
        assert_eq!(address_of_peer(&identity.peer_id()), Some(identity.address()));
        assert_eq!(address_of_peer(&PeerId::random()), None, "random bytes are no secp256k1 key");
    }

    // Goal: no key material in Debug or Display.
    #[test]
    fn no_key_material_in_output() {
        let identity = anvil();
        for text in [format!("{identity:?}"), format!("{identity}"), format!("{:#?}", identity)] {
            assert!(!text.to_lowercase().contains(&ANVIL_KEY[..16]), "{text}");
            assert!(text.contains(ANVIL_ADDRESS), "{text}");
        }
    }

    #[test]
    fn invalid_keys_are_refused() {
        assert!(Identity::from_bytes(&[0; 32]).is_err());
        assert!(Identity::from_bytes(&[0xff; 32]).is_err());
        let generated = Identity::generate();
        assert_ne!(generated.peer_id(), anvil().peer_id());
    }
}
