//! Fuzz target `keystore`: the Web3 Secret Storage decoder over arbitrary bytes.
//!
//! A key file may come from anywhere, and its KDF parameters choose how much memory and
//! time decoding takes: decoding must never panic and must stay within its [`Limits`]. The
//! limits here are tight (n ≤ 2^10, 1 MiB, PBKDF2 ≤ 4096 rounds) so that no input can take
//! long and libFuzzer's `-timeout` would catch one that ignored them.
//!
//! Two ways in, chosen by the first byte, so that the KDF, MAC and cipher paths are reached
//! without a seed corpus: even, the rest is the JSON as it is; odd, the rest replaces one
//! field (chosen by the second byte) of a valid cheap keystore, as JSON if it parses and as
//! a string otherwise.
//!
//! Oracles: a keystore that decodes is re-encoded (with its own address) and decodes again
//! to the same secret and address; the scrypt template decodes to its secret.

#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_keystore::{decode, encode, Limits, Password, Randomness, ScryptCost, Secret};
use std::sync::OnceLock;

const LIMITS: Limits = Limits {
    scrypt_log_n_max: 10,
    scrypt_memory_bytes_max: 1 << 20,
    scrypt_work_max: 1 << 14,
    scrypt_rp_max: 64,
    pbkdf2_iterations_max: 1 << 12,
};
const SECRET: [u8; 32] = [0x42; 32];
const PASSWORD: &str = "fuzz";

/// Fields the structured mode may replace.
const FIELDS: &[&[&str]] = &[
    &["version"],
    &["address"],
    &["crypto", "cipher"],
    &["crypto", "cipherparams", "iv"],
    &["crypto", "ciphertext"],
    &["crypto", "kdf"],
    &["crypto", "kdfparams"],
    &["crypto", "kdfparams", "n"],
    &["crypto", "kdfparams", "r"],
    &["crypto", "kdfparams", "p"],
    &["crypto", "kdfparams", "dklen"],
    &["crypto", "kdfparams", "salt"],
    &["crypto", "kdfparams", "c"],
    &["crypto", "kdfparams", "prf"],
    &["crypto", "mac"],
    &["crypto"],
];

/// A valid scrypt keystore (n = 16) and a PBKDF2 variant of it.
fn templates() -> &'static [serde_json::Value; 2] {
    static TEMPLATES: OnceLock<[serde_json::Value; 2]> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let randomness = Randomness { salt: [1; 32], iv: [2; 16], uuid: [3; 16] };
        let json = encode(
            &Secret::from_bytes(SECRET),
            Some(&[0x8a; 20]),
            &Password::from(PASSWORD),
            ScryptCost { log_n: 4, r: 8, p: 1 },
            &randomness,
        )
        .expect("a cheap keystore encodes");
        let scrypt: serde_json::Value = serde_json::from_str(&json).expect("encode writes JSON");
        let unlocked = decode(json.as_bytes(), &Password::from(PASSWORD), &LIMITS).expect("the template decodes");
        assert_eq!(unlocked.secret.expose(), &SECRET);
        // The same fields under PBKDF2 (16 rounds): its MAC does not match, but it takes
        // inputs through PBKDF2's parameter checks and derivation to the MAC check.
        let mut pbkdf2 = scrypt.clone();
        pbkdf2["crypto"]["kdf"] = "pbkdf2".into();
        pbkdf2["crypto"]["kdfparams"] = serde_json::json!({ "c": 16, "dklen": 32, "prf": "hmac-sha256", "salt": hex::encode([1u8; 32]) });
        [scrypt, pbkdf2]
    })
}

fn structured(data: &[u8]) -> Option<Vec<u8>> {
    let (&selector, rest) = data.split_first()?;
    let mut keystore = templates()[usize::from(selector >> 7)].clone();
    let mut slot = &mut keystore;
    for key in FIELDS[usize::from(selector & 0x7f) % FIELDS.len()] {
        slot = &mut slot[*key];
    }
    *slot = serde_json::from_slice(rest).unwrap_or_else(|_| String::from_utf8_lossy(rest).into_owned().into());
    serde_json::to_vec(&keystore).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = if mode & 1 == 0 {
        rest.to_vec()
    } else if let Some(json) = structured(rest) {
        json
    } else {
        return;
    };
    let password = Password::from(PASSWORD);
    let Ok(unlocked) = decode(&input, &password, &LIMITS) else {
        return;
    };
    let randomness = Randomness { salt: [4; 32], iv: [5; 16], uuid: [6; 16] };
    let again = encode(&unlocked.secret, unlocked.address.as_ref(), &password, ScryptCost { log_n: 4, r: 1, p: 1 }, &randomness)
        .expect("cheap parameters encode");
    let decoded = decode(again.as_bytes(), &password, &LIMITS).expect("what encode writes decodes");
    assert_eq!(decoded.secret.expose(), unlocked.secret.expose());
    assert_eq!(decoded.address, unlocked.address);
});
