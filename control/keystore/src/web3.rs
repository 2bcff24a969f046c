//! Web3 Secret Storage v3: the encrypted JSON keystore geth, foundry's `cast wallet` and
//! most Ethereum wallets read and write.
//!
//! How it works: a KDF (scrypt, or PBKDF2-HMAC-SHA256) turns the password and a salt into a
//! 32-byte derived key; its first 16 bytes are the AES-128-CTR key that encrypts the 32-byte
//! private key (IV from `cipherparams.iv`); the MAC is
//! `keccak256(derived_key[16..32] ‖ ciphertext)`. [`decode`] recomputes the MAC and compares
//! it in constant time before it decrypts anything, so a wrong password is
//! [`KeystoreError::WrongPassword`] and never a wrong key.
//!
//! Limits: a keystore is untrusted input (it may come from anywhere), and its KDF
//! parameters choose how much memory and time decoding takes. [`Limits`] bounds both before
//! any KDF work starts; [`Limits::DEFAULT`] admits geth's standard parameters with four
//! times headroom. Only 32-byte secrets are handled (a secp256k1 key), only version 3, only
//! `aes-128-ctr`. This module knows nothing of secp256k1: it returns the secret and the
//! `address` the file claims, and the caller checks that they match.

use crate::secret::{wipe, Password, Secret};
use aes::cipher::{KeyIvInit, StreamCipher};
use pbkdf2::sha2::Sha256;
use serde::{Deserialize, Serialize};
use std::fmt;
use subtle::ConstantTimeEq;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// The only cipher in Web3 Secret Storage v3 that geth writes.
pub const CIPHER: &str = "aes-128-ctr";
const IV_LENGTH: usize = 16;
const MAC_LENGTH: usize = 32;
const SALT_LENGTH: usize = 32;
const DERIVED_KEY_LENGTH: u64 = 32;

/// What a keystore may make [`decode`] spend. Checked before any KDF work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest scrypt `n`, as log2 (`n` ≤ 2^this).
    pub scrypt_log_n_max: u8,
    /// Largest scrypt table, `128 · r · n` bytes (the memory scrypt allocates).
    pub scrypt_memory_bytes_max: u64,
    /// Largest `n · r · p`: scrypt's time is proportional to it.
    pub scrypt_work_max: u64,
    /// Largest `r · p` (scrypt's second buffer is `128 · r · p` bytes).
    pub scrypt_rp_max: u64,
    /// Largest PBKDF2 iteration count `c`.
    pub pbkdf2_iterations_max: u64,
}

impl Limits {
    /// For key files an operator hands the node: geth's standard scrypt (n = 2^18, r = 8,
    /// p = 1: 256 MiB, about a second) and up to n = 2^20 (1 GiB, four times the work);
    /// PBKDF2 up to 2^22 iterations (16 × the 262144 of the test vector).
    pub const DEFAULT: Limits = Limits {
        scrypt_log_n_max: 20,
        scrypt_memory_bytes_max: 1 << 30,
        scrypt_work_max: 1 << 23,
        scrypt_rp_max: 1 << 16,
        pbkdf2_iterations_max: 1 << 22,
    };
}

/// scrypt parameters for [`encode`]; `dklen` is always 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScryptCost {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl ScryptCost {
    /// geth's `StandardScryptN`/`StandardScryptP`: n = 262144, r = 8, p = 1 (256 MiB).
    pub const STANDARD: ScryptCost = ScryptCost { log_n: 18, r: 8, p: 1 };
    /// geth's `LightScryptN`/`LightScryptP` (`--lightkdf`): n = 4096, r = 8, p = 6 (4 MiB),
    /// about 1/10 of the work: for tests and throwaway keys.
    pub const LIGHT: ScryptCost = ScryptCost { log_n: 12, r: 8, p: 6 };
}

