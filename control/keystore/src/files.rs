//! Key files on disk: reading them as ssh does (refusing a file others can read) and
//! writing them so that no one else ever can.
//!
//! Reading ([`load_secret`]): the file is opened, then its mode is checked on the open file
//! (no race between check and read): any group or other bit (`mode & 0o077`) is refused with
//! the `chmod` that fixes it. The contents are one of a plain key file (64 hex digits,
//! optionally `0x`, surrounding whitespace allowed), the JSON `{"address", "private_key"}`
//! that `runnel keygen` printed before it wrote files, or a Web3 Secret Storage keystore.
//! At most [`KEY_FILE_BYTES_MAX`] bytes are read.
//!
//! Writing ([`write_private_file`]): created with `O_CREAT | O_EXCL` and mode 0600, so an
//! existing file (or a symlink planted in its place) is never followed or overwritten;
//! [`Replace::Yes`] writes a new file beside it and renames it over the old one, so the path
//! always holds either the old key or the whole new one. Data and directory are fsynced.

use crate::secret::{Password, Secret, SecretBuffer};
use crate::web3::{self, KeystoreError, Limits};
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest key or password file read (a keystore is about 500 bytes).
pub const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;
/// The environment variable a keystore password may come from.
pub const PASSWORD_ENV: &str = "RUNNEL_KEYSTORE_PASSWORD";

/// Which file an error is about: a key file or a password file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Key,
    Password,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Key => "key file",
            FileKind::Password => "password file",
        })
    }
}

/// Why a key file could not be read or written. No message contains key material.
#[derive(Debug)]
pub enum KeyFileError {
    Io {
        kind: FileKind,
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    /// Group or others have some access to the file.
    Permissions {
        kind: FileKind,
        path: PathBuf,
        mode: u32,
    },
    NotAFile {
        kind: FileKind,
        path: PathBuf,
    },
    TooLarge {
        kind: FileKind,
        path: PathBuf,
    },
    /// The contents are none of the accepted formats; `reason` says what was expected.
    Format {
        path: PathBuf,
        reason: String,
    },
    /// The file is a keystore and no password was given.
    PasswordNeeded {
        path: PathBuf,
    },
    Keystore {
        path: PathBuf,
        error: KeystoreError,
    },
    /// The file to write exists and replacing it was not asked for.
    Exists {
        path: PathBuf,
    },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Io { kind, path, action, error } => write!(f, "cannot {action} {kind} {}: {error}", path.display()),
            KeyFileError::Permissions { kind, path, mode } => write!(
                f,
                "{kind} {path} is accessible by group or others (mode {mode:04o}); run: chmod 600 {path}",
                path = path.display(),
                mode = mode & 0o7777
            ),
            KeyFileError::NotAFile { kind, path } => write!(f, "{kind} {} is not a regular file", path.display()),
            KeyFileError::TooLarge { kind, path } => {
                write!(f, "{kind} {} is larger than {KEY_FILE_BYTES_MAX} bytes: not a key file", path.display())
            }
            KeyFileError::Format { path, reason } => write!(f, "key file {}: {reason}", path.display()),
            KeyFileError::PasswordNeeded { path } => write!(
                f,
                "key file {} is an encrypted keystore: give its password with --password-file FILE or ${PASSWORD_ENV}",
                path.display()
            ),
            KeyFileError::Keystore { path, error } => write!(f, "key file {}: {error}", path.display()),
            KeyFileError::Exists { path } => {
                write!(f, "{} already exists: not overwriting it (choose another path, or --force)", path.display())
            }
        }
    }
}

impl std::error::Error for KeyFileError {}

/// Where a keystore's password comes from; it is read only if the key file is a keystore.
#[derive(Debug)]
pub enum PasswordSource {
    /// No password: a keystore is refused with [`KeyFileError::PasswordNeeded`].
    None,
    /// A file (mode checked like a key file); one trailing `\n` or `\r\n` is not part of it.
    File(PathBuf),
    /// The environment variable [`PASSWORD_ENV`], if set; its bytes as they are.
    Env,
    Given(Password),
}

