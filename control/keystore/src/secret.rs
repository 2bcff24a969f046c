//! The two kinds of key material this crate handles, each wiped when dropped and never shown
//! by `Debug`: a 32-byte [`Secret`] and a [`Password`].
//!
//! Wiping is best effort: the bytes of the value itself are overwritten (a plain `fill`
//! kept by [`std::hint::black_box`], no `unsafe`), but copies the program made elsewhere —
//! a `String` from an environment variable, the secp256k1 library's own key — are out of
//! its reach. docs/keys.md says what this does and does not protect.

use std::fmt;

/// Overwrites `bytes` with zeros in a way the optimiser keeps.
pub(crate) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// A 32-byte secret: a secp256k1 private key (what a keystore holds) or a derived key.
///
/// Not `Clone`, not `Display`; `Debug` prints `Secret(<redacted>)`. Zeroed on drop.
pub struct Secret([u8; 32]);

impl Secret {
    pub const LENGTH: usize = 32;

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex digits, optionally `0x`-prefixed, without allocating (no stray copy).
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
        let mut secret = Self([0; 32]);
        hex::decode_to_slice(digits, &mut secret.0).ok()?;
        Some(secret)
    }

    /// Writes the 64 lower-case hex digits (no `0x`) into `out`; the caller wipes `out`.
    pub fn write_hex(&self, out: &mut [u8; 64]) {
        hex::encode_to_slice(self.0, out).expect("64 digits for 32 bytes");
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A keystore password: any bytes (geth and cast use the UTF-8 bytes as given, no
/// normalisation). Zeroed on drop; `Debug` prints `Password(<redacted>)`.
pub struct Password(Vec<u8>);

impl Password {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Password {
    fn from(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// File contents that may hold a key: wiped on drop.
pub(crate) struct SecretBuffer(pub(crate) Vec<u8>);

impl Drop for SecretBuffer {
    fn drop(&mut self) {
        // The whole allocation, not just `len`: a shrinking edit may have left bytes behind.
        let capacity = self.0.capacity();
        self.0.resize(capacity, 0);
        wipe(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: neither secret type shows its bytes through Debug.
    #[test]
    fn debug_is_redacted() {
        let secret = Secret::from_bytes([0xab; 32]);
        let password = Password::from("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
        assert!(!format!("{secret:?} {password:?}").contains("ab"));
    }

    // Goal: hex parsing accepts an optional 0x and exactly 64 digits, nothing else.
    #[test]
    fn secret_from_hex() {
        let digits = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";
        assert_eq!(Secret::from_hex(digits).unwrap().expose()[0], 0x7a);
        assert_eq!(Secret::from_hex(&format!("0x{digits}")).unwrap().expose()[31], 0x9d);
        assert!(Secret::from_hex(&digits[..62]).is_none());
        assert!(Secret::from_hex(&format!("{digits}00")).is_none());
        assert!(Secret::from_hex(&digits.replace('7', "g")).is_none());
        let mut out = [0u8; 64];
        Secret::from_hex(digits).unwrap().write_hex(&mut out);
        assert_eq!(&out[..], digits.as_bytes());
    }
}
