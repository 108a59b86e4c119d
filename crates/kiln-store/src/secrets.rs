//! Secrets at rest: webhook and receiver secrets are sealed with XChaCha20-Poly1305 under
//! versioned keys before they reach the database, and opened when the store reads them.
//!
//! A sealed value is the text `sealed:` followed by the hex of one key-version byte, a random
//! 24-byte nonce and the ciphertext with its tag; what it belongs to (`hook:<project>`,
//! `receiver:<id>`) is the associated data, so a sealed value copied onto another row does not
//! open. Rotation: a new key gets a higher version and becomes the one that seals; older keys
//! stay listed so what they sealed still opens, and the store re-seals such values under the
//! current key when it opens.
//!
//! Where the keys come from ([`SecretKeys::resolve`]), first found wins:
//! 1. `KILN__SECRETS__KEY`: the keys themselves;
//! 2. `KILN__SECRETS__KEY_FILE`: a file holding them;
//! 3. `<data dir>/secrets.key`;
//! 4. the embedded default (SQLite) only: a new key written to `<data dir>/secrets.key`.
//!
//! PostgreSQL stores are shared by replicas, which must all hold the same keys, so kiln never
//! makes one up for them. Keys are written `KEY` (version 1) or `VERSION:KEY,VERSION:KEY…`,
//! each KEY 64 hex digits (32 bytes); the highest version seals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::StoreError;

/// The prefix of a sealed value. Anything else in a secret column is a value stored before
/// sealing existed, read as it is (and sealed when the store next opens).
pub(crate) const SEALED: &str = "sealed:";
const NONCE_LEN: usize = 24;
/// The environment variable holding the keys.
pub const KEY_ENV: &str = "KILN__SECRETS__KEY";
/// The environment variable naming a file that holds the keys.
pub const KEY_FILE_ENV: &str = "KILN__SECRETS__KEY_FILE";
/// The key file in a data dir.
pub const KEY_FILE_NAME: &str = "secrets.key";

/// The keys secrets are sealed and opened with.
pub struct SecretKeys {
    current: u8,
    keys: BTreeMap<u8, Zeroizing<[u8; 32]>>,
    /// Where they came from, for messages.
    source: String,
}

impl std::fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeys")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl SecretKeys {
    /// One new random key, version 1.
    pub fn generate() -> Result<Self, StoreError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *key)
            .map_err(|e| StoreError::Secrets(format!("no randomness: {e}")))?;
        Ok(Self {
            current: 1,
            keys: BTreeMap::from([(1, key)]),
            source: "a generated key".to_owned(),
        })
    }

    /// Reads `KEY` or `VERSION:KEY,VERSION:KEY…`; `source` names where the text came from.
    pub fn parse(text: &str, source: &str) -> Result<Self, StoreError> {
        let bad = |why: String| StoreError::Secrets(format!("{source}: {why}"));
        let mut keys = BTreeMap::new();
        let entries: Vec<&str> = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Err(bad("no key in it".to_owned()));
        }
        for entry in entries {
            let (version, hex_key) =
                match entry.split_once(':') {
                    Some((v, k)) => {
                        let v: u8 =
                            v.trim().parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                                bad(format!("`{v}` is not a key version (1 to 255)"))
                            })?;
                        (v, k.trim())
                    }
                    None if keys.is_empty() => (1, entry),
                    None => {
                        return Err(bad(
                            "with several keys, each needs its version: `VERSION:KEY`".to_owned(),
                        ));
                    }
                };
            let mut key = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(hex_key, &mut *key).map_err(|_| {
                bad(format!(
                    "the key of version {version} is not 64 hex digits (32 bytes)"
                ))
            })?;
            if keys.insert(version, key).is_some() {
                return Err(bad(format!("version {version} is given twice")));
            }
        }
        let current = keys.keys().next_back().copied().unwrap_or(1);
        Ok(Self {
            current,
            keys,
            source: source.to_owned(),
        })
    }

    /// The keys as [`parse`](Self::parse) reads them.
    pub fn to_text(&self) -> Zeroizing<String> {
        let entries: Vec<String> = self
            .keys
            .iter()
            .map(|(v, k)| format!("{v}:{}", hex::encode(k.as_slice())))
            .collect();
        Zeroizing::new(entries.join(","))
    }

    /// The keys for a store in `data_dir` (see the module's documentation for the order).
    /// `Ok(None)`: none is configured and `embedded` is false (a PostgreSQL store).
    pub fn resolve(data_dir: &Path, embedded: bool) -> Result<Option<Self>, StoreError> {
        if let Ok(text) = std::env::var(KEY_ENV)
            && !text.trim().is_empty()
        {
            return Self::parse(&text, KEY_ENV).map(Some);
        }
        if let Ok(path) = std::env::var(KEY_FILE_ENV)
            && !path.trim().is_empty()
        {
            let path = PathBuf::from(path);
            return Self::read_file(&path, &format!("{KEY_FILE_ENV} ({})", path.display()))
                .map(Some);
        }
        let path = data_dir.join(KEY_FILE_NAME);
        if path.exists() {
            return Self::read_file(&path, &path.display().to_string()).map(Some);
        }
        if !embedded {
            return Ok(None);
        }
        let keys = Self::generate()?;
        keys.write_file(&path)?;
        Ok(Some(Self {
            source: path.display().to_string(),
            ..keys
        }))
    }

    fn read_file(path: &Path, source: &str) -> Result<Self, StoreError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            StoreError::Secrets(format!("cannot read the secrets key file {source}: {e}"))
        })?);
        Self::parse(&text, source)
    }

    /// Writes the keys to `path`, readable by its owner only; never over an existing file.
    pub fn write_file(&self, path: &Path) -> Result<(), StoreError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let fail = |e: std::io::Error| {
            StoreError::Secrets(format!(
                "cannot write the secrets key file {}: {e}",
                path.display()
            ))
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        file.write_all(self.to_text().as_bytes()).map_err(fail)?;
        file.write_all(b"\n").map_err(fail)?;
        file.sync_all().map_err(fail)
    }

    /// Seals `plaintext` as the secret `what` under the current key.
    pub fn seal(&self, what: &str, plaintext: &str) -> Result<String, StoreError> {
        let key = &self.keys[&self.current];
        let cipher = XChaCha20Poly1305::new(&(**key).into());
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Secrets(format!("no randomness: {e}")))?;
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Secrets(format!("cannot seal {what}")))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(self.current);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED}{}", hex::encode(out)))
    }

    /// Opens a stored secret `what`; a value that is not sealed is returned as it is.
    pub fn open(&self, what: &str, stored: &str) -> Result<String, StoreError> {
        let Some(hex_text) = stored.strip_prefix(SEALED) else {
            return Ok(stored.to_owned());
        };
        let broken = |why: &str| StoreError::Secrets(format!("cannot open {what}: {why}"));
        let bytes = hex::decode(hex_text).map_err(|_| broken("it is not hex"))?;
        if bytes.len() < 1 + NONCE_LEN + 16 {
            return Err(broken("it is too short"));
        }
        let version = bytes[0];
        let Some(key) = self.keys.get(&version) else {
            return Err(broken(&format!(
                "it was sealed with key version {version}, which {} does not hold",
                self.source
            )));
        };
        let cipher = XChaCha20Poly1305::new(&(**key).into());
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[1..=NONCE_LEN]);
        let plain = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &bytes[1 + NONCE_LEN..],
                    aad: what.as_bytes(),
                },
            )
            .map_err(|_| {
                broken(&format!(
                    "key version {version} of {} does not open it (a different key under the same version?)",
                    self.source
                ))
            })?;
        String::from_utf8(plain).map_err(|_| broken("it is not text"))
    }

    /// Whether `stored` should be sealed again: it is plaintext, or sealed under an older key.
    pub(crate) fn needs_sealing(&self, stored: &str) -> bool {
        match stored.strip_prefix(SEALED) {
            None => true,
            Some(hex_text) => {
                hex::decode(hex_text.get(..2).unwrap_or_default())
                    .ok()
                    .and_then(|v| v.first().copied())
                    != Some(self.current)
            }
        }
    }

    /// Where the keys came from.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// What the secret of a project's webhook is called when it is sealed.
