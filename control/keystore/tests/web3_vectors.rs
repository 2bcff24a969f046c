//! The keystore decoder and encoder against the Web3 Secret Storage Definition's test
//! vectors, and against every kind of bad input: wrong password, altered ciphertext,
//! unsupported or absurd parameters, garbage.

use runnel_keystore::{decode, encode, KeystoreError, Limits, Password, Randomness, ScryptCost, Secret};
use std::time::{Duration, Instant};

/// The private key both test vectors hold (password "testpassword").
const VECTOR_KEY: &str = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";

/// "Test vectors" → "PBKDF2-SHA-256" of the Web3 Secret Storage Definition.
const PBKDF2_VECTOR: &str = r#"{
    "crypto" : {
        "cipher" : "aes-128-ctr",
        "cipherparams" : { "iv" : "6087dab2f9fdbbfaddc31a909735c1e6" },
        "ciphertext" : "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf" : "pbkdf2",
        "kdfparams" : {
            "c" : 262144,
            "dklen" : 32,
            "prf" : "hmac-sha256",
            "salt" : "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"
        },
        "mac" : "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"
    },
    "id" : "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version" : 3
}"#;

/// "Test vectors" → "Scrypt" of the Web3 Secret Storage Definition (note r = 1, p = 8).
const SCRYPT_VECTOR: &str = r#"{
    "crypto" : {
        "cipher" : "aes-128-ctr",
        "cipherparams" : { "iv" : "83dbcc02d8ccb40e466191a123791e0e" },
        "ciphertext" : "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
        "kdf" : "scrypt",
        "kdfparams" : {
            "dklen" : 32,
            "n" : 262144,
            "p" : 8,
            "r" : 1,
            "salt" : "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19"
        },
        "mac" : "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097"
    },
    "id" : "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version" : 3
}"#;

fn password() -> Password {
    Password::from("testpassword")
}

fn decode_default(json: &str, password: &Password) -> Result<runnel_keystore::Unlocked, KeystoreError> {
    decode(json.as_bytes(), password, &Limits::DEFAULT)
}

fn hex_of(secret: &Secret) -> String {
    hex::encode(secret.expose())
}

/// A keystore cheap to decode (n = 2^4), for the tests of everything but the KDF.
fn cheap_keystore() -> serde_json::Value {
    let secret = Secret::from_hex(VECTOR_KEY).unwrap();
    let randomness = Randomness { salt: [7; 32], iv: [9; 16], uuid: [1; 16] };
    let json = encode(&secret, Some(&[0x8a; 20]), &password(), ScryptCost { log_n: 4, r: 8, p: 1 }, &randomness).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn decode_value(value: &serde_json::Value) -> Result<runnel_keystore::Unlocked, KeystoreError> {
    decode_default(&value.to_string(), &password())
}

// Goal: the official PBKDF2 vector decrypts to the official key (so PBKDF2-HMAC-SHA256, the
// MAC and AES-128-CTR all match the definition).
#[test]
fn pbkdf2_vector_decrypts() {
    let unlocked = decode_default(PBKDF2_VECTOR, &password()).unwrap();
    assert_eq!(hex_of(&unlocked.secret), VECTOR_KEY);
    assert_eq!(unlocked.address, None);
}

// Goal: the official scrypt vector decrypts to the official key. Its n = 2^18 with r = 1 is
// what the RFC 7914 erratum is about: scrypt crates before 0.12 refused it, geth does not.
#[test]
fn scrypt_vector_decrypts() {
    let unlocked = decode_default(SCRYPT_VECTOR, &password()).unwrap();
    assert_eq!(hex_of(&unlocked.secret), VECTOR_KEY);
}

// Goal: encode is the inverse of the definition: with the scrypt vector's salt, IV and
// parameters it produces the vector's ciphertext and MAC byte for byte.
#[test]
fn encode_reproduces_the_scrypt_vector() {
    let hex16 = |text: &str| -> [u8; 16] { hex::decode(text).unwrap().try_into().unwrap() };
    let randomness = Randomness {
        salt: hex::decode("ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19").unwrap().try_into().unwrap(),
        iv: hex16("83dbcc02d8ccb40e466191a123791e0e"),
        uuid: [0; 16],
    };
    let secret = Secret::from_hex(VECTOR_KEY).unwrap();
    let json = encode(&secret, None, &password(), ScryptCost { log_n: 18, r: 1, p: 8 }, &randomness).unwrap();
    let ours: serde_json::Value = serde_json::from_str(&json).unwrap();
    let vector: serde_json::Value = serde_json::from_str(SCRYPT_VECTOR).unwrap();
    for field in ["ciphertext", "mac", "cipher", "kdf", "cipherparams", "kdfparams"] {
        assert_eq!(ours["crypto"][field], vector["crypto"][field], "crypto.{field}");
    }
    assert_eq!(ours["version"], 3);
    assert!(ours.get("address").is_none());
}

// Goal: what encode writes decodes back, with geth's layout: address lower-case hex without
// 0x, dklen 32, a version 4 UUID id.
#[test]
fn round_trip_with_address() {
    let secret = Secret::from_bytes([0x5c; 32]);
    let address: [u8; 20] = hex::decode("008AEEDA4D805471DF9B2A5B0F38A0C3BCBA786B".to_lowercase()).unwrap().try_into().unwrap();
    let password = Password::from("correct horse battery staple");
    let json = runnel_keystore::encrypt(&secret, Some(&address), &password, ScryptCost::LIGHT).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["address"], "008aeeda4d805471df9b2a5b0f38a0c3bcba786b");
    assert_eq!(value["crypto"]["kdfparams"]["n"], 4096);
    assert_eq!(value["crypto"]["kdfparams"]["p"], 6);
    assert_eq!(value["crypto"]["kdfparams"]["dklen"], 32);
    let id = value["id"].as_str().unwrap();
    assert_eq!((id.len(), &id[14..15]), (36, "4"), "{id}");
    let unlocked = decode_default(&json, &password).unwrap();
    assert_eq!(unlocked.secret.expose(), &[0x5c; 32]);
    assert_eq!(unlocked.address, Some(address));
    // Fresh randomness every time.
    let again = runnel_keystore::encrypt(&secret, Some(&address), &password, ScryptCost::LIGHT).unwrap();
    assert_ne!(json, again);
}

