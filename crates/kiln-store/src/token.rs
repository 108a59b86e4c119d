//! API token secrets: how a token is drawn, how it is hashed for storage, and which preseeded
//! values are acceptable. The queries are in `backend/tokens_body.rs`.
//!
//! A token is 256 bits from the operating system's random source, written `kiln_` + 64
//! lowercase hex digits; the store keeps only the SHA-256 (lowercase hex) of the whole
//! string. A plain hash is enough: the secret has full entropy, so there is nothing for a
//! slow password hash to protect.

use sha2::{Digest as _, Sha256};

use crate::error::StoreError;

/// What every generated token starts with, so that scanners and people recognise one.
pub(crate) const PREFIX: &str = "kiln_";

/// The shortest preseeded token accepted (`KILN_ADMIN_TOKEN`).
pub(crate) const MIN_PRESEED_LEN: usize = 32;

/// A new random token.
pub(crate) fn generate() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random {
        detail: e.to_string(),
    })?;
    Ok(format!("{PREFIX}{}", hex::encode(bytes)))
}

/// What the store keeps of `plaintext`.
pub(crate) fn hash(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// Checks an operator-chosen token: long enough to be a secret, and nothing that a header or
/// a shell would mangle.
pub(crate) fn check_preseed(plaintext: &str) -> Result<(), StoreError> {
    let bad = |reason: String| Err(StoreError::BadToken { reason });
    if plaintext.len() < MIN_PRESEED_LEN {
        return bad(format!(
            "it has {} characters; use at least {MIN_PRESEED_LEN} (e.g. `openssl rand -hex 32`)",
            plaintext.len()
        ));
    }
    if let Some(c) = plaintext.chars().find(|c| !c.is_ascii_graphic()) {
        return bad(format!(
            "it contains {c:?}; use printable ASCII without spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_hex_and_differ() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        let hex_part = a.strip_prefix(PREFIX).unwrap();
        assert_eq!(hex_part.len(), 64);
        assert!(hex_part.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn preseeds_must_be_long_printable_ascii() {
        assert!(check_preseed(&"x".repeat(32)).is_ok());
        let short = check_preseed("secret").unwrap_err().to_string();
        assert!(short.contains("6 characters"), "{short}");
        let spaced = check_preseed(&format!("{} x", "a".repeat(40)))
            .unwrap_err()
            .to_string();
        assert!(spaced.contains("' '"), "{spaced}");
    }
}