/// Why a keystore could not be decoded or encoded. Every message says what is wrong and
/// none contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeystoreError {
    /// Not JSON, or not the shape of a v3 keystore (serde's message: field and position).
    Json(String),
    /// `version` is not 3.
    Version(String),
    /// `crypto.cipher` is not `aes-128-ctr`.
    Cipher(String),
    /// `crypto.kdf` is neither `scrypt` nor `pbkdf2`.
    Kdf(String),
    /// `crypto.kdfparams.prf` of PBKDF2 is not `hmac-sha256`.
    Prf(String),
    /// A hex field is not hex, or not the length it must have.
    Field { field: &'static str, problem: String },
    /// A KDF parameter is invalid or beyond [`Limits`].
    KdfParameter { field: &'static str, problem: String },
    /// The MAC does not match: the password is wrong or the file was altered.
    WrongPassword,
    /// Randomness for a new keystore could not be drawn.
    Random(String),
}

impl fmt::Display for KeystoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeystoreError::Json(message) => write!(f, "not a Web3 Secret Storage v3 keystore: {message}"),
            KeystoreError::Version(version) => write!(f, "keystore version {version}: only version 3 is supported"),
            KeystoreError::Cipher(cipher) => write!(f, "crypto.cipher {cipher:?}: only {CIPHER:?} is supported"),
            KeystoreError::Kdf(kdf) => write!(f, "crypto.kdf {kdf:?}: only \"scrypt\" and \"pbkdf2\" are supported"),
            KeystoreError::Prf(prf) => write!(f, "crypto.kdfparams.prf {prf:?}: only \"hmac-sha256\" is supported"),
            KeystoreError::Field { field, problem } => write!(f, "{field}: {problem}"),
            KeystoreError::KdfParameter { field, problem } => write!(f, "crypto.kdfparams.{field}: {problem}"),
            KeystoreError::WrongPassword => f.write_str("MAC mismatch: wrong password, or the keystore file was altered"),
            KeystoreError::Random(message) => write!(f, "cannot draw randomness for a new keystore: {message}"),
        }
    }
}

impl std::error::Error for KeystoreError {}

/// A decrypted keystore.
#[derive(Debug)]
pub struct Unlocked {
    pub secret: Secret,
    /// The `address` field, if the file has one: what the file claims, not checked here.
    pub address: Option<[u8; 20]>,
}

#[derive(Deserialize)]
struct KeystoreJson {
    version: serde_json::Value,
    // geth reads field names case-insensitively; old geth and some wallets wrote "Crypto".
    #[serde(alias = "Crypto")]
    crypto: CryptoJson,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Deserialize)]
struct CryptoJson {
    cipher: String,
    cipherparams: CipherParamsJson,
    ciphertext: String,
    kdf: String,
    kdfparams: serde_json::Value,
    mac: String,
}

#[derive(Deserialize, Serialize)]
struct CipherParamsJson {
    iv: String,
}

#[derive(Deserialize)]
struct ScryptJson {
    dklen: u64,
    n: u64,
    r: u64,
    p: u64,
    salt: String,
}

#[derive(Deserialize)]
struct Pbkdf2Json {
    dklen: u64,
    c: u64,
    prf: String,
    salt: String,
}

/// A checked KDF, ready to run within the limits it was checked against.
enum Kdf {
    Scrypt { params: scrypt::Params, salt: Vec<u8> },
    Pbkdf2 { iterations: u32, salt: Vec<u8> },
}

impl Kdf {
    fn derive(&self, password: &[u8]) -> Secret {
        let mut derived = [0u8; 32];
        match self {
            Kdf::Scrypt { params, salt } => {
                scrypt::scrypt(password, salt, params, &mut derived).expect("32 bytes is a valid scrypt output length")
            }
            Kdf::Pbkdf2 { iterations, salt } => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, *iterations, &mut derived),
        }
        let secret = Secret::from_bytes(derived);
        wipe(&mut derived);
        secret
    }
}

fn kdf_error(field: &'static str, problem: impl Into<String>) -> KeystoreError {
    KeystoreError::KdfParameter { field, problem: problem.into() }
}

fn check_dklen(dklen: u64) -> Result<(), KeystoreError> {
    if dklen != DERIVED_KEY_LENGTH {
        return Err(kdf_error("dklen", format!("is {dklen}; a v3 keystore derives {DERIVED_KEY_LENGTH} bytes")));
    }
    Ok(())
}