// Goal: a wrong password is reported as a MAC mismatch, for both KDFs.
#[test]
fn wrong_password_is_a_mac_mismatch() {
    for vector in [PBKDF2_VECTOR, SCRYPT_VECTOR] {
        let error = decode_default(vector, &Password::from("testpassword!")).unwrap_err();
        assert_eq!(error, KeystoreError::WrongPassword);
        assert!(error.to_string().contains("wrong password"), "{error}");
    }
}

// Goal: a ciphertext or MAC altered in one bit is refused, never decrypted to another key.
#[test]
fn tampered_keystore_is_refused() {
    let keystore = cheap_keystore();
    assert!(decode_value(&keystore).is_ok());
    for field in ["ciphertext", "mac"] {
        let mut tampered = keystore.clone();
        let text = tampered["crypto"][field].as_str().unwrap().to_string();
        let flipped = format!("{}{}", if text.starts_with('0') { '1' } else { '0' }, &text[1..]);
        tampered["crypto"][field] = flipped.into();
        assert_eq!(decode_value(&tampered).unwrap_err(), KeystoreError::WrongPassword, "{field}");
    }
    // The salt and the IV: the salt changes the derived key (MAC mismatch), the IV is not
    // covered by the MAC (as in geth) and yields a different plaintext: the caller's address
    // check catches that (docs/keys.md).
    let mut tampered = keystore.clone();
    tampered["crypto"]["kdfparams"]["salt"] = hex::encode([8u8; 32]).into();
    assert_eq!(decode_value(&tampered).unwrap_err(), KeystoreError::WrongPassword);
    let mut tampered = keystore.clone();
    tampered["crypto"]["cipherparams"]["iv"] = hex::encode([10u8; 16]).into();
    assert_ne!(hex_of(&decode_value(&tampered).unwrap().secret), VECTOR_KEY);
}

// Goal: KDF parameters that would cost too much are refused before any work, with a message
// naming the field; within the default limits geth's own parameters pass.
#[test]
fn absurd_kdf_parameters_are_refused_quickly() {
    let keystore = cheap_keystore();
    // Each case sets one field (n = 2^20 stays for the work bound's case).
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("n", (1u64 << 21).into(), "crypto.kdfparams.n: is 2^21, above the limit 2^20"),
        ("n", (1u64 << 63).into(), "above the limit"),
        ("n", 3.into(), "power of two"),
        ("n", 1.into(), "power of two"),
        ("n", 0.into(), "power of two"),
        ("r", 0.into(), "crypto.kdfparams.r: must be at least 1"),
        ("p", 0.into(), "crypto.kdfparams.p: must be at least 1"),
        ("r", (1u64 << 20).into(), "above the limit"),
        ("p", (1u64 << 40).into(), "r · p"),
        ("p", 2.into(), "n · r · p = 16777216 is above the limit 8388608"),
        ("dklen", 16.into(), "crypto.kdfparams.dklen: is 16"),
        ("n", (-1).into(), "crypto.kdfparams"),
        ("n", 262144.5.into(), "crypto.kdfparams"),
        ("salt", "zz".into(), "crypto.kdfparams.salt: not hex"),
    ];
    for (field, value, expected) in cases {
        let mut bad = keystore.clone();
        if expected.starts_with("n · r · p") {
            bad["crypto"]["kdfparams"]["n"] = (1u64 << 20).into();
        }
        bad["crypto"]["kdfparams"][field] = value.clone();
        let started = Instant::now();
        let error = decode_value(&bad).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_millis(100), "{field} = {value} took {:?}", started.elapsed());
        assert!(error.contains(expected), "{field} = {value}: {error}");
    }
    // PBKDF2's iteration count.
    let mut pbkdf2: serde_json::Value = serde_json::from_str(PBKDF2_VECTOR).unwrap();
    for (c, expected) in [(0u64, "is 0"), ((1 << 22) + 1, "it must be 1..=4194304"), (u64::MAX, "it must be")] {
        pbkdf2["crypto"]["kdfparams"]["c"] = c.into();
        let error = decode_value(&pbkdf2).unwrap_err().to_string();
        assert!(error.contains("crypto.kdfparams.c") && error.contains(expected), "c = {c}: {error}");
    }
    pbkdf2["crypto"]["kdfparams"]["c"] = 262144.into();
    pbkdf2["crypto"]["kdfparams"]["prf"] = "hmac-sha512".into();
    assert_eq!(decode_value(&pbkdf2).unwrap_err(), KeystoreError::Prf("hmac-sha512".into()));
    // Lower limits (the fuzz target's) refuse even the standard cost.
    let tight = Limits { scrypt_log_n_max: 10, ..Limits::DEFAULT };
    let error = decode(SCRYPT_VECTOR.as_bytes(), &password(), &tight).unwrap_err();
    assert!(error.to_string().contains("2^18, above the limit 2^10"), "{error}");
}

