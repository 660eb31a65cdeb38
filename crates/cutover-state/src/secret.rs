//! Secrets: a value type that never prints itself, and the project key
//! that encrypts KV secrets at rest (ChaCha20-Poly1305, random nonce).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::StateError;

/// A secret value. `Debug` and `Display` redact; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// The project's KV encryption key, at `.cutover/secret.key` (mode 0600).
pub struct SecretKey(Key);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

const NONCE_LEN: usize = 12;

impl SecretKey {
    /// Loads the key, creating it (owner-only) on first use.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, StateError> {
        match SecretKey::load(path)? {
            Some(key) => Ok(key),
            None => SecretKey::create(path),
        }
    }

    /// Loads the key; `None` when there is no key file.
    pub fn load(path: &Path) -> Result<Option<SecretKey>, StateError> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => Ok(Some(SecretKey(*Key::from_slice(&bytes)))),
            Ok(_) => Err(StateError::Corrupt(format!(
                "{} is not a 32-byte key; restore it from a backup (secrets cannot be read without it)",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Creates a new key file (owner-only); refuses to replace one.
    pub fn create(path: &Path) -> Result<SecretKey, StateError> {
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        {
            {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(SecretKey(key))
            }
        }
    }

    /// A keyed blake3 of `data` in hex: only a holder of the key can make
    /// one that checks (a seal on a local cache, say).
    pub fn seal(&self, data: &[u8]) -> String {
        let key: [u8; 32] = self.0.into();
        blake3::keyed_hash(&key, data).to_hex().to_string()
    }

    pub fn encrypt(&self, plain: &Secret) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a fresh nonce and an in-memory buffer cannot fail.
        let ct = cipher
            .encrypt(&nonce, plain.expose().as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn decrypt(&self, data: &[u8]) -> Result<Secret, String> {
        if data.len() < NONCE_LEN {
            return Err("value too short".into());
        }
        let (nonce, ct) = data.split_at(NONCE_LEN);
        let cipher = ChaCha20Poly1305::new(&self.0);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| "wrong key or corrupted value".to_string())?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| "not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_plaintext() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::load_or_create(&dir.path().join("k")).expect("key");
        let s = Secret::new("hunter2-poison");
        let ct = key.encrypt(&s);
        assert!(!ct.windows(6).any(|w| w == b"hunter"));
        assert_eq!(key.decrypt(&ct).expect("decrypts"), s);
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <secret>");
        let again = SecretKey::load_or_create(&dir.path().join("k")).expect("reload");
        assert_eq!(again.decrypt(&ct).expect("same key"), s);
    }
}