impl PasswordSource {
    /// `file` if given, else [`PASSWORD_ENV`] if set, else none.
    pub fn file_or_env(file: Option<&Path>) -> Self {
        match file {
            Some(path) => PasswordSource::File(path.to_path_buf()),
            None if std::env::var_os(PASSWORD_ENV).is_some() => PasswordSource::Env,
            None => PasswordSource::None,
        }
    }

    /// Reads the password (`Ok(None)`: there is none).
    pub fn read(self) -> Result<Option<Password>, KeyFileError> {
        match self {
            PasswordSource::None => Ok(None),
            PasswordSource::Given(password) => Ok(Some(password)),
            PasswordSource::Env => Ok(std::env::var_os(PASSWORD_ENV).map(|value| {
                use std::os::unix::ffi::OsStringExt;
                Password::new(value.into_vec())
            })),
            PasswordSource::File(path) => {
                let mut buffer = read_private(FileKind::Password, &path)?;
                let bytes = &mut buffer.0;
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                Ok(Some(Password::new(bytes.clone())))
            }
        }
    }
}

/// Which format a key file was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// 64 hex digits.
    Plain,
    /// `{"address": "0x…", "private_key": "0x…"}` (what `runnel keygen` used to print).
    LegacyJson,
    /// A Web3 Secret Storage v3 keystore.
    Keystore,
}

/// A secret read from a key file.
#[derive(Debug)]
pub struct LoadedSecret {
    pub secret: Secret,
    /// The address the file claims (JSON formats only): the caller checks it against the key.
    pub address: Option<[u8; 20]>,
    pub format: KeyFormat,
}

/// Opens `path` for reading and refuses it unless it is a regular file that only its owner
/// can access; reads at most [`KEY_FILE_BYTES_MAX`] bytes.
fn read_private(kind: FileKind, path: &Path) -> Result<SecretBuffer, KeyFileError> {
    let io = |action, error| KeyFileError::Io { kind, path: path.to_path_buf(), action, error };
    let file = File::open(path).map_err(|e| io("open", e))?;
    // The mode of the file we opened, not of whatever the path names a moment later.
    let metadata = file.metadata().map_err(|e| io("stat", e))?;
    if !metadata.is_file() {
        return Err(KeyFileError::NotAFile { kind, path: path.to_path_buf() });
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(KeyFileError::Permissions { kind, path: path.to_path_buf(), mode: metadata.mode() });
    }
    let mut buffer = SecretBuffer(Vec::with_capacity(metadata.len().min(KEY_FILE_BYTES_MAX) as usize + 1));
    file.take(KEY_FILE_BYTES_MAX + 1).read_to_end(&mut buffer.0).map_err(|e| io("read", e))?;
    if buffer.0.len() as u64 > KEY_FILE_BYTES_MAX {
        return Err(KeyFileError::TooLarge { kind, path: path.to_path_buf() });
    }
    Ok(buffer)
}

/// Reads a secret from a key file in any of the [`KeyFormat`]s; a keystore is decrypted
/// with the password from `password` within `limits`.
pub fn load_secret(path: &Path, password: PasswordSource, limits: &Limits) -> Result<LoadedSecret, KeyFileError> {
    let buffer = read_private(FileKind::Key, path)?;
    let format_error = |reason: &str| KeyFileError::Format { path: path.to_path_buf(), reason: reason.to_string() };
    let text = buffer.0.trim_ascii();
    if !text.starts_with(b"{") {
        let text = std::str::from_utf8(text).map_err(|_| format_error(PLAIN_EXPECTED))?;
        let secret = Secret::from_hex(text).ok_or_else(|| format_error(PLAIN_EXPECTED))?;
        return Ok(LoadedSecret { secret, address: None, format: KeyFormat::Plain });
    }
    if let Some(loaded) = parse_legacy_json(text, path)? {
        return Ok(loaded);
    }
    let Some(password) = password.read()? else {
        return Err(KeyFileError::PasswordNeeded { path: path.to_path_buf() });
    };
    let unlocked = web3::decode(text, &password, limits).map_err(|error| KeyFileError::Keystore { path: path.to_path_buf(), error })?;
    Ok(LoadedSecret { secret: unlocked.secret, address: unlocked.address, format: KeyFormat::Keystore })
}

