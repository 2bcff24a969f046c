//! `runnel keygen`: a publisher (node identity) key written to a new 0600 file or an
//! encrypted keystore, or a link key.
//!
//! A publisher key is never printed: `--out FILE` is required, and only the address and the
//! path are. A link key is a symmetric key that both ends' config files embed, so without
//! `--out` it is printed for pasting into them (docs/keys.md).

use runnel_keystore::{KeyFileError, Limits, LoadedSecret, Password, PasswordSource, Replace, ScryptCost, Secret, PASSWORD_ENV};
use runnel_proto::crypto::{address_hex, PublisherKey};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Write the key to this new file (mode 0600) and print only its address. Required for
    /// a publisher key; an existing file is not overwritten without --force.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write an encrypted Web3 Secret Storage keystore (geth's and `cast wallet`'s format)
    /// instead of a plain hex file; the password comes from --password-file or
    /// $RUNNEL_KEYSTORE_PASSWORD.
    #[arg(long)]
    pub keystore: bool,
    /// File holding the keystore password (mode 0600; a trailing newline is not part of it).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// geth's light scrypt parameters (n = 4096, p = 6) instead of the standard n = 262144,
    /// r = 8, p = 1: fast and much weaker, for tests and throwaway keys.
    #[arg(long, requires = "keystore")]
    pub light_kdf: bool,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// Make a 32-byte link key instead (64 hex digits): printed without --out, since node
    /// and client link files embed it.
    #[arg(long, conflicts_with_all = ["keystore", "password_file", "light_kdf"])]
    pub link: bool,
}

pub fn run(args: KeygenArgs) -> Result<(), String> {
    let replace = if args.force { Replace::Yes } else { Replace::No };
    if args.link {
        let mut digits = hex::encode(link_key_bytes()).into_bytes();
        digits.push(b'\n');
        let result = match &args.out {
            None => {
                print!("{}", String::from_utf8_lossy(&digits));
                Ok(())
            }
            Some(path) => runnel_keystore::write_private_file(path, &digits, replace)
                .map(|()| println!("{}", serde_json::json!({ "link_key_file": path.display().to_string() })))
                .map_err(|e| e.to_string()),
        };
        digits.fill(0);
        return result;
    }
    let Some(path) = &args.out else {
        return Err("keygen: give --out FILE: a publisher key is written to a new file (mode 0600, or an encrypted keystore with \
                    --keystore) and never printed; only its address is"
            .into());
    };
    let key = PublisherKey::generate();
    let secret = secret_of(&key);
    let contents = if args.keystore {
        let password = keystore_password(args.password_file.as_deref())?;
        let cost = if args.light_kdf { ScryptCost::LIGHT } else { ScryptCost::STANDARD };
        runnel_keystore::encrypt(&secret, Some(&key.address()), &password, cost).map_err(|e| format!("keystore: {e}"))?.into_bytes()
    } else {
        let mut line = vec![0u8; 65];
        secret.write_hex((&mut line[..64]).try_into().expect("64 bytes"));
        line[64] = b'\n';
        line
    };
    let written = runnel_keystore::write_private_file(path, &contents, replace);
    let mut contents = contents;
    contents.fill(0);
    written.map_err(|e| e.to_string())?;
    let format = if args.keystore { "keystore" } else { "plain" };
    println!("{}", serde_json::json!({ "address": address_hex(&key.address()), "key_file": path.display().to_string(), "format": format }));
    Ok(())
}

/// The password for a new keystore: from the file, else the environment; never empty.
fn keystore_password(file: Option<&Path>) -> Result<Password, String> {
    let password = PasswordSource::file_or_env(file).read().map_err(|e| e.to_string())?;
    match password {
        None => Err(format!("keygen --keystore: give the password with --password-file FILE or ${PASSWORD_ENV}")),
        Some(password) if password.is_empty() => {
            Err("keygen --keystore: the password is empty, which protects nothing; use a plain key file (no --keystore) instead".into())
        }
        Some(password) => Ok(password),
    }
}

/// The 32 secret bytes of `key`, wiping the hex copy it hands out.
pub fn secret_of(key: &PublisherKey) -> Secret {
    let mut hex = key.secret_hex().into_bytes();
    let secret = std::str::from_utf8(&hex).ok().and_then(Secret::from_hex).expect("secret_hex is 0x + 64 hex digits");
    hex.fill(0);
    secret
}

/// The publisher key a loaded secret is; refuses a file whose address field names another.
pub fn publisher_key_of(loaded: &LoadedSecret, path: &Path) -> Result<PublisherKey, String> {
    let mut digits = [0u8; 64];
    loaded.secret.write_hex(&mut digits);
    let key = PublisherKey::from_hex(std::str::from_utf8(&digits).expect("hex is ASCII"));
    digits.fill(0);
    let key = key.map_err(|e| format!("key file {}: {e}", path.display()))?;
    match loaded.address {
        Some(claimed) if claimed != key.address() => Err(format!(
            "key file {}: its address field says {}, but the key in it is {}'s: the file is inconsistent (altered, or a wrong IV)",
            path.display(),
            address_hex(&claimed),
            address_hex(&key.address())
        )),
        _ => Ok(key),
    }
}

/// Loads a publisher key from a key file (plain, legacy JSON, or keystore with its
/// password from `password_file` or the environment).
pub fn load_key_file(path: &Path, password_file: Option<&Path>) -> Result<PublisherKey, String> {
    let loaded = runnel_keystore::load_secret(path, PasswordSource::file_or_env(password_file), &Limits::DEFAULT)
        .map_err(|e: KeyFileError| e.to_string())?;
    publisher_key_of(&loaded, path)
}

/// A fresh 32-byte link key from the OS-seeded RNG.
pub fn link_key_bytes() -> [u8; 32] {
    rand::random()
}