pub(crate) fn hook_secret_id(project: &str) -> String {
    format!("hook:{project}")
}

/// What a notification receiver's secret is called when it is sealed.
pub(crate) fn receiver_secret_id(receiver: &str) -> String {
    format!("receiver:{receiver}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn sealed_values_open_only_as_what_they_were_sealed_as() {
        let keys = SecretKeys::generate().unwrap();
        let sealed = keys.seal("hook:a", "s3cret").unwrap();
        assert!(sealed.starts_with(SEALED));
        assert!(!sealed.contains("s3cret"));
        assert_ne!(
            sealed,
            keys.seal("hook:a", "s3cret").unwrap(),
            "fresh nonce each time"
        );
        assert_eq!(keys.open("hook:a", &sealed).unwrap(), "s3cret");
        let moved = keys.open("hook:b", &sealed).unwrap_err().to_string();
        assert!(moved.contains("cannot open hook:b"), "{moved}");
        // Values from before sealing read as they are.
        assert_eq!(keys.open("hook:a", "plain").unwrap(), "plain");
        assert!(keys.needs_sealing("plain"));
        assert!(!keys.needs_sealing(&sealed));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_with_the_newest() {
        let old = SecretKeys::parse(K1, "test").unwrap();
        let sealed_old = old.seal("receiver:r", "x").unwrap();
        let both = SecretKeys::parse(&format!("1:{K1}, 2:{K2}"), "test").unwrap();
        assert_eq!(both.open("receiver:r", &sealed_old).unwrap(), "x");
        assert!(both.needs_sealing(&sealed_old));
        let sealed_new = both.seal("receiver:r", "x").unwrap();
        assert!(!both.needs_sealing(&sealed_new));
        let err = old.open("receiver:r", &sealed_new).unwrap_err().to_string();
        assert!(
            err.contains("key version 2, which test does not hold"),
            "{err}"
        );
        let round = SecretKeys::parse(&both.to_text(), "again").unwrap();
        assert_eq!(round.open("receiver:r", &sealed_new).unwrap(), "x");
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        let err = |text: &str| {
            SecretKeys::parse(text, "KILN__SECRETS__KEY")
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("no key in it"));
        assert!(err("abc").contains("not 64 hex digits"));
        assert!(err(&format!("0:{K1}")).contains("`0` is not a key version"));
        assert!(err(&format!("1:{K1},1:{K2}")).contains("version 1 is given twice"));
        assert!(err(&format!("{K1},{K2}")).contains("each needs its version"));
        assert!(
            err("x").contains("secrets keys: KILN__SECRETS__KEY: "),
            "{}",
            err("x")
        );
    }

    #[test]
    fn the_embedded_default_makes_a_private_key_file_once() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // A PostgreSQL store gets none made up.
        assert!(SecretKeys::resolve(dir.path(), false).unwrap().is_none());
        let made = SecretKeys::resolve(dir.path(), true).unwrap().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = made.seal("hook:p", "v").unwrap();
        // Found again, by either kind of store.
        for embedded in [true, false] {
            let again = SecretKeys::resolve(dir.path(), embedded).unwrap().unwrap();
            assert_eq!(again.open("hook:p", &sealed).unwrap(), "v");
        }
    }
}
