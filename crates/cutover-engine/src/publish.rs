//! `cutover publish`: build a job, pack its output as a deterministic
//! `tar.zst`, and add it to the job's signed release index in the store.
//!
//! The store here is a directory (`[store] url = "file:///path"`):
//! `<store>/<job>/releases.json` and `<store>/<job>/<version>.tar.zst`.
//! An index update holds `<store>/<job>/.lock` (an flock): two publishers
//! never lose a version; the second waits and builds on the first's index.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::index::{self, Expect, Signed, Version};
use crate::{Context, EngineError};

/// How long a signed index stays valid (SPEC: `[trust] index_lifetime`).
const INDEX_LIFETIME_SECS: i64 = 30 * 86_400;

pub struct PublishOptions {
    pub job: String,
    /// `stable` or `canary`.
    pub channel: String,
    pub keys: Vec<SigningKey>,
    pub force: bool,
    pub actor: String,
    pub reason: String,
    pub ticket: String,
    /// Trusted keys from the environment, as `keys list` reads them.
    pub trust_env: crate::keys::TrustEnv,
}

#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub job: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub seq: u64,
    pub channels: std::collections::BTreeMap<String, String>,
    /// The version was already published with this very content.
    pub unchanged: bool,
}

fn invalid(what: impl Into<String>, help: impl Into<String>) -> EngineError {
    EngineError::usage(what, help)
}

/// The store's directory, from `[store] url`.
pub fn store_dir(ctx: &Context) -> Result<PathBuf, EngineError> {
    let url = ctx.project.config.store_url.as_deref().ok_or_else(|| {
        invalid(
            "no release store: cutover.toml has no [store] url",
            "add [store] url = \"file:///srv/cutover-store\"",
        )
    })?;
    let path = url.strip_prefix("file://").ok_or_else(|| {
        invalid(
            format!("[store] url `{url}` is not supported by this version of cutover"),
            "use a file:// store (s3:// and http(s):// come later)",
        )
    })?;
    if !path.starts_with('/') {
        return Err(invalid(
            format!("[store] url `{url}` is not an absolute file:// path"),
            "write file:///absolute/path",
        ));
    }
    Ok(PathBuf::from(path))
}

