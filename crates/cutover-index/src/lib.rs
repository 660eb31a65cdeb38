//! The signed release index (`releases.json`, one per job): its channels
//! and published versions, signed by the project's keys. Every load
//! verifies, and refuses (exit 4) before anything is touched:
//!
//! - an index over 1 MiB, or with more than 32 signatures (endless data);
//! - an unknown `schema_version`;
//! - another job's index;
//! - too few distinct trusted keys with a valid signature over the
//!   canonical JSON (RFC 8785) of `signed`: a key counts once however many
//!   signatures or key ids name it, an untrusted key not at all;
//! - an expired index;
//! - a `seq` lower than the highest this project has seen (rollback);
//! - a version name that would escape its directory.
//!
//! The checks follow the attacks the TUF specification lists and the
//! advisories of its libraries (duplicate signatures counted toward a
//! threshold, missing rollback protection, path traversal in target
//! names, endless data).

//!
//! This crate is pure: it parses, signs and checks bytes it is given, and
//! never reads a file or the network. The stores and the engine do that.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod keyfile;

pub use keyfile::keyid;

/// The largest index read.
pub const MAX_BYTES: usize = 1024 * 1024;
/// The most signatures an index may carry.
pub const MAX_SIGNATURES: usize = 32;
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub published_at: String,
    pub actor: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub ticket: String,
}

/// What the signatures cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub schema_version: u32,
    pub job: String,
    pub seq: u64,
    /// RFC 3339, UTC.
    pub expires: String,
    pub channels: BTreeMap<String, String>,
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureEntry {
    pub keyid: String,
    /// base64 of the 64-byte ed25519 signature.
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub signed: Signed,
    pub signatures: Vec<SignatureEntry>,
}

/// Why an index was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the index is {0} bytes, over the 1 MiB limit")]
    TooLarge(usize),
    #[error("the index is not a release index: {0}")]
    Malformed(String),
    #[error("the index has {0} signatures, over the limit of 32")]
    TooManySignatures(usize),
    #[error("unknown schema_version {0} (this cutover reads {SCHEMA_VERSION})")]
    Schema(u32),
    #[error("the index is job `{}`'s, not `{expected}`'s", found.escape_default())]
    WrongJob { expected: String, found: String },
    #[error("{valid} distinct trusted key(s) signed it; {threshold} must")]
    Threshold { valid: usize, threshold: usize },
    #[error("the index expired at {0}")]
    Expired(String),
    #[error("the index has seq {found}, lower than {seen} already seen: a rollback")]
    Rollback { found: u64, seen: u64 },
    #[error("version name `{}` could escape its directory", .0.escape_default())]
    BadName(String),
    #[error("version {version}'s artifact {what}")]
    Artifact { version: String, what: String },
}

/// The bytes a signature covers: the canonical JSON (RFC 8785) of `signed`.
pub fn canonical(signed: &Signed) -> Vec<u8> {
    serde_jcs::to_vec(signed).unwrap_or_default()
}

/// The distinct trusted keys with a valid signature over `signed`. Each
/// trusted key counts once, whatever key id a signature claims: every
/// signature is checked against every trusted key.
pub fn signers(index: &Index, trusted: &[VerifyingKey]) -> Vec<VerifyingKey> {
    let bytes = canonical(&index.signed);
    let ids: Vec<String> = trusted.iter().map(keyid).collect();
    let mut valid: BTreeMap<[u8; 32], VerifyingKey> = BTreeMap::new();
    for entry in index.signatures.iter().take(MAX_SIGNATURES) {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&entry.sig) else {
            continue;
        };
        let Ok(sig) = Signature::from_slice(&raw) else {
            continue;
        };
        // The key its key id names first (each check hashes the whole
        // index), then any other trusted key not counted yet: a wrong key
        // id costs time, never a count.
        let mut order: Vec<usize> = (0..trusted.len()).collect();
        order.sort_by_key(|&i| ids[i] != entry.keyid);
        for i in order {
            let key = &trusted[i];
            if valid.contains_key(key.as_bytes()) {
                continue;
            }
            if key.verify(&bytes, &sig).is_ok() {
                valid.insert(key.to_bytes(), *key);
                break;
            }
        }
    }
    valid.into_values().collect()
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    keyfile::hex(&Sha256::digest(bytes))
}

