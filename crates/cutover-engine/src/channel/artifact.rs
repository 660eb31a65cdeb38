//! Published artifacts on the operator's side: fetched from the store (or
//! the local cache), checked against the verified index (size, then
//! sha256) before anything reads them, and unpacked into a private dir
//! with every entry checked to stay inside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use cutover_index::{Index, Version};
use cutover_model::config::{Job, Worker};

use crate::relstore::{artifact_name, ReleaseStore, Store};
use crate::scratch::Scratch;
use crate::{Context, EngineError};

/// How long a worker's download URL stays valid.
const FETCH_VALID: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest unpacked artifact (a zip bomb stops here).
const MAX_UNPACKED: u64 = 8 << 30;

fn cache_path(ctx: &Context, job: &str, version: &Version) -> PathBuf {
    ctx.workspace
        .join("cache/artifacts")
        .join(job)
        .join(artifact_name(version))
}

/// An artifact's bytes, checked against the index.
pub struct Checked {
    pub bytes: Vec<u8>,
    /// They came from the local cache, which holds only artifacts that
    /// unpacked cleanly: no need to unpack them to know they do.
    pub unpacked_before: bool,
}

/// A version's artifact bytes, checked against the index (size, then
/// sha256): the cached copy (`.cutover/cache/artifacts/`) when it checks
/// out, else the store's. [`remember`] caches them once they unpacked.
pub async fn fetch(
    ctx: &Context,
    store: &Store,
    job: &str,
    version: &Version,
) -> Result<Checked, EngineError> {
    if let Ok(bytes) = std::fs::read(cache_path(ctx, job, version)) {
        if cutover_index::check_artifact(version, &bytes).is_ok() {
            return Ok(Checked {
                bytes,
                unpacked_before: true,
            });
        }
    }
    let bytes = store.read_artifact(job, version).await?;
    cutover_index::check_artifact(version, &bytes).map_err(|e| {
        EngineError::Refused(format!(
            "{}/{job}/{}: {e}",
            store.url(),
            artifact_name(version)
        ))
    })?;
    Ok(Checked {
        bytes,
        unpacked_before: false,
    })
}

/// Caches an artifact that unpacked cleanly.
pub fn remember(ctx: &Context, job: &str, version: &Version, bytes: &[u8]) {
    let cache = cache_path(ctx, job, version);
    if let Some(dir) = cache.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            let _ = crate::relstore::write_atomic(&cache, bytes);
        }
    }
}

/// Unpacks a checked artifact into `dir` (which must not exist). Only
/// files, dirs and symlinks; no entry may leave `dir`: no absolute path,
/// no `..`, no symlink whose target resolves outside.
pub fn unpack(bytes: &[u8], dir: &Path) -> Result<(), EngineError> {
    let bad = |what: String| EngineError::Refused(format!("the artifact {what}"));
    let tar =
        zstd::stream::read::Decoder::new(bytes).map_err(|e| bad(format!("is not zstd: {e}")))?;
    let mut archive = tar::Archive::new(std::io::Read::take(tar, MAX_UNPACKED + 1));
    std::fs::create_dir(dir).map_err(EngineError::io(format!("creating {}", dir.display())))?;
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("is not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("is damaged: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("has an unreadable name: {e}")))?
            .into_owned();
        if !inside(&path) {
            return Err(bad(format!(
                "entry `{}` would escape its directory",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(format!("has an unreadable link: {e}")))?
                    .ok_or_else(|| bad(format!("symlink `{}` has no target", path.display())))?;
                let base = path.parent().unwrap_or(Path::new(""));
                if target.is_absolute() || !inside(&base.join(&target)) {
                    return Err(bad(format!(
                        "symlink `{}` points outside it (to {})",
                        path.display(),
                        target.display()
                    )));
                }
            }
            other => {
                return Err(bad(format!(
                    "entry `{}` is a {other:?}: an artifact holds files, dirs and symlinks",
                    path.display()
                )))
            }
        }
        let unpacked = entry.unpack_in(dir).map_err(|e| {
            bad(format!(
                "entry `{}` cannot be unpacked: {e}",
                path.display()
            ))
        })?;
        if !unpacked {
            return Err(bad(format!(
                "entry `{}` would escape its directory",
                path.display()
            )));
        }
    }
    if archive.into_inner().limit() == 0 {
        return Err(bad("unpacks to more than 8 GiB".to_string()));
    }
    check_links(dir).map_err(bad)
}