/// Checks scrypt parameters against `limits` (before any work) and builds them.
fn scrypt_params(n: u64, r: u64, p: u64, limits: &Limits) -> Result<scrypt::Params, KeystoreError> {
    if n < 2 || !n.is_power_of_two() {
        return Err(kdf_error("n", format!("is {n}; scrypt needs a power of two, at least 2")));
    }
    let log_n = n.trailing_zeros() as u8;
    if log_n > limits.scrypt_log_n_max {
        return Err(kdf_error("n", format!("is 2^{log_n}, above the limit 2^{} (geth's standard is 2^18)", limits.scrypt_log_n_max)));
    }
    if r == 0 || p == 0 {
        return Err(kdf_error(if r == 0 { "r" } else { "p" }, "must be at least 1"));
    }
    let rp = r.checked_mul(p).filter(|&rp| rp <= limits.scrypt_rp_max);
    let Some(rp) = rp else {
        return Err(kdf_error("p", format!("r · p = {r} · {p} is above the limit {}", limits.scrypt_rp_max)));
    };
    let memory_bytes = n.saturating_mul(r).saturating_mul(128);
    if memory_bytes > limits.scrypt_memory_bytes_max {
        return Err(kdf_error(
            "r",
            format!("n = 2^{log_n} with r = {r} needs {memory_bytes} bytes, above the limit {} bytes", limits.scrypt_memory_bytes_max),
        ));
    }
    let work = n.saturating_mul(rp);
    if work > limits.scrypt_work_max {
        return Err(kdf_error("p", format!("n · r · p = {work} is above the limit {} (the time decoding takes)", limits.scrypt_work_max)));
    }
    // Within the limits r and p fit in u32, and scrypt accepts them.
    let (r, p) = (u32::try_from(r).map_err(|_| kdf_error("r", "too large"))?, u32::try_from(p).map_err(|_| kdf_error("p", "too large"))?);
    scrypt::Params::new(log_n, r, p).map_err(|_| kdf_error("r", format!("scrypt rejects n = 2^{log_n}, r = {r}, p = {p}")))
}

fn parse_kdf(kdf: &str, params: serde_json::Value, limits: &Limits) -> Result<Kdf, KeystoreError> {
    let json_error = |error: serde_json::Error| KeystoreError::Json(format!("crypto.kdfparams: {error}"));
    match kdf {
        "scrypt" => {
            let params: ScryptJson = serde_json::from_value(params).map_err(json_error)?;
            check_dklen(params.dklen)?;
            let salt = decode_hex("crypto.kdfparams.salt", &params.salt)?;
            Ok(Kdf::Scrypt { params: scrypt_params(params.n, params.r, params.p, limits)?, salt })
        }
        "pbkdf2" => {
            let params: Pbkdf2Json = serde_json::from_value(params).map_err(json_error)?;
            check_dklen(params.dklen)?;
            if params.prf != "hmac-sha256" {
                return Err(KeystoreError::Prf(params.prf));
            }
            if params.c == 0 || params.c > limits.pbkdf2_iterations_max {
                return Err(kdf_error("c", format!("is {}; it must be 1..={}", params.c, limits.pbkdf2_iterations_max)));
            }
            let salt = decode_hex("crypto.kdfparams.salt", &params.salt)?;
            Ok(Kdf::Pbkdf2 { iterations: params.c as u32, salt })
        }
        other => Err(KeystoreError::Kdf(other.to_string())),
    }
}

fn decode_hex(field: &'static str, text: &str) -> Result<Vec<u8>, KeystoreError> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(digits).map_err(|error| KeystoreError::Field { field, problem: format!("not hex ({error})") })
}

fn decode_hex_array<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], KeystoreError> {
    let bytes = decode_hex(field, text)?;
    let length = bytes.len();
    bytes.try_into().map_err(|_| KeystoreError::Field { field, problem: format!("is {length} bytes; it must be {N}") })
}

/// `keccak256(derived_key[16..32] ‖ ciphertext)`.
fn mac_of(derived: &Secret, ciphertext: &[u8]) -> [u8; 32] {
    use tiny_keccak::{Hasher, Keccak};
    let mut hasher = Keccak::v256();
    hasher.update(&derived.expose()[16..]);
    hasher.update(ciphertext);
    let mut mac = [0u8; 32];
    hasher.finalize(&mut mac);
    mac
}

fn apply_aes_128_ctr(derived: &Secret, iv: &[u8; IV_LENGTH], data: &mut [u8]) {
    let key: &[u8; 16] = derived.expose()[..16].try_into().expect("16 bytes");
    let mut cipher = Aes128Ctr::new(key.into(), iv.into());
    cipher.apply_keystream(data);
}

/// Decrypts a v3 keystore with `password`, spending at most what `limits` allows.
///
/// Never panics on any input; a wrong password is [`KeystoreError::WrongPassword`].
pub fn decode(json: &[u8], password: &Password, limits: &Limits) -> Result<Unlocked, KeystoreError> {
    let keystore: KeystoreJson = serde_json::from_slice(json).map_err(|e| KeystoreError::Json(e.to_string()))?;
    if keystore.version != serde_json::json!(3) {
        return Err(KeystoreError::Version(keystore.version.to_string()));
    }
    let crypto = keystore.crypto;
    if crypto.cipher != CIPHER {
        return Err(KeystoreError::Cipher(crypto.cipher));
    }
    let iv: [u8; IV_LENGTH] = decode_hex_array("crypto.cipherparams.iv", &crypto.cipherparams.iv)?;
    let ciphertext: [u8; Secret::LENGTH] = decode_hex_array("crypto.ciphertext", &crypto.ciphertext)?;
    let mac: [u8; MAC_LENGTH] = decode_hex_array("crypto.mac", &crypto.mac)?;
    let address = match keystore.address.as_deref() {
        None | Some("") => None,
        Some(text) => Some(decode_hex_array::<20>("address", text)?),
    };
    let kdf = parse_kdf(&crypto.kdf, crypto.kdfparams, limits)?;
    let derived = kdf.derive(password.expose());
    // Constant time: how many MAC bytes matched must not leak through timing.
    if !bool::from(mac_of(&derived, &ciphertext).ct_eq(&mac)) {
        return Err(KeystoreError::WrongPassword);
    }
    let mut plain = ciphertext;
    apply_aes_128_ctr(&derived, &iv, &mut plain);
    let secret = Secret::from_bytes(plain);
    wipe(&mut plain);
    Ok(Unlocked { secret, address })
}

