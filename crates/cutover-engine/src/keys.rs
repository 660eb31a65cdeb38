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

use crate::{Context, EngineError};

use cutover_index::keyfile::{self, hex, unhex32};
pub use cutover_index::keyid;

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
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
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
    write(&private, 0o600, keyfile::format_private(&signing))?;
    write(&public, 0o644, keyfile::format_public(&verifying))?;
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
    keyfile::parse_public(&text).ok_or_else(|| {
        EngineError::usage(
            format!("{} is not a cutover public key", path.display()),
            format!(
                "a public key file is `{}` and 64 hex digits, as `cutover keys generate` writes it",
                keyfile::PUBLIC_HEADER
            ),
        )
    })
}

/// Reads a signing key file (`cutover keys generate` writes them). A key
/// another user could read is refused, as ssh refuses one.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |what: String| {
        EngineError::usage(
            what,
            "give --key FILE (or CUTOVER_SIGNING_KEY_FILE) a key `cutover keys generate` wrote",
        )
    };
    let cannot = |e: std::io::Error| {
        bad(format!(
            "cannot read the signing key {}: {e}",
            path.display()
        ))
    };
    // One open: the mode and the content are of the same file.
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let mode = file.metadata().map_err(cannot)?.permissions().mode() & 0o777;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(cannot)?;
    // A public key given by mistake: said before anything else.
    if bytes.starts_with(keyfile::PUBLIC_HEADER.as_bytes()) {
        return Err(EngineError::usage(
            format!("{} is a public key, not a signing key", path.display()),
            "give --key the private key file (cutover-signing.key, not .pub)",
        ));
    }
    if mode & 0o077 != 0 {
        return Err(EngineError::usage(
            format!(
                "the signing key {} has mode {mode:04o}: other users can read it",
                path.display()
            ),
            format!(
                "make it private with `chmod 600 {}`, and consider the key exposed if others had access",
                path.display()
            ),
        ));
    }
    keyfile::parse_private(&String::from_utf8_lossy(&bytes))
        .ok_or_else(|| bad(format!("{} is not a cutover signing key", path.display())))
}

/// The keys the project trusts and how many must sign.
#[derive(Debug, Clone, Serialize)]
pub struct Trust {
    pub keys: Vec<KeyInfo>,
    pub threshold: u32,
    #[serde(skip)]
    pub verifying: Vec<VerifyingKey>,
    /// How long a signed index stays valid (`[trust] index_lifetime`).
    #[serde(skip)]
    pub lifetime: std::time::Duration,
}

/// Where trusted keys come from besides `[trust] public_keys`: the
/// environment, read by the CLI.
#[derive(Debug, Clone, Default)]
pub struct TrustEnv {
    /// `CUTOVER_TRUST_PUBLIC_KEYS_PATH`: public key files, `:`-separated.
    pub paths: Option<String>,
    /// `CUTOVER_TRUST_PUBLIC_KEYS_JSON`: a JSON array of hex public keys.
    pub json: Option<String>,
    /// `CUTOVER_SIGNING_KEY_FILE`: the signing key when no `--key` is given.
    pub signing_key_file: Vec<PathBuf>,
    /// `CUTOVER_ALLOW_INSECURE_DEV_KEYS=1`: a development project signs
    /// with a key kept in `.cutover/dev-key/`, and trusts it.
    pub insecure_dev_keys: bool,
    /// `CUTOVER_ENV=production`.
    pub production: bool,
}

/// The dir of the insecure development key (`CUTOVER_ALLOW_INSECURE_DEV_KEYS`).
pub fn dev_key_dir(ctx: &Context) -> PathBuf {
    ctx.workspace.join("dev-key")
}

/// Whether trusted keys are configured (`[trust] public_keys` or the
/// environment), the insecure development key aside.
pub fn trust_configured(ctx: &Context) -> bool {
    let env = &ctx.trust_env;
    !ctx.project.config.trust_public_keys.is_empty() || env.paths.is_some() || env.json.is_some()
}

/// Refuses insecure development keys in production.
fn dev_keys_allowed(ctx: &Context) -> Result<bool, EngineError> {
    let env = &ctx.trust_env;
    if env.insecure_dev_keys && env.production {
        return Err(EngineError::usage(
            "CUTOVER_ALLOW_INSECURE_DEV_KEYS=1 is refused with CUTOVER_ENV=production",
            "sign with keys kept off this machine's project (--key FILE), and unset CUTOVER_ALLOW_INSECURE_DEV_KEYS",
        ));
    }
    Ok(env.insecure_dev_keys)
}

/// The insecure development key, made on first use (0600 in a 0700 dir).
fn dev_key(ctx: &Context) -> Result<SigningKey, EngineError> {
    let dir = dev_key_dir(ctx);
    if !dir.join(PRIVATE_FILE).exists() {
        generate(&dir)?;
    }
    read_signing_key(&dir.join(PRIVATE_FILE))
}

/// The keys an index update signs with: `--key` files, else
/// `CUTOVER_SIGNING_KEY_FILE`, else (only with
/// `CUTOVER_ALLOW_INSECURE_DEV_KEYS=1`) the development key.
pub fn signing_keys(ctx: &Context, given: &[PathBuf]) -> Result<Vec<SigningKey>, EngineError> {
    if !given.is_empty() {
        return given.iter().map(|p| read_signing_key(p)).collect();
    }
    if !ctx.trust_env.signing_key_file.is_empty() {
        return ctx
            .trust_env
            .signing_key_file
            .iter()
            .map(|p| read_signing_key(p))
            .collect();
    }
    if dev_keys_allowed(ctx)? {
        return Ok(vec![dev_key(ctx)?]);
    }
    Err(EngineError::usage(
        "no signing key",
        "give --key FILE (repeatable) or CUTOVER_SIGNING_KEY_FILE; `cutover keys generate --out DIR` makes one",
    ))
}

/// The trusted keys: `[trust] public_keys`, then the environment's. One
/// key counts once, however many places name it. A threshold above the
/// number of distinct keys can never be met: refused.
pub fn trust(ctx: &Context) -> Result<Trust, EngineError> {
    let env = &ctx.trust_env;
    let mut keys: Vec<KeyInfo> = Vec::new();
    let mut verifying: Vec<VerifyingKey> = Vec::new();
    let mut add = |key: VerifyingKey, source: String| {
        let id = keyid(&key);
        if !keys.iter().any(|k| k.keyid == id) {
            keys.push(KeyInfo {
                keyid: id,
                public_key: hex(key.as_bytes()),
                source,
            });
            verifying.push(key);
        }
    };
    if dev_keys_allowed(ctx)? {
        add(
            dev_key(ctx)?.verifying_key(),
            format!(
                "CUTOVER_ALLOW_INSECURE_DEV_KEYS ({})",
                dev_key_dir(ctx).join(PRIVATE_FILE).display()
            ),
        );
    }
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
    Ok(Trust {
        keys,
        threshold,
        verifying,
        lifetime: ctx.project.config.index_lifetime,
    })
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
    }
}