/// Every symlink under `root` stays inside it: its target is relative,
/// stays inside by name, and does not pass through another symlink (which
/// could lead anywhere: `a -> .`, `c -> a/a/../..`). Used on what is
/// published and on what is unpacked.
pub fn check_links(root: &Path) -> Result<(), String> {
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.map_err(|e| format!("cannot be read: {e}"))?;
        if !entry.path_is_symlink() {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let target =
            std::fs::read_link(entry.path()).map_err(|e| format!("cannot be read: {e}"))?;
        let base = rel.parent().unwrap_or(Path::new(""));
        if target.is_absolute() || !inside(&base.join(&target)) {
            return Err(format!(
                "symlink `{}` points outside it (to {})",
                rel.display(),
                target.display()
            ));
        }
        // Walk the target by name from the link's dir: no step may be a
        // symlink itself.
        let mut at = root.join(base);
        for c in target.components() {
            match c {
                Component::Normal(name) => {
                    at.push(name);
                    if at
                        .symlink_metadata()
                        .is_ok_and(|m| m.file_type().is_symlink())
                    {
                        return Err(format!(
                            "symlink `{}` points through another symlink (to {})",
                            rel.display(),
                            target.display()
                        ));
                    }
                }
                Component::ParentDir => {
                    at.pop();
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether a relative path stays inside its root, resolving `..` by name.
fn inside(path: &Path) -> bool {
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The workers that get a job's canary: those matching `[canary]
/// selectors`, else the first `count` (default 1) of the job's workers,
/// in workers.toml order.
pub fn canary_workers<'a>(ctx: &'a Context, job: &'a Job) -> Vec<&'a Worker> {
    let all: Vec<&Worker> = ctx.project.workers_for(job).collect();
    let (selectors, count) = match &job.manifest.canary {
        Some(c) => (c.selectors.clone(), c.count),
        None => (Vec::new(), None),
    };
    let mut chosen: Vec<&Worker> = if selectors.is_empty() {
        all
    } else {
        all.into_iter().filter(|w| w.matches(&selectors)).collect()
    };
    let n = match (count, selectors.is_empty()) {
        (Some(n), _) => n as usize,
        (None, true) => 1,
        (None, false) => usize::MAX,
    };
    chosen.truncate(n);
    chosen
}

/// How workers download a version themselves (`[store] worker_fetch`).
#[derive(Debug, Clone)]
pub struct Fetch {
    /// A URL valid for the deploy (a presigned one for S3).
    pub url: String,
    pub version: Version,
    /// The artifact's files and symlinks, relative.
    pub paths: BTreeSet<String>,
}

/// A published job as a deploy rolls it out.
pub struct PublishedJob {
    pub index: Index,
    pub stable: Option<String>,
    pub canary: Option<String>,
    pub canary_workers: BTreeSet<String>,
    /// version -> its artifact, unpacked.
    pub dirs: BTreeMap<String, PathBuf>,
    /// version -> how workers fetch it, with `[store] worker_fetch`.
    pub fetch: BTreeMap<String, Fetch>,
}

impl PublishedJob {
    /// The version a worker runs: the canary on canary workers, else
    /// stable; `None` when neither channel points anywhere for it.
    pub fn version_for(&self, worker: &str) -> Option<&str> {
        match &self.canary {
            Some(c) if self.canary_workers.contains(worker) => Some(c),
            _ => self.stable.as_deref(),
        }
    }

    /// What the plan says of the job's source.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!(
            "published: stable {}",
            self.stable.as_deref().unwrap_or("(none)")
        )];
        if let Some(c) = &self.canary {
            let on: Vec<&str> = self.canary_workers.iter().map(String::as_str).collect();
            parts.push(format!("canary {c} on {}", on.join(", ")));
        }
        format!("{} (index seq {})", parts.join(", "), self.index.signed.seq)
    }
}

impl Published {
    /// The version the fleet view shows of each published job: stable.
    pub fn view_versions(&self) -> BTreeMap<String, String> {
        self.jobs
            .iter()
            .filter_map(|(j, p)| Some((j.clone(), p.stable.clone()?)))
            .collect()
    }
}

/// The published jobs of a deploy's scope, with their artifacts unpacked
/// in a private scratch dir (removed on drop).
#[derive(Default)]
pub struct Published {
    pub jobs: BTreeMap<String, PublishedJob>,
    _scratch: Option<Scratch>,
}

/// Which jobs in `scope` are published (have an index in the store), with
/// their verified artifacts. No `[store] url`: none is.
pub async fn for_deploy(
    ctx: &Context,
    scope: Option<&BTreeSet<String>>,
) -> Result<Published, EngineError> {
    if ctx.project.config.store_url.is_none() {
        return Ok(Published::default());
    }
    let store = Store::of_project(ctx)?;
    let worker_fetch = ctx.project.config.worker_fetch;
    if worker_fetch && matches!(store, Store::File(_)) {
        return Err(EngineError::usage(
            "[store] worker_fetch = true needs a store the workers can reach: this one is a directory on this machine",
            "use an s3:// store, or remove worker_fetch",
        ));
    }
    let mut out = Published::default();
    let mut trust = None;
    for job in ctx.project.jobs.values() {
        if scope.is_some_and(|s| !s.contains(&job.name)) {
            continue;
        }
        // One read per job: most projects publish few jobs. A job whose
        // job.toml has [build] or [canary] says it is published: without
        // an index it is refused, never deployed from the working tree
        // (an index deleted from the store must not switch signing off).
        let fetched = store.read_index(&job.name).await?;
        if fetched.is_none() && super::index::seen(ctx, &job.name).await?.is_none() {
            let declared = job.manifest.build.is_some() || job.manifest.canary.is_some();
            if declared {
                return Err(EngineError::Refused(format!(
                    "{}/{}/releases.json is missing: jobs/{}/job.toml has [build] or [canary], so it deploys only from its signed index (publish it with `cutover publish {}`)",
                    store.url(),
                    job.name,
                    job.name,
                    job.name
                )));
            }
            continue;
        }
        let trust = match &trust {
            Some(t) => t,
            None => trust.insert(crate::keys::trust(ctx)?),
        };
        let Some(loaded) =
            super::index::check(ctx, &store, trust, &job.name, fetched, false, false).await?
        else {
            continue;
        };
        let index = loaded.index;
        let scratch = match &out._scratch {
            Some(s) => s,
            None => out._scratch.insert(Scratch::create(
                &ctx.runtime_dir,
                "artifacts",
                &ctx.project.root,
            )?),
        };
        let stable = index.signed.channels.get("stable").cloned();
        let canary = index.signed.channels.get("canary").cloned();
        let mut dirs = BTreeMap::new();
        let mut fetches = BTreeMap::new();
        for v in stable.iter().chain(canary.iter()) {
            if dirs.contains_key(v) {
                continue;
            }
            let version = index.signed.version(v).ok_or_else(|| {
                EngineError::Refused(format!(
                    "the index of {} points a channel at {v}, which it does not list",
                    job.name
                ))
            })?;
            let checked = fetch(ctx, &store, &job.name, version).await?;
            let bytes = checked.bytes;
            let dir = scratch.path().join(&job.name).join(v);
            std::fs::create_dir_all(scratch.path().join(&job.name))
                .map_err(EngineError::io("creating the artifacts dir"))?;
            tokio::task::block_in_place(|| unpack(&bytes, &dir))?;
            if !checked.unpacked_before {
                remember(ctx, &job.name, version, &bytes);
            }
            if worker_fetch {
                if let Some(url) = store.fetch_url(&job.name, version, FETCH_VALID).await? {
                    let paths = walkdir::WalkDir::new(&dir)
                        .min_depth(1)
                        .into_iter()
                        .filter_map(Result::ok)
                        .filter(|e| !e.file_type().is_dir())
                        .filter_map(|e| {
                            Some(e.path().strip_prefix(&dir).ok()?.to_str()?.to_string())
                        })
                        .collect();
                    fetches.insert(
                        v.clone(),
                        Fetch {
                            url,
                            version: version.clone(),
                            paths,
                        },
                    );
                }
            }
            dirs.insert(v.clone(), dir);
        }
        let canary_workers = canary_workers(ctx, job)
            .into_iter()
            .map(|w| w.name.clone())
            .collect();
        out.jobs.insert(
            job.name.clone(),
            PublishedJob {
                index,
                stable,
                canary,
                canary_workers,
                dirs,
                fetch: fetches,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_are_caught() {
        assert!(inside(Path::new("a/b/../c")));
        assert!(inside(Path::new("./a")));
        assert!(!inside(Path::new("../a")));
        assert!(!inside(Path::new("a/../../b")));
        assert!(!inside(Path::new("/etc/passwd")));
    }
}