/// Checks an artifact's bytes against the version the index records:
/// its size first (a reader stops at the recorded size, so a longer
/// download shows up as one byte over), then its sha256.
pub fn check_artifact(version: &Version, bytes: &[u8]) -> Result<(), Refused> {
    let refuse = |what: String| Refused::Artifact {
        version: version.version.clone(),
        what,
    };
    if bytes.len() as u64 != version.size {
        return Err(refuse(format!(
            "is {} bytes or more, not the {} the index records",
            bytes.len(),
            version.size
        )));
    }
    let found = sha256_hex(bytes);
    if found != version.sha256 {
        return Err(refuse(format!(
            "has sha256 {found}, not the {} the index records",
            version.sha256
        )));
    }
    Ok(())
}

impl Signed {
    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == name)
    }
}

/// Signs `signed` with each key (one signature per distinct key).
pub fn sign(signed: Signed, keys: &[SigningKey]) -> Index {
    let bytes = canonical(&signed);
    let mut seen = BTreeSet::new();
    let signatures = keys
        .iter()
        .filter(|k| seen.insert(keyid(&k.verifying_key())))
        .map(|k| SignatureEntry {
            keyid: keyid(&k.verifying_key()),
            sig: base64::engine::general_purpose::STANDARD.encode(k.sign(&bytes).to_bytes()),
        })
        .collect();
    Index { signed, signatures }
}

/// A version or file name that stays in its directory: letters, digits,
/// `.`, `-`, `+` and `_`, at most 128 bytes, not starting with `.` or `-`.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+_".contains(c))
}

/// What a load checks against.
pub struct Expect<'a> {
    pub job: &'a str,
    pub trusted: &'a [VerifyingKey],
    pub threshold: usize,
    /// The highest seq this project has seen of this job's index.
    pub seen_seq: Option<u64>,
    /// Now, RFC 3339 UTC (compared as timestamps).
    pub now: jiff::Timestamp,
    /// Accept an expired index that is otherwise valid: a publisher that
    /// holds the trusted keys re-signs it.
    pub allow_expired: bool,
}

