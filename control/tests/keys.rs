//! The key handling of the `runnel` command, end to end: `runnel keygen` writes keys to
//! private files and prints only addresses, `runnel pub --key-file` reads plain files and
//! keystores (and refuses files others can read), `runnel dev` keeps its link keys in
//! private files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Web3 Secret Storage Definition's PBKDF2 test vector (password "testpassword"); its
/// key 7a28b5ba…14fe9d is the account below.
const PBKDF2_VECTOR: &str = r#"{"crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"6087dab2f9fdbbfaddc31a909735c1e6"},
"ciphertext":"5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46","kdf":"pbkdf2","kdfparams":{"c":262144,
"dklen":32,"prf":"hmac-sha256","salt":"ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},
"mac":"517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"},"id":"3198bc9c-6672-5ab3-d995-4942343ae5b6","version":3}"#;
const VECTOR_ADDRESS: &str = "0x008aeeda4d805471df9b2a5b0f38a0c3bcba786b";
const STREAM: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266/keys-test#0";

/// A 0700 scratch folder of this test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("runnel-keys-test-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&path).ok();
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Self(path)
    }

    fn file(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A client link to a port nothing listens on: enough for `runnel pub` to load its key
    /// and send one message into the void.
    fn dead_link(&self) -> PathBuf {
        self.file("link.toml", &format!("node = \"127.0.0.1:9\"\nnode_shards = 1\nlink_id = 1\nkey = \"{}\"\n", "11".repeat(32)), 0o600)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn runnel(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runnel"));
    command.args(args).env_remove("RUNNEL_KEYSTORE_PASSWORD").env_remove("RUNNEL_PRIVATE_KEY");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("runnel starts")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `runnel pub --count 1` with `key_args`; the address it says it publishes as, or stderr.
fn publish_as(scratch: &Scratch, key_args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let link = scratch.dead_link();
    let mut args = vec!["pub", "--link", link.to_str().unwrap(), "--stream", STREAM, "--count", "1"];
    args.extend_from_slice(key_args);
    let output = runnel(&args, env);
    let stderr = text(&output.stderr);
    if !output.status.success() {
        return Err(stderr);
    }
    let address = stderr.split(" as ").nth(1).and_then(|rest| rest.split_whitespace().next());
    Ok(address.unwrap_or_else(|| panic!("no address in: {stderr}")).to_string())
}

// Goal: `runnel keygen` refuses to print a publisher key; with --out it writes a 0600 file,
// prints only address and path, never overwrites without --force, and the key it wrote is
// the address it printed.
#[test]
fn keygen_writes_a_private_file_and_prints_only_the_address() {
    let scratch = Scratch::new("keygen");
    let refused = runnel(&["keygen"], &[]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty(), "printed: {}", text(&refused.stdout));
    assert!(text(&refused.stderr).contains("give --out FILE"), "{}", text(&refused.stderr));

    let path = scratch.0.join("node.key");
    let output = runnel(&["keygen", "--out", path.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(mode_of(&path), 0o600);
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!((key.len(), key.ends_with('\n')), (65, true));
    assert!(!text(&output.stdout).contains(key.trim()) && !text(&output.stderr).contains(key.trim()));
    assert_eq!(printed["key_file"], path.to_str().unwrap());
    assert_eq!(printed["format"], "plain");
    let address = printed["address"].as_str().unwrap().to_string();
    assert_eq!(publish_as(&scratch, &["--key-file", path.to_str().unwrap()], &[]).unwrap(), address);

    let again = runnel(&["keygen", "--out", path.to_str().unwrap()], &[]);
    assert!(!again.status.success() && text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key, "not overwritten");
    let forced = runnel(&["keygen", "--out", path.to_str().unwrap(), "--force"], &[]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read_to_string(&path).unwrap(), key);
    assert_eq!(mode_of(&path), 0o600);

    // Link keys are printed (config files embed them), or written like publisher keys.
    let link = runnel(&["keygen", "--link"], &[]);
    assert_eq!(text(&link.stdout).trim().len(), 64);
    let link_path = scratch.0.join("link.key");
    assert!(runnel(&["keygen", "--link", "--out", link_path.to_str().unwrap()], &[]).status.success());
    assert_eq!(mode_of(&link_path), 0o600);
}

// Goal: a keystore written by `runnel keygen --keystore` is read back by `runnel pub` with
// the password from the environment or a file; a wrong password is a MAC mismatch.
#[test]
fn keystore_round_trip_through_the_cli() {
    let scratch = Scratch::new("keystore");
    let path = scratch.0.join("node.json");
    let password = [("RUNNEL_KEYSTORE_PASSWORD", "open sesame")];
    let missing = runnel(&["keygen", "--keystore", "--light-kdf", "--out", path.to_str().unwrap()], &[]);
    assert!(!missing.status.success() && text(&missing.stderr).contains("RUNNEL_KEYSTORE_PASSWORD"));
    let output = runnel(&["keygen", "--keystore", "--light-kdf", "--out", path.to_str().unwrap()], &password);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(mode_of(&path), 0o600);
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let keystore: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let address = printed["address"].as_str().unwrap();
    assert_eq!(format!("0x{}", keystore["address"].as_str().unwrap()), address);
    assert_eq!(keystore["crypto"]["kdf"], "scrypt");

    let key_file = ["--key-file", path.to_str().unwrap()];
    assert_eq!(publish_as(&scratch, &key_file, &password).unwrap(), address);
    let password_file = scratch.file("password", "open sesame\n", 0o600);
    let with_file = [&key_file[..], &["--password-file", password_file.to_str().unwrap()]].concat();
    assert_eq!(publish_as(&scratch, &with_file, &[]).unwrap(), address);
    let error = publish_as(&scratch, &key_file, &[("RUNNEL_KEYSTORE_PASSWORD", "open sesame!")]).unwrap_err();
    assert!(error.contains("MAC mismatch: wrong password"), "{error}");
    let error = publish_as(&scratch, &key_file, &[]).unwrap_err();
    assert!(error.contains("is an encrypted keystore: give its password"), "{error}");
}

// Goal: `runnel pub --key-file` reads the Web3 Secret Storage test vector as the account its
// key is, and refuses a keystore whose address field names another account.
#[test]
fn the_test_vector_is_its_account() {
    let scratch = Scratch::new("vector");
    let vector = scratch.file("vector.json", PBKDF2_VECTOR, 0o600);
    let password = [("RUNNEL_KEYSTORE_PASSWORD", "testpassword")];
    assert_eq!(publish_as(&scratch, &["--key-file", vector.to_str().unwrap()], &password).unwrap(), VECTOR_ADDRESS);
    let lying = PBKDF2_VECTOR.replacen('{', "{\"address\":\"f39fd6e51aad88f6f4ce6ab8827279cfffb92266\",", 1);
    let lying = scratch.file("lying.json", &lying, 0o600);
    let error = publish_as(&scratch, &["--key-file", lying.to_str().unwrap()], &password).unwrap_err();
    assert!(error.contains("address field says 0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"), "{error}");
}

// Goal: like ssh, `runnel pub` refuses a key file group or others can read, and says how to
// fix it; plain hex, the old keygen JSON and $RUNNEL_PRIVATE_KEY still work.
#[test]
fn pub_refuses_readable_key_files_and_accepts_the_old_formats() {
    let scratch = Scratch::new("pub");
    let key = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    let anvil_address = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
    let open = scratch.file("open.key", key, 0o644);
    let error = publish_as(&scratch, &["--key-file", open.to_str().unwrap()], &[]).unwrap_err();
    assert!(error.contains(&format!("is accessible by group or others (mode 0644); run: chmod 600 {}", open.display())), "{error}");
    assert!(!error.contains(key));
    let plain = scratch.file("plain.key", &format!("0x{key}\n"), 0o600);
    assert_eq!(publish_as(&scratch, &["--key-file", plain.to_str().unwrap()], &[]).unwrap(), anvil_address);
    let legacy = scratch.file("legacy.json", &format!("{{\"address\":\"{anvil_address}\",\"private_key\":\"0x{key}\"}}\n"), 0o600);
    assert_eq!(publish_as(&scratch, &["--key-file", legacy.to_str().unwrap()], &[]).unwrap(), anvil_address);
    assert_eq!(publish_as(&scratch, &[], &[("RUNNEL_PRIVATE_KEY", key)]).unwrap(), anvil_address);
}

// Goal: `runnel dev` writes its nodes' identity keys (and configs and logs) only into 0600
// files inside a 0700 folder (its own under the temporary directory, or --dir), and prints
// none of the keys.
#[test]
fn dev_keeps_link_keys_private() {
    let scratch = Scratch::new("dev");
    let given = scratch.0.join("given/dev");
    for dir_args in [vec![], vec!["--dir".to_string(), given.to_str().unwrap().to_string()]] {
        let mut args = vec!["dev", "--nodes", "2", "--rate", "100", "--duration", "1", "--json"];
        args.extend(dir_args.iter().map(String::as_str));
        let output = runnel(&args, &[]);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(output.status.success(), "{stderr}");
        let dir = stderr.split("keys and logs in ").nth(1).and_then(|rest| rest.lines().next()).expect("configs folder named");
        let dir = PathBuf::from(dir);
        assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sock") {
                continue; // the dataplanes' command sockets, if still there
            }
            assert_eq!(mode_of(&path), 0o600, "{}", path.display());
            let contents = std::fs::read_to_string(&path).unwrap();
            if path.extension().is_some_and(|e| e == "key") {
                let key = contents.trim().trim_start_matches("0x");
                assert_eq!(key.len(), 64, "{}", path.display());
                assert!(!stdout.contains(key) && !stderr.contains(key), "{} was printed", path.display());
            }
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        names.sort();
        let expected = ["node0.key", "node0.log", "node0.toml", "node1.key", "node1.log", "node1.toml"];
        assert_eq!(names, expected, "in {}", dir.display());
        if dir_args.is_empty() {
            assert!(dir.starts_with(std::env::temp_dir()));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    assert_eq!(mode_of(&scratch.0.join("given")), 0o700, "missing parents of --dir are private too");
}
