//! Secrets: a value type that never prints itself, the keys that encrypt
//! KV secrets at rest (ChaCha20-Poly1305, random nonce), and the
//! operators' identities that a store's data key is wrapped for (age,
//! X25519: the format `age-keygen` writes and `age -d` reads).

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

    /// A new random key, in memory (a store's data key).
    pub fn generate() -> SecretKey {
        SecretKey(ChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// This key encrypted to an operator's public key.
    pub fn wrap(&self, recipient: &age::x25519::Recipient) -> Result<Vec<u8>, String> {
        age::encrypt(recipient, self.0.as_slice()).map_err(|e| e.to_string())
    }

    /// The key `wrap` encrypted to `identity`'s public key.
    pub fn unwrap(identity: &Identity, wrapped: &[u8]) -> Result<SecretKey, String> {
        let bytes = age::decrypt(&identity.0, wrapped).map_err(|e| e.to_string())?;
        if bytes.len() != 32 {
            return Err(format!("the wrapped key has {} bytes, not 32", bytes.len()));
        }
        Ok(SecretKey(*Key::from_slice(&bytes)))
    }

    /// Creates a new key file (owner-only); refuses to replace one.
    pub fn create(path: &Path) -> Result<SecretKey, StateError> {
        let key = ChaCha20Poly1305::generate_key(&mut OsRng);
        create_private(path, &key)?;
        Ok(SecretKey(key))
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

/// An operator's private key (age X25519), kept in a file only its owner
/// reads: it unwraps the store's data key.
pub struct Identity(age::x25519::Identity);

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.recipient())
    }
}

impl Identity {
    /// The public key others wrap for (`age1…`).
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// Loads an identity file (`age-keygen`'s format: `#` comments and one
    /// `AGE-SECRET-KEY-1…` line); `None` when there is none. A file that
    /// other users can read is refused: it would share the key.
    pub fn load(path: &Path) -> Result<Option<Identity>, StateError> {
        use std::os::unix::fs::PermissionsExt;
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StateError::Config(format!(
                    "cannot read your identity {}: {e}; CUTOVER_IDENTITY_FILE (else .cutover/identity.key) names the file `cutover secrets identity` wrote",
                    path.display()
                )))
            }
        };
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(StateError::Config(format!(
                "{} can be read by other users (mode {mode:03o}): it is your private key; run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let parsed = match (keys.next(), keys.next()) {
            (Some(line), None) => line.parse::<age::x25519::Identity>().ok(),
            _ => None,
        };
        parsed.map(|id| Some(Identity(id))).ok_or_else(|| {
            StateError::Config(format!(
                "{} is not an age identity: it should hold one `AGE-SECRET-KEY-1…` line (as `age-keygen` or `cutover secrets identity` write it)",
                path.display()
            ))
        })
    }

    /// Creates a new identity file (owner-only); refuses to replace one.
    pub fn create(path: &Path) -> Result<Identity, StateError> {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let text = format!(
            "# created: {}\n# public key: {}\n{}\n",
            crate::now_rfc3339(),
            id.to_public(),
            id.to_string().expose_secret()
        );
        create_private(path, text.as_bytes()).map_err(|e| {
            StateError::Config(format!(
                "cannot make your identity: {e}; set CUTOVER_IDENTITY_FILE to a new file in a directory that exists"
            ))
        })?;
        Ok(Identity(id))
    }
}

/// Writes a new file only its owner can read; refuses to replace one.
fn create_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// `text` as an error message may show it: escaped, and never when it
/// holds a private key (it would end up in a terminal's or a CI job's log).
pub fn shown(text: &str) -> String {
    if text.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
        "(a private key, not shown)".into()
    } else {
        format!("`{}`", text.escape_debug())
    }
}

/// An operator's public key, as `cutover secrets add-operator` takes it.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, String> {
    let text = text.trim();
    if text.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
        return Err("that is a private key (AGE-SECRET-KEY-...), not a public one: keep it to yourself, and give the public key `cutover secrets identity` prints (age1...)".into());
    }
    let recipient = text.parse::<age::x25519::Recipient>().map_err(|e| {
        format!(
            "{} is not an age public key ({e}): it starts with `age1`",
            shown(text)
        )
    })?;
    if !contributory(&recipient) {
        return Err(format!(
            "`{text}` is a point of low order, which no age identity has: every key wrapped for it would be known to anyone"
        ));
    }
    Ok(recipient)
}

/// Whether a Diffie-Hellman with this public key depends on the secret
/// scalar: a scalar (a multiple of the cofactor, as X25519 clamps it)
/// times a point of low order is zero, whatever the scalar. age itself
/// would panic on such a key.
fn contributory(recipient: &age::x25519::Recipient) -> bool {
    use bech32::FromBase32;
    let Ok((_, data, _)) = bech32::decode(&recipient.to_string()) else {
        return false;
    };
    let Ok(point) = Vec::<u8>::from_base32(&data).map(<[u8; 32]>::try_from) else {
        return false;
    };
    point.is_ok_and(|u| x25519_dalek::x25519([0x5a; 32], u) != [0; 32])
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

    #[test]
    fn a_data_key_unwraps_only_for_its_recipient() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ana = Identity::create(&dir.path().join("ana")).expect("ana");
        let bo = Identity::create(&dir.path().join("bo")).expect("bo");
        let data = SecretKey::generate();
        let wrapped = data
            .wrap(&parse_recipient(&ana.recipient()).expect("recipient"))
            .expect("wrap");
        let unwrapped = SecretKey::unwrap(&ana, &wrapped).expect("ana unwraps");
        let ct = data.encrypt(&Secret::new("pw"));
        assert_eq!(unwrapped.decrypt(&ct).expect("same key").expose(), "pw");
        assert!(SecretKey::unwrap(&bo, &wrapped).is_err());
        // The file is age-keygen's format, owner-only, and loads back.
        let path = dir.path().join("ana");
        let again = Identity::load(&path).expect("load").expect("there");
        assert_eq!(again.recipient(), ana.recipient());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = Identity::load(&path).expect_err("readable by others");
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
        assert!(parse_recipient("age1nope").is_err());
        // Points of low order (zero, and one of order 8) are refused, not
        // left to age, which panics on them.
        let zero = "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq5cu47z";
        let order8 = "age1ur4h5lpmgxu2u9jku0a0r87ydtdqnr0tnsetrlvxvgz3vh6fhqqqzyt4v9";
        for low in [zero, order8] {
            let refused = parse_recipient(low).expect_err(low);
            assert!(refused.contains("low order"), "{refused}");
        }
        // A private key given as a public one is not echoed.
        let private = std::fs::read_to_string(dir.path().join("ana")).expect("read");
        let line = private.lines().last().expect("key line");
        let refused = parse_recipient(line).expect_err("private");
        assert!(
            !refused.contains(&line[20..]) && refused.contains("private key"),
            "{refused}"
        );
        assert!(parse_recipient(&ana.recipient()).is_ok());
    }
}
