//! Published artifacts on the operator's side: fetched from the store (or
//! the local cache), checked against the verified index (size, then
//! sha256) before anything reads them, and unpacked into a private dir
//! with every entry checked to stay inside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use cutover_index::{Index, Version};
use cutover_model::config::{Job, Worker};
use cutover_model::tree::JobSource;

use crate::relstore::{artifact_name, ReleaseStore, Store};
use crate::{Context, EngineError};

/// How long a worker's download URL stays valid.
const FETCH_VALID: std::time::Duration = std::time::Duration::from_secs(3600);

/// The largest unpacked artifact (a zip bomb stops here).
const MAX_UNPACKED: u64 = 8 << 30;

/// A version's artifact, unpacked and checked, and its files as read.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub dir: PathBuf,
    /// The tree read (and hashed) once checked: what a deploy renders.
    pub source: std::sync::Arc<JobSource>,
}

/// The unpacked artifacts: `.cutover/cache/trees/`.
pub fn cache_root(ctx: &Context) -> PathBuf {
    ctx.workspace.join("cache/trees")
}

/// The key that seals this machine's cached trees, kept outside the cache
/// so that whoever can write the cache (a CI cache restored, a copy from
/// elsewhere) cannot seal a tree of their own.
fn cache_key(ctx: &Context) -> Result<cutover_state::SecretKey, EngineError> {
    Ok(cutover_state::SecretKey::load_or_create(
        &ctx.workspace.join("cache.key"),
    )?)
}

/// The seal of a tree: its digest, bound to the signed sha256 of the
/// artifact it was unpacked from, under the cache key.
fn seal(key: &cutover_state::SecretKey, version: &Version, source: &JobSource) -> String {
    let digest = source.digest();
    key.seal(&[version.sha256.as_bytes(), b"\0", digest.as_bytes()].concat())
}

/// A cache dir, made private (0700) if it is not, refused if it is a
/// symlink: the cache is read, written and pruned only in its own dirs.
fn private_dir(path: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = EngineError::io(format!("making {}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if m.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
            }
            Ok(())
        }
        Ok(_) => Err(EngineError::Refused(format!(
            "{} is not a dir (a symlink?): cutover keeps its cache there itself; remove it",
            path.display()
        ))),
        Err(_) => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io),
    }
}

/// A version's artifact, unpacked: the cached tree when its seal checks,
/// else the artifact fetched from the store, checked against the verified
/// index (size, then sha256), unpacked and sealed. A cached tree is read
/// and hashed again each time (the deploy ships what was read), and its
/// seal binds what was read to the signed sha256 under a key only this
/// machine holds: a tree that changed, or that was sealed elsewhere, is
/// set aside and fetched again. The cache saves the fetch, the sha256 and
/// the unpack, never a check of what ships.
pub async fn unpacked(
    ctx: &Context,
    store: &Store,
    job: &Job,
    version: &Version,
) -> Result<Unpacked, EngineError> {
    Ok(unpacked_alongside(ctx, store, job, version, async {})
        .await?
        .0)
}

/// The largest artifact whose unpacking runs alongside other work (a few
/// seconds of it): what runs alongside may open connections that must not
/// idle long (60 s) before they are used.
const ALONGSIDE_MAX: u64 = 256 << 20;

/// [`unpacked`], with `meanwhile` run alongside the local work: the
/// checks, the unpack and the read of the tree, which run off this thread.
/// It starts once the artifact is at hand (a cached tree whose seal
/// checks, or an artifact fetched and no larger than [`ALONGSIDE_MAX`]),
/// never while the fetch waits on the network; otherwise after the unpack.
/// When the local work fails, `meanwhile` is dropped: the error comes at
/// once.
pub(crate) async fn unpacked_alongside<T>(
    ctx: &Context,
    store: &Store,
    job: &Job,
    version: &Version,
    meanwhile: impl std::future::Future<Output = T>,
) -> Result<(Unpacked, T), EngineError> {
    let (start, started) = tokio::sync::oneshot::channel::<()>();
    let meanwhile = async {
        started.await.ok()?;
        Some(meanwhile.await)
    };
    let work = unpack_cached(ctx, store, job, version, start);
    tokio::pin!(work, meanwhile);
    let mut out = None;
    let unpacked = loop {
        tokio::select! {
            r = &mut work => break r?,
            o = &mut meanwhile, if out.is_none() => out = Some(o),
        }
    };
    let out = match out {
        Some(o) => o,
        None => meanwhile.await,
    };
    let out =
        out.ok_or_else(|| EngineError::Internal("the unpack never let its work start".into()))?;
    Ok((unpacked, out))
}