/// Reads a signing key file (`cutover keys generate` writes them).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            format!("cannot read the signing key {}: {e}", path.display()),
            "give --key FILE (or CUTOVER_SIGNING_KEY_FILE) a key `cutover keys generate` wrote",
        )
    })?;
    let mut lines = text.lines();
    let seed = (lines.next().map(str::trim) == Some("cutover ed25519 signing key"))
        .then(|| lines.next())
        .flatten()
        .map(str::trim)
        .filter(|h| h.len() == 64)
        .and_then(|h| {
            let mut out = [0u8; 32];
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        })
        .ok_or_else(|| {
            invalid(
                format!("{} is not a cutover signing key", path.display()),
                "give --key a private key file that `cutover keys generate` wrote",
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Packs `dir` as a deterministic tar.zst: entries sorted, mtime 0, uid
/// and gid 0, no user or group names, modes 0644 or 0755 (0755 for dirs
/// and executables), symlinks kept, a fixed zstd level. Two packs of the
/// same tree are byte-identical.
pub fn pack(dir: &Path) -> Result<Vec<u8>, EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |e: std::io::Error| EngineError::io(what)(e);
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            EngineError::io(format!("reading {}", dir.display()))(std::io::Error::other(e))
        })?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(std::io::Error::other)
            .map_err(io(format!("reading {}", entry.path().display())))?;
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(io(format!("reading {}", entry.path().display())))?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let exec = meta.permissions().mode() & 0o111 != 0;
        let add = |tar: &mut tar::Builder<Vec<u8>>, h: &mut tar::Header, data: &[u8]| {
            h.set_cksum();
            tar.append_data(h, rel, data)
                .map_err(io(format!("packing {}", rel.display())))
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())
                .map_err(io(format!("reading {}", entry.path().display())))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, rel, target)
                .map_err(io(format!("packing {}", rel.display())))?;
        } else if meta.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            add(&mut tar, &mut h, &[])?;
        } else if meta.is_file() {
            let data = std::fs::read(entry.path())
                .map_err(io(format!("reading {}", entry.path().display())))?;
            if data.starts_with(b"cutover ed25519 signing key") {
                return Err(invalid(
                    format!(
                        "{} is a private signing key: it is never published",
                        entry.path().display()
                    ),
                    "keep signing keys out of the job's build output (and out of the project)",
                ));
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if exec { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            add(&mut tar, &mut h, &data)?;
        } else {
            return Err(invalid(
                format!(
                    "{} is a FIFO, socket or device: an artifact holds files, dirs and symlinks",
                    entry.path().display()
                ),
                "remove it from the build output",
            ));
        }
    }
    let tar = tar
        .into_inner()
        .map_err(io("packing the artifact".to_string()))?;
    zstd::bulk::compress(&tar, 19).map_err(io("compressing the artifact".to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The highest index seq seen of a job (kept in the state store).
fn seen_key(job: &str) -> String {
    format!("index_seq/{job}")
}

/// Writes `bytes` to `path` atomically: a new temporary file (never an
/// existing one, never through a symlink) renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let nanos = jiff::Timestamp::now().as_nanosecond();
    let tmp = path.with_file_name(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(EngineError::io(format!("writing {}", path.display())))
}

/// Refuses a store path that is a symlink: the store is written and read
/// only where it says.
fn no_symlink(path: &Path) -> Result<(), EngineError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(EngineError::Refused(format!(
            "{} is a symlink: the store is read and written only in its own dir",
            path.display()
        ))),
        Ok(m) if !m.is_file() && !m.is_dir() => Err(EngineError::Refused(format!(
            "{} is not a file or dir",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Reads at most the index size limit (and one byte more, to tell).
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(index::MAX_BYTES as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

pub async fn publish(ctx: &Context, opts: &PublishOptions) -> Result<Published, EngineError> {
    let job = ctx.project.jobs.get(&opts.job).ok_or_else(|| {
        invalid(
            format!("no job named `{}`", opts.job),
            "name a job under jobs/",
        )
    })?;
    if opts.keys.is_empty() {
        return Err(invalid(
            "no signing key",
            "give --key FILE (repeatable) or CUTOVER_SIGNING_KEY_FILE; `cutover keys generate --out DIR` makes one",
        ));
    }
    if opts.channel != "stable" && opts.channel != "canary" {
        return Err(invalid(
            format!("unknown channel `{}`", opts.channel),
            "--channel stable or --channel canary",
        ));
    }
    let version = job.manifest.version.clone();
    let declared = std::fs::read_to_string(job.dir.join("job.toml"))
        .ok()
        .and_then(|t| cutover_model::project::manifest_version(&t));
    if declared.is_none() {
        return Err(invalid(
            format!("jobs/{}/job.toml declares no version", job.name),
            "set version = \"1.0.0\": a published version names its artifact",
        ));
    }
    if !index::safe_name(&version) {
        return Err(invalid(
            format!("version `{version}` of {} cannot name a file", job.name),
            "use letters, digits, `.`, `-`, `+` and `_` in job.toml's version, not starting with `.` or `-`",
        ));
    }
    let store = store_dir(ctx)?;
    let trust = crate::keys::trust(ctx, &opts.trust_env)?;
    let trusted: Vec<ed25519_dalek::VerifyingKey> = trust
        .keys
        .iter()
        .filter_map(|k| {
            let bytes: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&k.public_key[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<_>>()?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
        })
        .collect();
    for k in &opts.keys {
        if !trusted.contains(&k.verifying_key()) {
            return Err(invalid(
                format!(
                    "signing key {} is not trusted by this project",
                    crate::keys::keyid(&k.verifying_key())
                ),
                "add its .pub file to [trust] public_keys (see `cutover keys list`)",
            ));
        }
    }
    // Nothing is written that readers would refuse: enough distinct keys.
    let distinct: std::collections::BTreeSet<[u8; 32]> = opts
        .keys
        .iter()
        .map(|k| k.verifying_key().to_bytes())
        .collect();
    if distinct.len() < trust.threshold as usize {
        return Err(invalid(
            format!(
                "{} distinct signing key(s) given; the project's threshold is {}",
                distinct.len(),
                trust.threshold
            ),
            "give one --key per signer, as many as [trust] threshold",
        ));
    }

    // Build, then pack the output.
    let out_dir = match &job.manifest.build {
        Some(b) => {
            if let Some(cmd) = &b.command {
                let status = tokio::process::Command::new("sh")
                    .args(["-c", cmd])
                    .current_dir(&job.dir)
                    .status()
                    .await
                    .map_err(EngineError::io(format!(
                        "running the build of {}",
                        job.name
                    )))?;
                if !status.success() {
                    return Err(EngineError::Failed(format!(
                        "the build of {} (`{cmd}`) exited {}",
                        job.name,
                        status.code().map_or("by signal".into(), |c| c.to_string())
                    )));
                }
            }
            match &b.output {
                Some(o) => job.dir.join(o),
                None => job.dir.clone(),
            }
        }
        None => job.dir.clone(),
    };
    if !out_dir.join("Makefile").is_file() {
        return Err(invalid(
            format!(
                "the artifact of {} ({}) holds no Makefile",
                job.name,
                out_dir.display()
            ),
            "the build output must hold the job's Makefile: workers run its targets",
        ));
    }
    let artifact = tokio::task::block_in_place(|| pack(&out_dir))?;
    let sha = hex(&Sha256::digest(&artifact));
    let size = artifact.len() as u64;

    // Under the job's store lock: read, check, write, read back.
    let dir = store.join(&job.name);
    no_symlink(&dir)?;
    std::fs::create_dir_all(&dir)
        .map_err(EngineError::io(format!("creating {}", dir.display())))?;
    no_symlink(&dir)?;
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(".lock"))
            .map_err(EngineError::io(format!(
                "opening {}",
                dir.join(".lock").display()
            )))?
    };
    // Another publisher holds it: wait, saying so, until it is free or a
    // signal asks to stop.
    let mut said = false;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if ctx.interrupt.is_set() {
                    return Err(EngineError::Failed(
                        "interrupted while waiting for the store's lock; nothing was written"
                            .into(),
                    ));
                }
                if !said {
                    ctx.reporter.event(&crate::Event::Message {
                        text: format!(
                            "waiting for {} (another publish of {})",
                            dir.join(".lock").display(),
                            job.name
                        ),
                    });
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(EngineError::io("locking the release index".to_string())(e))
            }
        }
    }
    let index_path = dir.join("releases.json");
    let artifact_path = dir.join(format!("{version}.tar.zst"));
    no_symlink(&index_path)?;
    no_symlink(&artifact_path)?;
    let seen: Option<u64> = ctx
        .store
        .meta_get(&seen_key(&job.name))
        .await?
        .and_then(|s| s.parse().ok());
    let expect = |now, allow_expired| Expect {
        job: &job.name,
        trusted: &trusted,
        threshold: trust.threshold as usize,
        seen_seq: seen,
        now,
        allow_expired,
    };
    let now = jiff::Timestamp::now();
    // An expired index is re-signed by this publish: its keys are trusted.
    let current = match read_limited(&index_path) {
        Ok(bytes) => Some(
            index::verify(&bytes, &expect(now, true))
                .map_err(|e| EngineError::Refused(format!("{}: {e}", index_path.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(seq) = seen {
                // Deleted (or never copied): starting over would drop the
                // published versions and read as a rollback everywhere.
                return Err(EngineError::Refused(format!(
                    "{} is missing, but this project has seen seq {seq} of it",
                    index_path.display()
                )));
            }
            None
        }
        Err(e) => return Err(EngineError::io(format!("reading {}", index_path.display()))(e)),
    };
    let mut signed = match &current {
        Some(i) => i.signed.clone(),
        None => Signed {
            schema_version: index::SCHEMA_VERSION,
            job: job.name.clone(),
            seq: 0,
            expires: String::new(),
            channels: Default::default(),
            versions: Vec::new(),
        },
    };
    let existing = signed
        .versions
        .iter()
        .find(|v| v.version == version)
        .cloned();
    if let Some(v) = &existing {
        if v.sha256 != sha {
            return Err(invalid(
                format!(
                    "{} {version} is already published with other content (sha256 {} there, {sha} now)",
                    job.name, v.sha256
                ),
                "bump `version` in job.toml: a published version never changes",
            ));
        }
    }
    let first = signed.versions.is_empty();
    let has_canary = job.manifest.canary.is_some();
    if opts.channel == "stable" && has_canary && !first && !opts.force {
        return Err(invalid(
            format!(
                "{} has [canary]: after its first version, a new version is published to the canary channel and reaches stable by a promotion",
                job.name
            ),
            "publish with --channel canary; `cutover channel promote` is not in this version yet, so to point stable at it now pass --force (audited)",
        ));
    }
    if existing.is_none() {
        write_atomic(&artifact_path, &artifact)?;
        signed.versions.push(Version {
            version: version.clone(),
            sha256: sha.clone(),
            size,
            published_at: now.to_string(),
            actor: opts.actor.clone(),
            reason: opts.reason.clone(),
            ticket: opts.ticket.clone(),
        });
    }
    signed
        .channels
        .insert(opts.channel.clone(), version.clone());
    signed.seq += 1;
    signed.expires = jiff::Timestamp::from_second(now.as_second() + INDEX_LIFETIME_SECS)
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .to_string();
    let new = index::sign(signed, &opts.keys);
    let bytes =
        serde_json::to_vec_pretty(&new).map_err(|e| EngineError::Internal(e.to_string()))?;
    write_atomic(&index_path, &bytes)?;
    // Read back and verify what others will read.
    let back = read_limited(&index_path).map_err(EngineError::io(format!(
        "reading back {}",
        index_path.display()
    )))?;
    let verified = index::verify(&back, &expect(jiff::Timestamp::now(), false))
        .map_err(|e| EngineError::Refused(format!("{} as written: {e}", index_path.display())))?;
    let stored = std::fs::read(&artifact_path).map_err(EngineError::io(format!(
        "reading back {}",
        artifact_path.display()
    )))?;
    if hex(&Sha256::digest(&stored)) != sha {
        return Err(EngineError::Refused(format!(
            "{} does not have the sha256 the index records",
            artifact_path.display()
        )));
    }
    ctx.store
        .meta_put(&seen_key(&job.name), &verified.signed.seq.to_string())
        .await?;
    drop(lock);
    Ok(Published {
        job: job.name.clone(),
        version,
        sha256: sha,
        size,
        seq: verified.signed.seq,
        channels: verified.signed.channels,
        unchanged: existing.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_packs_of_one_tree_are_byte_identical() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(t.path().join("bin")).expect("dir");
        std::fs::write(t.path().join("Makefile"), "start:\n\ttrue\n").expect("w");
        std::fs::write(t.path().join("bin/run"), "#!/bin/sh\n").expect("w");
        std::fs::set_permissions(
            t.path().join("bin/run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("bin/run", t.path().join("run")).expect("link");
        let a = pack(t.path()).expect("pack");
        // Touch everything: new mtimes, another mode bit; same content.
        std::fs::write(t.path().join("Makefile"), "start:\n\ttrue\n").expect("w");
        std::fs::set_permissions(
            t.path().join("bin/run"),
            std::fs::Permissions::from_mode(0o750),
        )
        .expect("chmod");
        let b = pack(t.path()).expect("pack");
        assert_eq!(a, b);
        let tar = zstd::bulk::decompress(&a, 1 << 20).expect("zstd");
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<(String, u32)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path().expect("path").display().to_string(),
                    e.header().mode().expect("mode"),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("Makefile".to_string(), 0o644),
                ("bin".to_string(), 0o755),
                ("bin/run".to_string(), 0o755),
                ("run".to_string(), 0o777)
            ]
        );
    }
}
