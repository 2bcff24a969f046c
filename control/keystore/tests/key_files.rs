//! Key files on a real file system: the ssh-style mode check, every accepted format, the
//! password sources, and writing with O_EXCL / atomic replacement at mode 0600.

use runnel_keystore::{
    create_private_temp_dir, load_secret, write_private_file, FileKind, KeyFileError, KeyFormat, Limits, Password, PasswordSource, Replace,
    ScryptCost, Secret,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const KEY: &str = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";

/// A private scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        Self(create_private_temp_dir("runnel-keystore-test-").unwrap())
    }

    /// Writes `contents` to `name` with `mode`.
    fn file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn load(path: &Path, password: PasswordSource) -> Result<runnel_keystore::LoadedSecret, KeyFileError> {
    load_secret(path, password, &Limits::DEFAULT)
}

// Goal: a plain key file loads with or without 0x and a trailing newline, at 0600 and 0400.
#[test]
fn plain_key_files_load() {
    let scratch = Scratch::new();
    for (name, contents, mode) in
        [("a", format!("{KEY}\n"), 0o600), ("b", format!("0x{KEY}"), 0o400), ("c", format!("  0x{}\r\n", KEY.to_uppercase()), 0o600)]
    {
        let loaded = load(&scratch.file(name, contents.as_bytes(), mode), PasswordSource::None).unwrap();
        assert_eq!(hex::encode(loaded.secret.expose()), KEY, "{name}");
        assert_eq!((loaded.format, loaded.address), (KeyFormat::Plain, None));
    }
}

// Goal: like ssh, a key file with any group or other bit is refused, with the chmod to run;
// the key is never read (so never echoed).
#[test]
fn group_or_world_accessible_key_files_are_refused() {
    let scratch = Scratch::new();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o601, 0o610, 0o666] {
        let path = scratch.file("key", KEY.as_bytes(), mode);
        let error = load(&path, PasswordSource::None).unwrap_err();
        assert!(matches!(error, KeyFileError::Permissions { kind: FileKind::Key, .. }), "{mode:o}: {error}");
        let message = error.to_string();
        let expected = format!("key file {p} is accessible by group or others (mode {mode:04o}); run: chmod 600 {p}", p = path.display());
        assert_eq!(message, expected);
        assert!(!message.contains(KEY));
    }
}

