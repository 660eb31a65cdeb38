//! Signing keys for release indexes: ed25519 key pairs in small text
//! files, and the keys a project trusts. A key id is the hex SHA-256 of
//! the 32-byte public key.
//!
//! A private key file is two lines, `cutover ed25519 signing key` and the
//! 32-byte seed in hex, mode 0600; a public key file is `cutover ed25519
//! public key` and the 32-byte key in hex.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Context, EngineError};

const PRIVATE_HEADER: &str = "cutover ed25519 signing key";
const PUBLIC_HEADER: &str = "cutover ed25519 public key";

/// The files of a key pair `keys generate` writes in its `--out` dir.
pub const PRIVATE_FILE: &str = "cutover-signing.key";
pub const PUBLIC_FILE: &str = "cutover-signing.pub";

/// A key as `keys generate` and `keys list` show it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub keyid: String,
    pub public_key: String,
    /// Where it came from: a file, or an environment variable.
    pub source: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The key id of a public key: hex SHA-256 of its 32 bytes.
pub fn keyid(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Writes a new key pair into `dir` (made 0700 if missing). Existing key
/// files are never overwritten.
pub fn generate(dir: &Path) -> Result<KeyInfo, EngineError> {
    let bad =
        |why: String| EngineError::usage(why, "choose an empty or new directory with --out DIR");
    let private = dir.join(PRIVATE_FILE);
    let public = dir.join(PUBLIC_FILE);
    for f in [&private, &public] {
        if f.exists() {
            return Err(bad(format!(
                "{} exists: a key is never overwritten",
                f.display()
            )));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(EngineError::io("reading /dev/urandom for a new key"))?;
    let signing = SigningKey::from_bytes(&seed);
    let verifying = signing.verifying_key();
    let write = |path: &PathBuf, mode: u32, text: String| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .map_err(EngineError::io(format!("writing {}", path.display())))
    };
    write(
        &private,
        0o600,
        format!("{PRIVATE_HEADER}\n{}\n", hex(&seed)),
    )?;
    write(
        &public,
        0o644,
        format!("{PUBLIC_HEADER}\n{}\n", hex(verifying.as_bytes())),
    )?;
    Ok(KeyInfo {
        keyid: keyid(&verifying),
        public_key: hex(verifying.as_bytes()),
        source: public.display().to_string(),
    })
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<VerifyingKey, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EngineError::usage(
            format!("cannot read the public key {}: {e}", path.display()),
            "check [trust] public_keys in cutover.toml (paths are relative to the project)",
        )
    })?;
    parse_public(&text).ok_or_else(|| {
        EngineError::usage(
            format!("{} is not a cutover public key", path.display()),
            format!("a public key file is `{PUBLIC_HEADER}` and 64 hex digits, as `cutover keys generate` writes it"),
        )
    })
}

fn parse_public(text: &str) -> Option<VerifyingKey> {
    let mut lines = text.lines();
    if lines.next()?.trim() != PUBLIC_HEADER {
        return None;
    }
    VerifyingKey::from_bytes(&unhex32(lines.next()?)?).ok()
}

/// The keys the project trusts and how many must sign.
#[derive(Debug, Clone, Serialize)]
pub struct Trust {
    pub keys: Vec<KeyInfo>,
    pub threshold: u32,
}

/// Where trusted keys come from besides `[trust] public_keys`: the
/// environment, read by the caller.
#[derive(Debug, Clone, Default)]
pub struct TrustEnv {
    /// `CUTOVER_TRUST_PUBLIC_KEYS_PATH`: public key files, `:`-separated.
    pub paths: Option<String>,
    /// `CUTOVER_TRUST_PUBLIC_KEYS_JSON`: a JSON array of hex public keys.
    pub json: Option<String>,
}

/// The trusted keys: `[trust] public_keys`, then the environment's. One
/// key counts once, however many places name it. A threshold above the
/// number of distinct keys can never be met: refused.
pub fn trust(ctx: &Context, env: &TrustEnv) -> Result<Trust, EngineError> {
    let mut keys: Vec<KeyInfo> = Vec::new();
    let mut add = |key: VerifyingKey, source: String| {
        let id = keyid(&key);
        if !keys.iter().any(|k| k.keyid == id) {
            keys.push(KeyInfo {
                keyid: id,
                public_key: hex(key.as_bytes()),
                source,
            });
        }
    };
    for p in &ctx.project.config.trust_public_keys {
        let path = ctx.project.root.join(p);
        add(read_public(&path)?, p.display().to_string());
    }
    if let Some(paths) = &env.paths {
        for p in paths.split(':').filter(|p| !p.is_empty()) {
            add(
                read_public(Path::new(p))?,
                format!("CUTOVER_TRUST_PUBLIC_KEYS_PATH {p}"),
            );
        }
    }
    if let Some(json) = &env.json {
        let bad = |why: String| {
            EngineError::usage(
                format!("CUTOVER_TRUST_PUBLIC_KEYS_JSON: {why}"),
                "give a JSON array of public keys, each 64 hex digits: [\"ab12...\"]",
            )
        };
        let list: Vec<String> = serde_json::from_str(json)
            .map_err(|e| bad(format!("not a JSON array of strings: {e}")))?;
        for (i, k) in list.iter().enumerate() {
            let key = unhex32(k)
                .and_then(|b| VerifyingKey::from_bytes(&b).ok())
                .ok_or_else(|| bad(format!("entry {} is not an ed25519 public key", i + 1)))?;
            add(key, format!("CUTOVER_TRUST_PUBLIC_KEYS_JSON[{i}]"));
        }
    }
    let threshold = ctx.project.config.trust_threshold;
    if threshold == 0 || (!keys.is_empty() && threshold as usize > keys.len()) {
        return Err(EngineError::usage(
            format!(
                "[trust] threshold is {threshold}, with {} distinct trusted key(s)",
                keys.len()
            ),
            "a threshold is at least 1 and at most the number of distinct trusted keys",
        ));
    }
    Ok(Trust { keys, threshold })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_read_back_and_are_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = generate(dir.path()).expect("generate");
        let key = read_public(&dir.path().join(PUBLIC_FILE)).expect("read");
        assert_eq!(keyid(&key), info.keyid);
        assert_eq!(info.keyid.len(), 64);
        assert!(generate(dir.path()).is_err(), "a second generate refuses");
        assert!(parse_public("cutover ed25519 public key\nzz\n").is_none());
    }
}
