//! # runnel-keystore
//!
//! Where a node's identity key lives and how it gets there. One secp256k1 key is a node's
//! (and a publisher's) identity; operators keep it the way they keep an ssh or geth key:
//!
//! - a **plain key file**: 64 hex digits, mode 0600. Like ssh, a key file that group or
//!   others can access is refused, with the `chmod` that fixes it;
//! - an **encrypted keystore**: Web3 Secret Storage v3 JSON, the format of geth's
//!   `keystore/` directory and foundry's `cast wallet`, so one key moves between those
//!   tools and Runnel unchanged.
//!
//! ```no_run
//! use runnel_keystore::{load_secret, Limits, PasswordSource};
//! let loaded = load_secret("node.key".as_ref(), PasswordSource::file_or_env(None), &Limits::DEFAULT)?;
//! // loaded.secret: 32 bytes, wiped on drop, `Debug` shows `Secret(<redacted>)`.
//! # Ok::<(), runnel_keystore::KeyFileError>(())
//! ```
//!
//! How: [`web3`] is the pure decoder and encoder (no I/O; bounded work on untrusted input,
//! see [`Limits`]); [`files`] reads key files (mode check on the opened file) and writes
//! them (`O_CREAT | O_EXCL`, mode 0600, fsync). Secrets are raw 32-byte values: this crate
//! knows no secp256k1, so the caller turns a [`Secret`] into a key, computes its address and
//! checks it against the address the file claims ([`LoadedSecret::address`]).
//!
//! Limits: secrets are wiped when dropped, best effort (see [`secret`]); the password comes
//! from a file or the environment, never from a terminal prompt (yet). docs/keys.md has the
//! decisions: formats, the 0600 refusal, scrypt parameters, what is and is not protected.

pub mod files;
pub mod secret;
pub mod web3;

pub use files::{
    create_private_dir, create_private_dir_all, create_private_temp_dir, load_secret, write_private_file, FileKind, KeyFileError,
    KeyFormat, LoadedSecret, PasswordSource, Replace, KEY_FILE_BYTES_MAX, PASSWORD_ENV,
};
pub use secret::{Password, Secret};
pub use web3::{decode, encode, encrypt, KeystoreError, Limits, Randomness, ScryptCost, Unlocked};