// Goal: the old `runnel keygen` JSON still loads, address included.
#[test]
fn legacy_json_loads() {
    let scratch = Scratch::new();
    let text = format!("{{\"address\":\"0x008aeeda4d805471df9b2a5b0f38a0c3bcba786b\",\"private_key\":\"0x{KEY}\"}}\n");
    let loaded = load(&scratch.file("legacy.json", text.as_bytes(), 0o600), PasswordSource::None).unwrap();
    assert_eq!(hex::encode(loaded.secret.expose()), KEY);
    assert_eq!(loaded.format, KeyFormat::LegacyJson);
    assert_eq!(hex::encode(loaded.address.unwrap()), "008aeeda4d805471df9b2a5b0f38a0c3bcba786b");
    // A bad private_key is refused without quoting it.
    let bad = scratch.file("bad.json", br#"{"private_key":"0xabc123secret"}"#, 0o600);
    let message = load(&bad, PasswordSource::None).unwrap_err().to_string();
    assert!(message.contains("needs \"private_key\": 64 hex digits") && !message.contains("abc123"), "{message}");
    let bad = scratch.file("bad2.json", br#"{"private_key":12345678}"#, 0o600);
    let message = load(&bad, PasswordSource::None).unwrap_err().to_string();
    assert!(!message.contains("12345678"), "{message}");
}

// Goal: a keystore needs a password; given by file (mode-checked, one trailing newline
// dropped) or directly, it decrypts; a wrong one is a MAC mismatch.
#[test]
fn keystores_load_with_a_password() {
    let scratch = Scratch::new();
    let secret = Secret::from_hex(KEY).unwrap();
    let json = runnel_keystore::encrypt(&secret, None, &Password::from("pass word"), ScryptCost { log_n: 10, r: 8, p: 1 }).unwrap();
    let keystore = scratch.file("keystore.json", json.as_bytes(), 0o600);
    let error = load(&keystore, PasswordSource::None).unwrap_err();
    assert!(error
        .to_string()
        .contains("is an encrypted keystore: give its password with --password-file FILE or $RUNNEL_KEYSTORE_PASSWORD"));
    let loaded = load(&keystore, PasswordSource::Given(Password::from("pass word"))).unwrap();
    assert_eq!((hex::encode(loaded.secret.expose()), loaded.format), (KEY.to_string(), KeyFormat::Keystore));
    for contents in [&b"pass word"[..], b"pass word\n", b"pass word\r\n"] {
        let password_file = scratch.file("password", contents, 0o600);
        assert!(load(&keystore, PasswordSource::File(password_file)).is_ok(), "{contents:?}");
    }
    let password_file = scratch.file("password", b"pass word\n\n", 0o600);
    let error = load(&keystore, PasswordSource::File(password_file)).unwrap_err();
    assert!(error.to_string().ends_with("MAC mismatch: wrong password, or the keystore file was altered"), "{error}");
    let password_file = scratch.file("password", b"pass word", 0o644);
    let error = load(&keystore, PasswordSource::File(password_file)).unwrap_err();
    assert!(matches!(error, KeyFileError::Permissions { kind: FileKind::Password, .. }), "{error}");
    assert!(error.to_string().starts_with("password file "));
}

// Goal: anything else is refused with what a key file must be, without quoting the file.
#[test]
fn other_contents_are_refused() {
    let scratch = Scratch::new();
    for (name, contents) in [
        ("short", &KEY.as_bytes()[..60]),
        ("long", format!("{KEY}00").as_bytes()),
        ("two", format!("{KEY}\n{KEY}\n").as_bytes()),
        ("binary", &b"\xff\x00\x01"[..]),
        ("empty", b""),
    ] {
        let message = load(&scratch.file(name, contents, 0o600), PasswordSource::None).unwrap_err().to_string();
        assert!(message.contains("expected 64 hex digits"), "{name}: {message}");
        assert!(!message.contains(&KEY[..16]), "{name}: {message}");
    }
    let error = load(&scratch.file("garbage.json", b"{\"hello\": [1, 2", 0o600), PasswordSource::Given(Password::from("x"))).unwrap_err();
    assert!(error.to_string().contains("not a Web3 Secret Storage v3 keystore"), "{error}");
    let big = vec![b'a'; 70_000];
    assert!(matches!(load(&scratch.file("big", &big, 0o600), PasswordSource::None), Err(KeyFileError::TooLarge { .. })));
    assert!(matches!(load(&scratch.0, PasswordSource::None), Err(KeyFileError::NotAFile { .. })));
    let missing = load(&scratch.0.join("missing"), PasswordSource::None).unwrap_err().to_string();
    assert!(missing.starts_with("cannot open key file ") && missing.contains("No such file"), "{missing}");
}

// Goal: a new key file is 0600, an existing one is never overwritten (O_EXCL) unless
// Replace::Yes, and replacing leaves a 0600 file and no temporary behind.
#[test]
fn writing_is_exclusive_and_private() {
    let scratch = Scratch::new();
    let path = scratch.0.join("node.key");
    write_private_file(&path, b"first\n", Replace::No).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    let error = write_private_file(&path, b"second\n", Replace::No).unwrap_err();
    assert!(matches!(error, KeyFileError::Exists { .. }), "{error}");
    assert!(error.to_string().contains("already exists: not overwriting it"));
    assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_private_file(&path, b"second\n", Replace::Yes).unwrap();
    assert_eq!((std::fs::read(&path).unwrap(), mode_of(&path)), (b"second\n".to_vec(), 0o600));
    assert_eq!(std::fs::read_dir(&scratch.0).unwrap().count(), 1, "no temporary file left");
    // A symlink planted at the path is not followed.
    let target = scratch.file("target", b"", 0o600);
    let link = scratch.0.join("link.key");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(matches!(write_private_file(&link, b"key", Replace::No), Err(KeyFileError::Exists { .. })));
    assert_eq!(std::fs::read(&target).unwrap(), b"");
    // A path that names no file is an error, not a write to the directory.
    assert!(write_private_file(Path::new(""), b"key", Replace::No).is_err());
}

// Goal: the private temporary directory is 0700 and new each time.
#[test]
fn private_temp_dirs() {
    let (a, b) = (Scratch::new(), Scratch::new());
    assert_ne!(a.0, b.0);
    assert_eq!(mode_of(&a.0), 0o700);
    let nested = a.0.join("x/y");
    runnel_keystore::create_private_dir_all(&nested).unwrap();
    assert_eq!((mode_of(&a.0.join("x")), mode_of(&nested)), (0o700, 0o700));
}
