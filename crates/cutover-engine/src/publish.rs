//! `cutover publish`: build a job, pack its output as a deterministic
//! `tar.zst`, upload it to the store (named by its content), and add it to
//! the job's signed release index with a compare-and-swap update: two
//! publishers never lose a version; the loser retries on the new index.

use std::path::Path;

use ed25519_dalek::SigningKey;
use serde::Serialize;

use cutover_index::{self as index, Version};

use crate::relstore::{ReleaseStore, Store};
use crate::{Context, EngineError};

pub struct PublishOptions {
    pub job: String,
    /// `stable` or `canary`.
    pub channel: String,
    pub keys: Vec<SigningKey>,
    pub force: bool,
    pub actor: String,
    pub reason: String,
    pub ticket: String,
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

/// Packs `dir` as a deterministic tar.zst: entries sorted, mtimes a
/// function of each file's content (0 for dirs and links), uid and gid 0, no user or group names, modes 0644 or 0755 (0755 for dirs
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
            if cutover_index::keyfile::is_private(&data) {
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
            // The mtime a shipped file of this content carries (a function
            // of its blake3, in a pax record for the nanoseconds): a worker
            // that unpacks the artifact itself ends with the very files a
            // push would have written.
            let ns = cutover_model::tree::shipped_mtime_ns(blake3::hash(&data).to_hex().as_str())
                .unwrap_or(0);
            let mtime = format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
            tar.append_pax_extensions([("mtime", mtime.as_bytes())])
                .map_err(io(format!("packing {}", rel.display())))?;
            h.set_mtime(u64::try_from(ns / 1_000_000_000).unwrap_or(0));
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

pub async fn publish(ctx: &Context, opts: &PublishOptions) -> Result<Published, EngineError> {
    let job = ctx.project.jobs.get(&opts.job).ok_or_else(|| {
        invalid(
            format!("no job named `{}`", opts.job),
            "name a job under jobs/",
        )
    })?;
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
    let store = Store::of_project(ctx)?;
    let trust = crate::keys::trust(ctx)?;
    crate::channel::index::check_signers(&trust, &opts.keys)?;

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
    // The output must be a real dir inside the job dir: what is packed is
    // published, and the project's .cutover/ (secrets) or .git/ never are.
    let inside = out_dir
        .canonicalize()
        .ok()
        .zip(job.dir.canonicalize().ok())
        .is_some_and(|(o, j)| o.starts_with(j));
    if !inside {
        return Err(invalid(
            format!(
                "the build output of {} ({}) is missing or outside jobs/{}/",
                job.name,
                out_dir.display(),
                job.name
            ),
            "[build] output names a dir inside the job dir, which the build command creates",
        ));
    }
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
    let stop_if_asked = || {
        if ctx.interrupt.is_set() {
            Err(EngineError::Failed(
                "interrupted: nothing was published (the store is unchanged)".into(),
            ))
        } else {
            Ok(())
        }
    };
    stop_if_asked()?;
    // Nothing is published that every deploy would refuse.
    crate::channel::artifact::check_links(&out_dir).map_err(|e| {
        invalid(
            format!(
                "the build output of {} ({}): {e}",
                job.name,
                out_dir.display()
            ),
            "a published symlink must point inside the artifact, and not through another symlink",
        )
    })?;
    let artifact = tokio::task::block_in_place(|| pack(&out_dir))?;
    let now = jiff::Timestamp::now();
    let new_version = Version {
        version: version.clone(),
        sha256: cutover_index::sha256_hex(&artifact),
        size: artifact.len() as u64,
        published_at: now.to_string(),
        actor: opts.actor.clone(),
        reason: opts.reason.clone(),
        ticket: opts.ticket.clone(),
    };
    // What the store's index says first (SPEC order): a version already
    // published with other content, or a stable publish of a job with
    // [canary], is refused before anything is uploaded. The update checks
    // again on the index it swaps.
    let admit = |signed: &index::Signed| -> Result<(), EngineError> {
        if let Some(v) = signed.version(&version) {
            if v.sha256 != new_version.sha256 {
                return Err(invalid(
                    format!(
                        "{} {version} is already published with other content (sha256 {} there, {} now)",
                        job.name, v.sha256, new_version.sha256
                    ),
                    "bump `version` in job.toml: a published version never changes",
                ));
            }
        }
        let first = signed.versions.is_empty();
        if opts.channel == "stable" && job.manifest.canary.is_some() && !first && !opts.force {
            return Err(invalid(
                format!(
                    "{} has [canary]: after its first version, a new version is published to the canary channel and reaches stable by a promotion",
                    job.name
                ),
                format!(
                    "publish with --channel canary, then `cutover channel promote {} --version {version}`; --force points stable at it now (audited)",
                    job.name
                ),
            ));
        }
        Ok(())
    };
    if let Some(current) = crate::channel::index::load(ctx, &store, &trust, &job.name, false)
        .await
        .map_err(crate::channel::index::explain_expired(&job.name))?
    {
        admit(&current.index.signed)?;
        // One more version must still fit the size every reader accepts:
        // checked before anything is uploaded.
        let size = serde_json::to_vec_pretty(&current.index).map_or(0, |b| b.len());
        if size + 2048 > index::MAX_BYTES {
            return Err(invalid(
                format!(
                    "the index of {} is {size} bytes with {} versions: one more would pass the 1 MiB every reader refuses",
                    job.name,
                    current.index.signed.versions.len()
                ),
                "start a new job name for a new series of versions",
            ));
        }
    }
    stop_if_asked()?;
    // Then the artifact, named by its content: a publish that loses the
    // index race, or dies here, leaves a file no index points at, never a
    // changed one.
    store
        .write_artifact(&job.name, &new_version, &artifact)
        .await?;
    let stored = store.read_artifact(&job.name, &new_version).await?;
    cutover_index::check_artifact(&new_version, &stored)
        .map_err(|e| EngineError::Refused(format!("{} as stored: {e}", store.url())))?;

    let mut unchanged = false;
    stop_if_asked()?;
    let index =
        crate::channel::index::update(ctx, &store, &trust, &opts.keys, &job.name, |signed| {
            admit(signed)?;
            let existing = signed.version(&version).cloned();
            unchanged = existing.is_some();
            if existing.is_none() {
                signed.versions.push(new_version.clone());
            }
            signed
                .channels
                .insert(opts.channel.clone(), version.clone());
            Ok(())
        })
        .await?;
    Ok(Published {
        job: job.name.clone(),
        version,
        sha256: new_version.sha256,
        size: new_version.size,
        seq: index.signed.seq,
        channels: index.signed.channels,
        unchanged,
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