/// Parses and verifies an index's bytes.
pub fn verify(bytes: &[u8], expect: &Expect<'_>) -> Result<Index, Refused> {
    if bytes.len() > MAX_BYTES {
        return Err(Refused::TooLarge(bytes.len()));
    }
    let index: Index =
        serde_json::from_slice(bytes).map_err(|e| Refused::Malformed(e.to_string()))?;
    if index.signatures.len() > MAX_SIGNATURES {
        return Err(Refused::TooManySignatures(index.signatures.len()));
    }
    let s = &index.signed;
    if s.schema_version != SCHEMA_VERSION {
        return Err(Refused::Schema(s.schema_version));
    }
    if s.job != expect.job {
        return Err(Refused::WrongJob {
            expected: expect.job.to_string(),
            found: s.job.clone(),
        });
    }
    let valid = signers(&index, expect.trusted);
    if expect.threshold == 0 || valid.len() < expect.threshold {
        return Err(Refused::Threshold {
            valid: valid.len(),
            threshold: expect.threshold,
        });
    }
    let expires: jiff::Timestamp = s
        .expires
        .parse()
        .map_err(|e| Refused::Malformed(format!("expires `{}`: {e}", s.expires)))?;
    if expires <= expect.now && !expect.allow_expired {
        return Err(Refused::Expired(s.expires.clone()));
    }
    if let Some(seen) = expect.seen_seq {
        if s.seq < seen {
            return Err(Refused::Rollback { found: s.seq, seen });
        }
    }
    for v in &s.versions {
        if !safe_name(&v.version) {
            return Err(Refused::BadName(v.version.clone()));
        }
        // The digest names the artifact's file: 64 lowercase hex digits.
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if v.sha256.len() != 64 || !v.sha256.chars().all(hex) {
            return Err(Refused::Malformed(format!(
                "version {}: sha256 `{}` is not 64 lowercase hex digits",
                v.version, v.sha256
            )));
        }
    }
    for v in s.channels.values() {
        if !safe_name(v) {
            return Err(Refused::BadName(v.clone()));
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn signed() -> Signed {
        Signed {
            schema_version: 1,
            job: "api".into(),
            seq: 7,
            expires: "2030-01-01T00:00:00Z".into(),
            channels: [("stable".to_string(), "1.0.0".to_string())].into(),
            versions: vec![Version {
                version: "1.0.0".into(),
                sha256: "ab".repeat(32),
                size: 12,
                published_at: "2026-12-01T00:00:00Z".into(),
                actor: "ops".into(),
                reason: String::new(),
                ticket: String::new(),
            }],
        }
    }

    fn check(index: &Index, trusted: &[SigningKey], threshold: usize) -> Result<Index, Refused> {
        let trusted: Vec<VerifyingKey> = trusted.iter().map(|k| k.verifying_key()).collect();
        let bytes = serde_json::to_vec(index).expect("json");
        verify(
            &bytes,
            &Expect {
                job: "api",
                trusted: &trusted,
                threshold,
                seen_seq: Some(7),
                now: "2026-12-01T00:00:00Z".parse().expect("now"),
                allow_expired: false,
            },
        )
    }

    #[test]
    fn a_good_index_verifies() {
        let index = sign(signed(), &[key(1), key(2)]);
        assert_eq!(check(&index, &[key(1), key(2)], 2), Ok(index));
    }

    #[test]
    fn a_changed_signed_part_breaks_every_signature() {
        let mut index = sign(signed(), &[key(1)]);
        index
            .signed
            .channels
            .insert("stable".into(), "0.9.0".into());
        assert!(matches!(
            check(&index, &[key(1)], 1),
            Err(Refused::Threshold { valid: 0, .. })
        ));
    }

    #[test]
    fn an_untrusted_key_counts_for_nothing() {
        let index = sign(signed(), &[key(9)]);
        assert!(matches!(
            check(&index, &[key(1)], 1),
            Err(Refused::Threshold { valid: 0, .. })
        ));
    }

    #[test]
    fn one_key_counts_once_whatever_its_signatures_and_key_ids() {
        let mut index = sign(signed(), &[key(1)]);
        let dup = index.signatures[0].clone();
        index.signatures.push(SignatureEntry {
            keyid: "another-id".into(),
            ..dup.clone()
        });
        index.signatures.push(dup);
        assert!(matches!(
            check(&index, &[key(1), key(2)], 2),
            Err(Refused::Threshold {
                valid: 1,
                threshold: 2
            })
        ));
    }

    #[test]
    fn another_jobs_index_is_refused() {
        let mut s = signed();
        s.job = "web".into();
        let index = sign(s, &[key(1)]);
        assert!(matches!(
            check(&index, &[key(1)], 1),
            Err(Refused::WrongJob { .. })
        ));
    }

    #[test]
    fn an_expired_index_is_refused() {
        let mut s = signed();
        s.expires = "2026-11-30T23:59:59Z".into();
        let index = sign(s, &[key(1)]);
        assert!(matches!(
            check(&index, &[key(1)], 1),
            Err(Refused::Expired(_))
        ));
    }

    #[test]
    fn a_lower_seq_is_a_rollback() {
        let mut s = signed();
        s.seq = 6;
        let index = sign(s, &[key(1)]);
        assert!(matches!(
            check(&index, &[key(1)], 1),
            Err(Refused::Rollback { found: 6, seen: 7 })
        ));
    }

    #[test]
    fn an_unknown_schema_is_refused() {
        let mut s = signed();
        s.schema_version = 2;
        let index = sign(s, &[key(1)]);
        assert!(matches!(
            check(&index, &[key(1)], 1),
            Err(Refused::Schema(2))
        ));
    }

    #[test]
    fn names_that_escape_are_refused() {
        for bad in [
            "../x", "a/b", "..", "", "x\\y", "-rf", "a\nb", " ", "v 1", ".lock",
        ] {
            let mut s = signed();
            s.versions[0].version = bad.into();
            let index = sign(s, &[key(1)]);
            assert!(
                matches!(check(&index, &[key(1)], 1), Err(Refused::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn endless_data_is_refused() {
        let big = vec![b' '; MAX_BYTES + 1];
        let trusted = [key(1).verifying_key()];
        let e = verify(
            &big,
            &Expect {
                job: "api",
                trusted: &trusted,
                threshold: 1,
                seen_seq: None,
                now: "2026-12-01T00:00:00Z".parse().expect("now"),
                allow_expired: false,
            },
        );
        assert!(matches!(e, Err(Refused::TooLarge(_))));
        let mut index = sign(signed(), &[key(1)]);
        let one = index.signatures[0].clone();
        index.signatures = vec![one; MAX_SIGNATURES + 1];
        assert!(matches!(
            check(&index, &[key(1)], 1),
            Err(Refused::TooManySignatures(33))
        ));
    }

    #[test]
    fn the_signature_covers_canonical_json() {
        // Key order and whitespace do not matter: the signature is over
        // RFC 8785 bytes, so a re-serialized index still verifies.
        let index = sign(signed(), &[key(1)]);
        let pretty = serde_json::to_string_pretty(&index).expect("json");
        let trusted = [key(1).verifying_key()];
        let ok = verify(
            pretty.as_bytes(),
            &Expect {
                job: "api",
                trusted: &trusted,
                threshold: 1,
                seen_seq: None,
                now: "2026-12-01T00:00:00Z".parse().expect("now"),
                allow_expired: false,
            },
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert!(String::from_utf8(canonical(&index.signed))
            .expect("utf8")
            .starts_with("{\"channels\":"));
    }
}