// Goal: unsupported versions, ciphers and KDFs, and malformed fields, each give their own
// error; "Crypto" (old geth) is accepted like "crypto".
#[test]
fn unsupported_and_malformed_fields() {
    let keystore = cheap_keystore();
    let with = |path: &[&str], value: serde_json::Value| {
        let mut changed = keystore.clone();
        let mut slot = &mut changed;
        for key in path {
            slot = &mut slot[*key];
        }
        *slot = value;
        decode_value(&changed).unwrap_err().to_string()
    };
    assert_eq!(with(&["version"], 1.into()), "keystore version 1: only version 3 is supported");
    assert!(with(&["version"], "3".into()).contains("version \"3\""));
    assert!(with(&["crypto", "cipher"], "aes-128-cbc".into()).contains("only \"aes-128-ctr\""));
    assert!(with(&["crypto", "kdf"], "argon2id".into()).contains("only \"scrypt\" and \"pbkdf2\""));
    assert!(with(&["crypto", "cipherparams", "iv"], "00ff".into()).contains("crypto.cipherparams.iv: is 2 bytes; it must be 16"));
    assert!(with(&["crypto", "ciphertext"], hex::encode([1u8; 33]).into()).contains("crypto.ciphertext: is 33 bytes; it must be 32"));
    assert!(with(&["crypto", "mac"], "not hex".into()).contains("crypto.mac: not hex"));
    assert!(with(&["address"], "0x1234".into()).contains("address: is 2 bytes; it must be 20"));
    assert!(with(&["crypto", "kdfparams"], serde_json::json!([])).contains("crypto.kdfparams"));
    let mut capitalised = keystore.as_object().unwrap().clone();
    let crypto = capitalised.remove("crypto").unwrap();
    capitalised.insert("Crypto".into(), crypto);
    assert!(decode_value(&serde_json::Value::Object(capitalised)).is_ok());
    let mut no_address = keystore.clone();
    no_address.as_object_mut().unwrap().remove("address");
    assert_eq!(decode_value(&no_address).unwrap().address, None);
}

// Goal: garbage of every shape is an error, never a panic or a long computation.
#[test]
fn garbage_is_an_error() {
    let deep = "[".repeat(100_000);
    let inputs: Vec<&[u8]> = vec![
        b"",
        b"null",
        b"{}",
        b"[]",
        b"3",
        b"\xff\xfe{",
        b"{\"version\":3}",
        b"{\"version\":3,\"crypto\":{}}",
        b"{\"version\":3,\"crypto\":null}",
        b"{\"version\":3,\"crypto\":{\"cipher\":1}}",
        deep.as_bytes(),
        &PBKDF2_VECTOR.as_bytes()[..PBKDF2_VECTOR.len() / 2],
    ];
    for input in inputs {
        let started = Instant::now();
        let error = decode(input, &password(), &Limits::DEFAULT).unwrap_err();
        assert!(matches!(error, KeystoreError::Json(_)), "{:?}: {error}", String::from_utf8_lossy(&input[..input.len().min(40)]));
        assert!(error.to_string().starts_with("not a Web3 Secret Storage v3 keystore"), "{error}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}

// Goal: encode refuses parameters that decode would refuse (what we write, we can read).
#[test]
fn encode_stays_within_the_default_limits() {
    let secret = Secret::from_bytes([1; 32]);
    let randomness = Randomness { salt: [0; 32], iv: [0; 16], uuid: [0; 16] };
    for cost in [
        ScryptCost { log_n: 21, r: 8, p: 1 },
        ScryptCost { log_n: 0, r: 8, p: 1 },
        ScryptCost { log_n: 64, r: 8, p: 1 },
        ScryptCost { log_n: 10, r: 0, p: 1 },
    ] {
        assert!(matches!(encode(&secret, None, &password(), cost, &randomness), Err(KeystoreError::KdfParameter { .. })), "{cost:?}");
    }
}