async fn unpack_cached(
    ctx: &Context,
    store: &Store,
    job: &Job,
    version: &Version,
    start: tokio::sync::oneshot::Sender<()>,
) -> Result<Unpacked, EngineError> {
    let mut start = Some(start);
    let mut go = || {
        if let Some(s) = start.take() {
            let _ = s.send(());
        }
    };
    let root = cache_root(ctx);
    let cache = root.parent().unwrap_or(&ctx.workspace);
    let parent = root.join(&job.name);
    for dir in [cache, &root, &parent] {
        private_dir(dir)?;
    }
    let name = format!("{}.{}", version.version, version.sha256);
    let dir = parent.join(&name);
    let seal_file = parent.join(format!("{name}.seal"));
    let key = cache_key(ctx)?;
    // One run at a time fills or sets aside a job's trees.
    let lock_path = parent.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(EngineError::io(format!("opening {}", lock_path.display())))?;
    tokio::task::block_in_place(|| lock.lock())
        .map_err(EngineError::io(format!("locking {}", lock_path.display())))?;
    // Held by the unpack too: a run dropped mid-unpack (a second signal)
    // keeps the lock until the unpack it started has sealed its tree.
    let lock = std::sync::Arc::new(lock);

    let cached = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
    if cached {
        let read = blocking({
            let (job, dir) = (job.clone(), dir.clone());
            move || Ok(JobSource::scan_artifact(&job, &dir))
        })
        .await?;
        let sealed = std::fs::read_to_string(&seal_file).ok();
        match read {
            Ok(source)
                if sealed.as_deref().map(str::trim) == Some(&seal(&key, version, &source)) =>
            {
                go();
                return Ok(Unpacked {
                    dir,
                    source: std::sync::Arc::new(source),
                });
            }
            // No seal at all: a run that ended before it sealed the tree.
            _ if sealed.is_none() => set_aside(&parent, &dir)?,
            _ => {
                ctx.reporter.event(&crate::events::Event::Message {
                    text: format!(
                        "warning: the cached tree of {} {} ({}) is not as it was unpacked here; it is set aside and the artifact fetched again",
                        job.name,
                        version.version,
                        dir.display()
                    ),
                });
                set_aside(&parent, &dir)?;
            }
        }
    }
    let bytes = store.read_artifact(&job.name, version).await?;
    if version.size <= ALONGSIDE_MAX {
        go();
    }
    let at = format!("{}/{}/{}", store.url(), job.name, artifact_name(version));
    let source = blocking({
        let (job, version) = (job.clone(), version.clone());
        let (parent, dir, lock) = (parent.clone(), dir.clone(), lock.clone());
        move || {
            let _lock = lock;
            cutover_index::check_artifact(&version, &bytes)
                .map_err(|e| EngineError::Refused(format!("{at}: {e}")))?;
            let io =
                |what: &'static str| EngineError::io(format!("{what} in {}", parent.display()));
            sweep_unfinished(&parent);
            let scratch = tempfile::Builder::new()
                .prefix(&format!("{UNFINISHED}{}-", std::process::id()))
                .tempdir_in(&parent)
                .map_err(io("unpacking"))?;
            let at = scratch.path().join("tree");
            unpack(&bytes, &at)?;
            if std::fs::symlink_metadata(&dir).is_ok() {
                set_aside(&parent, &dir)?;
            }
            std::fs::rename(&at, &dir).map_err(io("caching an unpacked artifact"))?;
            let source = JobSource::scan_artifact(&job, &dir)?;
            crate::relstore::write_atomic(&seal_file, seal(&key, &version, &source).as_bytes())?;
            Ok(source)
        }
    })
    .await?;
    go();
    Ok(Unpacked {
        dir,
        source: std::sync::Arc::new(source),
    })
}