const PLAIN_EXPECTED: &str =
    "expected 64 hex digits (a secp256k1 private key, optionally 0x-prefixed), a JSON {\"address\", \"private_key\"}, or a Web3 keystore";

#[derive(serde::Deserialize)]
struct LegacyJson {
    address: Option<String>,
    private_key: String,
}

impl Drop for LegacyJson {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.private_key).into_bytes();
        crate::secret::wipe(&mut bytes);
    }
}

/// The old `runnel keygen` JSON, if `text` has a `private_key` field (`Ok(None)` if not).
fn parse_legacy_json(text: &[u8], path: &Path) -> Result<Option<LoadedSecret>, KeyFileError> {
    let format_error = |reason: &str| KeyFileError::Format { path: path.to_path_buf(), reason: reason.to_string() };
    #[derive(serde::Deserialize)]
    struct Probe {
        private_key: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Probe>(text) {
        Ok(Probe { private_key: Some(_) }) => {}
        // Not this format (or not JSON at all): the keystore decoder says what is wrong.
        _ => return Ok(None),
    }
    // serde's messages can quote values, so none of them is passed on here.
    let legacy: LegacyJson = serde_json::from_slice(text).map_err(|_| format_error(LEGACY_EXPECTED))?;
    let secret = Secret::from_hex(legacy.private_key.trim()).ok_or_else(|| format_error(LEGACY_EXPECTED))?;
    let address = match legacy.address.as_deref() {
        None => None,
        Some(text) => {
            let mut address = [0u8; 20];
            hex::decode_to_slice(text.strip_prefix("0x").unwrap_or(text), &mut address)
                .map_err(|_| format_error("its \"address\" is not 20 bytes of hex"))?;
            Some(address)
        }
    };
    Ok(Some(LoadedSecret { secret, address, format: KeyFormat::LegacyJson }))
}

const LEGACY_EXPECTED: &str = "a JSON key file needs \"private_key\": 64 hex digits (optionally 0x-prefixed) and optionally \"address\"";

/// Whether [`write_private_file`] may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    No,
    Yes,
}

/// Writes `contents` to a new file at `path` with mode 0600 (see the module doc), fsynced.
pub fn write_private_file(path: &Path, contents: &[u8], replace: Replace) -> Result<(), KeyFileError> {
    let io = |action, error| KeyFileError::Io { kind: FileKind::Key, path: path.to_path_buf(), action, error };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| io("write", std::io::Error::other("the path names no file")))?;
    let target = match replace {
        Replace::No => path.to_path_buf(),
        Replace::Yes => {
            let mut temporary = std::ffi::OsString::from(".");
            temporary.push(file_name);
            temporary.push(format!(".{}.{:08x}.tmp", std::process::id(), rand::random::<u32>()));
            directory.join(temporary)
        }
    };
    let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && replace == Replace::No => {
            return Err(KeyFileError::Exists { path: path.to_path_buf() });
        }
        Err(error) => return Err(io("create", error)),
    };
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    drop(file);
    let placed = written.and_then(|()| if replace == Replace::Yes { std::fs::rename(&target, path) } else { Ok(()) });
    if let Err(error) = placed {
        // Never leave a half-written key behind.
        std::fs::remove_file(&target).ok();
        return Err(io("write", error));
    }
    // The directory entry too: a crash right after must not lose the new name.
    File::open(&directory).and_then(|d| d.sync_all()).map_err(|e| io("sync the directory of", e))
}

/// Creates the directory `path` with mode 0700; it must not exist yet.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)
}

/// Creates `path` and any missing parents with mode 0700; an existing directory is kept as
/// it is (the files written into it are 0600 whatever the directory's mode).
pub fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// A new directory only this user can enter: `<temp dir>/<prefix><pid>-<random>`, mode 0700,
/// created fresh (never one that someone else made in advance).
pub fn create_private_temp_dir(prefix: &str) -> std::io::Result<PathBuf> {
    let mut last_error = None;
    for _ in 0..16 {
        let path = std::env::temp_dir().join(format!("{prefix}{}-{:08x}", std::process::id(), rand::random::<u32>()));
        match create_private_dir(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free name")))
}