/// The random inputs of a new keystore, apart so that [`encode`] is deterministic.
#[derive(Clone, Debug)]
pub struct Randomness {
    pub salt: [u8; SALT_LENGTH],
    pub iv: [u8; IV_LENGTH],
    /// Becomes the `id` field (a version 4 UUID).
    pub uuid: [u8; 16],
}

impl Randomness {
    /// From the operating system's random source.
    pub fn from_os() -> Result<Self, KeystoreError> {
        use rand::TryRngCore;
        let mut bytes = [0u8; SALT_LENGTH + IV_LENGTH + 16];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| KeystoreError::Random(e.to_string()))?;
        let mut randomness = Randomness { salt: [0; SALT_LENGTH], iv: [0; IV_LENGTH], uuid: [0; 16] };
        randomness.salt.copy_from_slice(&bytes[..SALT_LENGTH]);
        randomness.iv.copy_from_slice(&bytes[SALT_LENGTH..SALT_LENGTH + IV_LENGTH]);
        randomness.uuid.copy_from_slice(&bytes[SALT_LENGTH + IV_LENGTH..]);
        Ok(randomness)
    }
}

/// `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx` from 16 random bytes.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

// Field order as geth writes them.
#[derive(Serialize)]
struct KeystoreOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    crypto: CryptoOut<'a>,
    id: String,
    version: u32,
}

#[derive(Serialize)]
struct CryptoOut<'a> {
    cipher: &'a str,
    ciphertext: String,
    cipherparams: CipherParamsJson,
    kdf: &'a str,
    kdfparams: ScryptOut,
    mac: String,
}

#[derive(Serialize)]
struct ScryptOut {
    dklen: u64,
    n: u64,
    p: u32,
    r: u32,
    salt: String,
}

/// Encrypts `secret` into a v3 keystore (scrypt, aes-128-ctr) as geth writes it: `address`
/// lower-case hex without `0x` (omitted if `None`), a random `id`. `cost` must be within
/// [`Limits::DEFAULT`], so that every keystore written here can be read back.
pub fn encode(
    secret: &Secret,
    address: Option<&[u8; 20]>,
    password: &Password,
    cost: ScryptCost,
    randomness: &Randomness,
) -> Result<String, KeystoreError> {
    let n = 1u64.checked_shl(cost.log_n.into()).unwrap_or(0);
    let params = scrypt_params(n, cost.r.into(), cost.p.into(), &Limits::DEFAULT)?;
    let kdf = Kdf::Scrypt { params, salt: randomness.salt.to_vec() };
    let derived = kdf.derive(password.expose());
    let mut ciphertext = *secret.expose();
    apply_aes_128_ctr(&derived, &randomness.iv, &mut ciphertext);
    let keystore = KeystoreOut {
        address: address.map(hex::encode),
        crypto: CryptoOut {
            cipher: CIPHER,
            ciphertext: hex::encode(ciphertext),
            cipherparams: CipherParamsJson { iv: hex::encode(randomness.iv) },
            kdf: "scrypt",
            kdfparams: ScryptOut { dklen: DERIVED_KEY_LENGTH, n, p: cost.p, r: cost.r, salt: hex::encode(randomness.salt) },
            mac: hex::encode(mac_of(&derived, &ciphertext)),
        },
        id: uuid_v4(randomness.uuid),
        version: 3,
    };
    Ok(serde_json::to_string(&keystore).expect("a keystore serialises"))
}

/// [`encode`] with fresh randomness from the operating system.
pub fn encrypt(secret: &Secret, address: Option<&[u8; 20]>, password: &Password, cost: ScryptCost) -> Result<String, KeystoreError> {
    encode(secret, address, password, cost, &Randomness::from_os()?)
}