/// Runs `f` on the blocking pool, leaving this task free to run what was
/// joined with it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("a blocking task failed: {e}")))?
}

/// Moves a tree out of the way (then removes it): it is never used again.
fn set_aside(parent: &Path, dir: &Path) -> Result<(), EngineError> {
    let aside = tempfile::Builder::new()
        .prefix(&format!("{UNFINISHED}{}-", std::process::id()))
        .tempdir_in(parent)
        .map_err(EngineError::io(format!("setting {} aside", dir.display())))?;
    std::fs::rename(dir, aside.path().join("old"))
        .map_err(EngineError::io(format!("setting {} aside", dir.display())))?;
    Ok(())
}

/// The prefix of a tree being unpacked or set aside, with its run's pid.
const UNFINISHED: &str = ".unpack-";

/// Removes what a run that no longer exists left unfinished.
fn sweep_unfinished(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(UNFINISHED)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How many cached trees of a job are kept beyond those its channels
/// point at (the versions a rollback most likely wants).
const KEEP_TREES: usize = 3;

/// Drops a job's cached trees but those of `keep` (names as cached) and
/// the newest [`KEEP_TREES`] others (the store holds them all), and seals
/// left without their tree. Only names the cache gives (`<version>.<64 hex>`)
/// are touched, never through a symlink. Run under the project lock.
pub fn prune(ctx: &Context, published: &Published) {
    for (job, p) in &published.jobs {
        let keep: BTreeSet<String> = p
            .dirs
            .values()
            .filter_map(|t| Some(t.dir.file_name()?.to_str()?.to_string()))
            .collect();
        prune_trees(ctx, job, &keep);
    }
}

fn prune_trees(ctx: &Context, job: &str, keep: &BTreeSet<String>) {
    let dir = cache_root(ctx).join(job);
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let cached = |name: &str| {
        name.rsplit_once('.').is_some_and(|(v, hash)| {
            !v.is_empty()
                && !v.starts_with('.')
                && hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
        })
    };
    let mut trees = Vec::new();
    let mut seals = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        if let Some(tree) = name.strip_suffix(".seal") {
            if cached(tree) && meta.is_file() {
                seals.push(tree.to_string());
            }
        } else if cached(&name) && meta.is_dir() && !keep.contains(&name) {
            if let Ok(t) = meta.modified() {
                trees.push((t, name));
            }
        }
    }
    trees.sort();
    let drop = trees.len().saturating_sub(KEEP_TREES);
    for (_, name) in trees.into_iter().take(drop) {
        // The seal first: a tree without one is never used.
        let _ = std::fs::remove_file(dir.join(format!("{name}.seal")));
        let _ = std::fs::remove_dir_all(dir.join(&name));
    }
    for tree in seals {
        if std::fs::symlink_metadata(dir.join(&tree)).is_err() {
            let _ = std::fs::remove_file(dir.join(format!("{tree}.seal")));
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
    pub dirs: BTreeMap<String, Unpacked>,
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
/// (in the cache).
#[derive(Default)]
pub struct Published {
    pub jobs: BTreeMap<String, PublishedJob>,
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
            let tree = unpacked(ctx, &store, job, version).await?;
            if worker_fetch {
                if let Some(url) = store.fetch_url(&job.name, version, FETCH_VALID).await? {
                    let dir = &tree.dir;
                    let paths = walkdir::WalkDir::new(dir)
                        .min_depth(1)
                        .into_iter()
                        .filter_map(Result::ok)
                        .filter(|e| !e.file_type().is_dir())
                        .filter_map(|e| {
                            Some(e.path().strip_prefix(dir).ok()?.to_str()?.to_string())
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
            dirs.insert(v.clone(), tree);
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
