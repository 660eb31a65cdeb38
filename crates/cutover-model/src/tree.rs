//! A job's tree as it will land on one worker: the files of `jobs/<job>/`
//! (less job.toml), each `*.tpl` rendered for the allocation, and the hash
//! that decides whether the allocation needs a rollout.
//!
//! Content is hashed once per job ([`JobSource::scan`]); an allocation's
//! tree hash is computed from per-file hashes, so rendering a job for a
//! hundred workers costs a hundred template renders, not a hundred reads.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Job, Worker};
use crate::project::JOB_FILE;

const TEMPLATE_SUFFIX: &str = ".tpl";
/// Where a job with `[certs]` gets its certificates.
pub const CERTS_DIR: &str = "certs";
const SYMLINK_MODE: u32 = 0o120000;

/// What the state store remembers of each file of a promoted tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSig {
    pub mode: u32,
    pub hash: String,
}

/// Relative path -> signature, for every file of a tree.
pub type Manifest = BTreeMap<String, FileSig>;

/// What the store keeps of a promoted tree: the files shipped and the
/// inputs fingerprinted (job.toml, watched files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub files: Manifest,
    pub inputs: Manifest,
}

impl Promoted {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a stored record: this form, or the plain file manifest that
    /// cutover stored before it fingerprinted inputs (inputs unknown).
    pub fn parse(json: &str) -> Option<StoredTree> {
        if let Ok(p) = serde_json::from_str::<Promoted>(json) {
            return Some(StoredTree {
                files: p.files,
                inputs: Some(p.inputs),
            });
        }
        serde_json::from_str::<Manifest>(json)
            .ok()
            .map(|files| StoredTree {
                files,
                inputs: None,
            })
    }
}

/// A promoted tree as read back from the store.
#[derive(Debug, Clone)]
pub struct StoredTree {
    pub files: Manifest,
    /// `None` for a record older than input fingerprinting.
    pub inputs: Option<Manifest>,
}

#[derive(Debug, Clone)]
pub enum Content {
    Disk(PathBuf),
    Rendered(Arc<[u8]>),
    Symlink(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// Relative to the job dir, `/`-separated.
    pub path: String,
    pub mode: u32,
    pub hash: blake3::Hash,
    pub content: Content,
}

#[derive(Debug, Clone)]
struct Template {
    /// The output path (the source path without `.tpl`).
    path: String,
    source_path: String,
    mode: u32,
    text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is refused: {why}", path.display())]
    Refused { path: PathBuf, why: String },
    #[error("{file}: {message} (rendering for worker `{worker}`)")]
    Template {
        file: String,
        worker: String,
        message: String,
    },
}

/// A job's files, read and hashed once; templates kept as text.
#[derive(Debug, Clone)]
pub struct JobSource {
    pub job: String,
    files: Vec<Entry>,
    templates: Vec<Template>,
    /// What the fingerprint covers that is not shipped: job.toml and the
    /// files the job's `watch` matches, by project-relative path.
    inputs: Manifest,
    /// Total bytes of plain files, for throughput reports.
    pub bytes: u64,
}

impl JobSource {
    /// Reads the job dir and the job's inputs (`watch` globs are matched
    /// in the project, less its local workers' roots).
    pub fn scan(job: &Job, project: &crate::project::Project) -> Result<JobSource, TreeError> {
        let mut src = JobSource {
            job: job.name.clone(),
            files: Vec::new(),
            templates: Vec::new(),
            inputs: Manifest::new(),
            bytes: 0,
        };
        src.walk(&job.dir, job.manifest.certs.is_some())?;
        src.files.sort_by(|a, b| a.path.cmp(&b.path));
        let local_roots: Vec<PathBuf> = project
            .workers
            .iter()
            .filter(|w| w.transport == crate::config::TransportKind::Local)
            .map(|w| PathBuf::from(&w.root))
            .collect();
        src.inputs = inputs(job, &project.root, &local_roots)?;
        Ok(src)
    }

    /// Reads a published artifact, unpacked in `dir`, as the job's files.
    /// Its fingerprint is its content: job.toml and watched files of the
    /// working tree reach workers only through a publish.
    pub fn scan_artifact(job: &Job, dir: &Path) -> Result<JobSource, TreeError> {
        let mut src = JobSource {
            job: job.name.clone(),
            files: Vec::new(),
            templates: Vec::new(),
            inputs: Manifest::new(),
            bytes: 0,
        };
        src.walk(dir, job.manifest.certs.is_some())?;
        src.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(src)
    }

    pub fn file_count(&self) -> usize {
        self.files.len() + self.templates.len()
    }

    /// blake3 over what was read: each file's path, mode and content hash,
    /// each template's path, mode and text. Two reads with the same digest
    /// read the same tree.
    pub fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for e in &self.files {
            h.update(e.path.as_bytes());
            h.update(&[0]);
            h.update(&e.mode.to_le_bytes());
            h.update(e.hash.as_bytes());
        }
        h.update(&[0xff]);
        for t in &self.templates {
            h.update(t.source_path.as_bytes());
            h.update(&[0]);
            h.update(&t.mode.to_le_bytes());
            h.update(blake3::hash(t.text.as_bytes()).as_bytes());
        }
        h.finalize()
    }

    /// Reads every file of the job dir. Anything cutover cannot ship
    /// faithfully is refused with its path, before anything is changed.
    fn walk(&mut self, dir: &Path, certs: bool) -> Result<(), TreeError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TreeError::Io { path, source }
        };
        let job = self.job.clone();
        let refuse = |path: &Path, why: &str| TreeError::Refused {
            path: Path::new("jobs")
                .join(&job)
                .join(path.strip_prefix(dir).unwrap_or(path)),
            why: why.to_string(),
        };
        // What lands where on the worker: one source per path.
        let mut outputs: BTreeMap<String, PathBuf> = BTreeMap::new();
        let claim = |outputs: &mut BTreeMap<String, PathBuf>, at: &str, path: &Path| {
            match outputs.insert(at.to_string(), path.to_path_buf()) {
                None => Ok(()),
                Some(first) => Err(refuse(
                    path,
                    &format!(
                        "it and jobs/{job}/{} would both land on the worker as {at}; rename or remove one",
                        first.strip_prefix(dir).unwrap_or(&first).display()
                    ),
                )),
            }
        };
        for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(dir).to_path_buf();
                TreeError::Io {
                    path,
                    source: e.into(),
                }
            })?;
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap_or(path);
            // Paths are compared, hashed and sent as text: a name that is
            // not UTF-8 would be merged with another one.
            let Some(rel) = rel.to_str().map(str::to_string) else {
                return Err(refuse(path, "its name is not UTF-8; rename it"));
            };
            if rel == JOB_FILE {
                continue;
            }
            if certs && (rel == CERTS_DIR || rel.starts_with(&format!("{CERTS_DIR}/"))) {
                // cutover writes certs/ itself: a file, a dir or a symlink
                // of the job's there would be overwritten, or written
                // through.
                return Err(refuse(
                    path,
                    "the job has [certs], and cutover writes certs/ itself; rename it",
                ));
            }
            let kind = entry.file_type();
            if kind.is_dir() {
                // A dir takes its name on the worker too (`conf/` beside
                // `conf.tpl` would collide).
                claim(&mut outputs, &rel, path)?;
                continue;
            }
            if !kind.is_file() && !kind.is_symlink() {
                // Reading a FIFO blocks forever; sockets and devices are
                // not content.
                return Err(refuse(
                    path,
                    "it is a FIFO, socket or device file; a job tree holds only files, dirs and symlinks",
                ));
            }
            let meta = entry.metadata().map_err(|e| TreeError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
            let mode = meta.permissions().mode() & 0o7777;
            let out_path = match rel.strip_suffix(TEMPLATE_SUFFIX) {
                Some(out) if kind.is_file() => out.to_string(),
                _ => rel.clone(),
            };
            claim(&mut outputs, &out_path, path)?;
            if kind.is_symlink() {
                let target = std::fs::read_link(path).map_err(io_err(path))?;
                let hash = blake3::hash(target.as_os_str().as_encoded_bytes());
                self.files.push(Entry {
                    path: rel,
                    mode: SYMLINK_MODE,
                    hash,
                    content: Content::Symlink(target),
                });
            } else if out_path != rel {
                let text = std::fs::read_to_string(path).map_err(io_err(path))?;
                self.templates.push(Template {
                    path: out_path,
                    source_path: rel,
                    mode,
                    text,
                });
            } else {
                let mut hasher = blake3::Hasher::new();
                let file = std::fs::File::open(path).map_err(io_err(path))?;
                hasher.update_reader(file).map_err(io_err(path))?;
                self.bytes += meta.len();
                self.files.push(Entry {
                    path: rel,
                    mode,
                    hash: hasher.finalize(),
                    content: Content::Disk(path.to_path_buf()),
                });
            }
        }
        Ok(())
    }

    /// Renders the tree for one allocation. An undefined variable is an error.
    pub fn render(
        &self,
        job: &Job,
        worker: &Worker,
        ctx: &RenderContext<'_>,
    ) -> Result<Tree, TreeError> {
        let mut entries = self.files.clone();
        if !self.templates.is_empty() {
            let env = environment();
            for t in &self.templates {
                let fail = |e: minijinja::Error| TreeError::Template {
                    file: format!("jobs/{}/{}{}", job.name, t.source_path, line_of(&e)),
                    worker: worker.name.clone(),
                    message: describe_in(&e, &t.text),
                };
                let kv = TrackedKv::new(ctx);
                let vars = vars(
                    job,
                    worker,
                    ctx,
                    minijinja::Value::from_dyn_object(kv.clone()),
                );
                let out = env.render_str(&t.text, &vars).map_err(fail)?;
                let bytes: Arc<[u8]> = Arc::from(out.into_bytes());
                // A file that holds a secret is for the job's user alone.
                let mode = if kv.read_secret() {
                    t.mode & 0o700
                } else {
                    t.mode
                };
                entries.push(Entry {
                    path: t.path.clone(),
                    mode,
                    hash: blake3::hash(&bytes),
                    content: Content::Rendered(bytes),
                });
            }
            entries.sort_by(|a, b| a.path.cmp(&b.path));
        }
        Ok(Tree {
            hash: fingerprint(&entries, &job.manifest.version, &self.inputs),
            entries,
            inputs: self.inputs.clone(),
        })
    }
}

/// blake3 over the sorted entries' paths, modes and content hashes, the
/// job version and the inputs; hex.
fn fingerprint(entries: &[Entry], version: &str, inputs: &Manifest) -> String {
    let mut hasher = blake3::Hasher::new();
    for e in entries {
        hasher.update(e.path.as_bytes());
        hasher.update(&[0]);
        hasher.update(&e.mode.to_le_bytes());
        hasher.update(e.hash.as_bytes());
    }
    hasher.update(b"version\0");
    hasher.update(version.as_bytes());
    for (path, sig) in inputs {
        hasher.update(b"input\0");
        hasher.update(path.as_bytes());
        hasher.update(&[0]);
        hasher.update(&sig.mode.to_le_bytes());
        hasher.update(sig.hash.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// job.toml and every file under `root` that the job's `watch` matches
/// (`.git/`, `.cutover/` and local workers' roots aside: what deploys
/// write must not change what they fingerprint), by project-relative path.
fn inputs(job: &Job, root: &Path, skip: &[PathBuf]) -> Result<Manifest, TreeError> {
    let mut out = Manifest::new();
    let mut add = |rel: String, path: &Path| -> Result<(), TreeError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| TreeError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let (mode, hash) = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| TreeError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
            (
                SYMLINK_MODE,
                blake3::hash(target.as_os_str().as_encoded_bytes()),
            )
        } else if meta.is_file() {
            let mut hasher = blake3::Hasher::new();
            std::fs::File::open(path)
                .and_then(|f| hasher.update_reader(f).map(|_| ()))
                .map_err(|e| TreeError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })?;
            (meta.permissions().mode() & 0o7777, hasher.finalize())
        } else {
            return Ok(()); // a FIFO or device is never read
        };
        out.insert(
            rel,
            FileSig {
                mode,
                hash: hash.to_hex().to_string(),
            },
        );
        Ok(())
    };
    let manifest = job.dir.join(JOB_FILE);
    add(format!("jobs/{}/{JOB_FILE}", job.name), &manifest)?;
    if job.manifest.watch.is_empty() {
        return Ok(out);
    }
    let watch = job.watch_set();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let vcs = e.depth() == 1 && matches!(e.file_name().to_str(), Some(".git" | ".cutover"));
            !vcs && !skip.iter().any(|s| e.path() == s)
        });
    for entry in walk {
        let entry = entry.map_err(|e| TreeError::Io {
            path: e.path().unwrap_or(root).to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        let Some(rel) = rel.to_str() else { continue };
        if watch.is_match(rel) {
            add(rel.to_string(), entry.path())?;
        }
    }
    Ok(out)
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

fn vars(
    job: &Job,
    worker: &Worker,
    ctx: &RenderContext<'_>,
    kv: minijinja::Value,
) -> minijinja::Value {
    minijinja::context! {
        worker => minijinja::context! {
            name => &worker.name,
            host => &worker.host,
            labels => &worker.labels,
            root => &worker.root,
        },
        job => minijinja::context! {
            name => &job.name,
            version => &job.manifest.version,
        },
        kv => kv,
        env => ctx.env,
        fleet => minijinja::Value::from_serialize(ctx.fleet),
    }
}

/// Renders one manifest string (a health URL, a restore command) for an
/// allocation, with the same variables and strictness as `*.tpl` files.
pub fn render_str(
    text: &str,
    job: &Job,
    worker: &Worker,
    ctx: &RenderContext<'_>,
) -> Result<String, String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.to_string());
    }
    environment()
        .render_str(
            text,
            vars(job, worker, ctx, minijinja::Value::from(ctx.kv.clone())),
        )
        .map_err(|e| describe_in(&e, text))
}

fn line_of(e: &minijinja::Error) -> String {
    e.line().map(|l| format!(":{l}")).unwrap_or_default()
}

/// Like [`describe`], and for an undefined value, the expression that
/// named it (`undefined variable kv.no_such_key`), read off the source.
fn describe_in(e: &minijinja::Error, source: &str) -> String {
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        let expr = e
            .range()
            .and_then(|r| source.get(r))
            .map(str::trim)
            .filter(|x| !x.is_empty() && !x.contains('\n'));
        if let Some(expr) = expr {
            return format!("undefined variable {expr}");
        }
    }
    describe(e)
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg = format!("{msg}: {detail}");
        }
    }
    msg
}

/// `kv` as templates see it: a map that notes whether a secret was read.
#[derive(Debug)]
struct TrackedKv {
    values: BTreeMap<String, String>,
    secrets: std::collections::BTreeSet<String>,
    read_secret: std::sync::atomic::AtomicBool,
}

impl TrackedKv {
    fn new(ctx: &RenderContext<'_>) -> Arc<TrackedKv> {
        Arc::new(TrackedKv {
            values: ctx.kv.clone(),
            secrets: ctx.secrets.clone(),
            read_secret: false.into(),
        })
    }

    fn read_secret(&self) -> bool {
        self.read_secret.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl minijinja::value::Object for TrackedKv {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let key = key.as_str()?;
        let value = self.values.get(key)?;
        if self.secrets.contains(key) {
            self.read_secret
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Some(minijinja::Value::from(value.as_str()))
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let keys: Vec<minijinja::Value> = self
            .values
            .keys()
            .map(|k| minijinja::Value::from(k.as_str()))
            .collect();
        minijinja::value::Enumerator::Values(keys)
    }
}

/// What templates may read besides the worker and the job.
#[derive(Debug)]
pub struct RenderContext<'a> {
    pub kv: &'a BTreeMap<String, String>,
    /// Which of `kv` are secrets: a file that reads one is made private.
    pub secrets: &'a std::collections::BTreeSet<String>,
    pub env: &'a BTreeMap<String, String>,
    /// Which jobs run where: `fleet.jobs.<job>.workers`, `fleet.workers`.
    pub fleet: &'a crate::view::FleetView,
}

/// One allocation's rendered tree.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Sorted by path.
    pub entries: Vec<Entry>,
    /// blake3 over paths, modes and contents, plus the job version and
    /// the inputs; hex.
    pub hash: String,
    /// job.toml and the watched files (project-relative), fingerprinted
    /// but not shipped.
    pub inputs: Manifest,
}

impl Tree {
    /// Adds files cutover makes for the allocation (its certificates) to
    /// the tree, and fingerprints it again. A file of the job's own at one
    /// of those paths is refused.
    pub fn with_generated(
        mut self,
        job: &Job,
        files: Vec<(String, Vec<u8>, u32)>,
    ) -> Result<Tree, TreeError> {
        if files.is_empty() {
            return Ok(self);
        }
        for (path, bytes, mode) in files {
            if self.entries.iter().any(|e| e.path == path) {
                return Err(TreeError::Refused {
                    path: Path::new("jobs").join(&job.name).join(&path),
                    why: "cutover writes this path itself ([certs] in job.toml); rename the file"
                        .into(),
                });
            }
            self.entries.push(Entry {
                hash: blake3::hash(&bytes),
                path,
                mode,
                content: Content::Rendered(Arc::from(bytes)),
            });
        }
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        self.hash = fingerprint(&self.entries, &job.manifest.version, &self.inputs);
        Ok(self)
    }

    pub fn manifest(&self) -> Manifest {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.path.clone(),
                    FileSig {
                        mode: e.mode,
                        hash: e.hash.to_hex().to_string(),
                    },
                )
            })
            .collect()
    }

    /// Writes the tree into `dir` (which must not exist), for rsync to send.
    pub fn stage(&self, dir: &Path, linkable: Option<&Path>) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for e in &self.entries {
            let dest = dir.join(&e.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match &e.content {
                Content::Disk(src) => {
                    let linked = linkable.is_some_and(|root| src.starts_with(root))
                        && std::fs::hard_link(src, &dest).is_ok();
                    if !linked {
                        std::fs::copy(src, &dest)?;
                    }
                }
                Content::Rendered(bytes) => std::fs::write(&dest, bytes)?,
                Content::Symlink(target) => {
                    std::os::unix::fs::symlink(target, &dest)?;
                    continue;
                }
            }
            // The owner may set the mtime through a read-only handle, so a
            // read-only file is no obstacle.
            std::fs::File::open(&dest)?.set_modified(content_mtime(&e.hash))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode))?;
        }
        Ok(())
    }
}

/// A modification time derived from the content hash.
///
/// rsync's quick check (size and mtime) decides which files `--link-dest`
/// hard-links from the previous release and which it sends. Staged files
/// get an mtime that is a function of their content: 29 bits of the hash in
/// the seconds (always in the past, 2001 to 2018, so make never sees a file
/// from the future) and 30 bits in the nanoseconds, which rsync compares
/// with `--modify-window=-1`. Two files then pass the quick check together
/// only if they have the same size and the same 59 hash bits.
fn content_mtime(hash: &blake3::Hash) -> std::time::SystemTime {
    let b = hash.as_bytes();
    let secs = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 3);
    let nanos = (u32::from_le_bytes([b[4], b[5], b[6], b[7]]) >> 2) % 1_000_000_000;
    std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000 + secs, nanos)
}

/// The mtime (nanoseconds since the epoch) a shipped file with this
/// content hash (hex) carries on the worker; `None` if it is not a hash.
pub fn shipped_mtime_ns(hash_hex: &str) -> Option<i128> {
    let hash = blake3::Hash::from_hex(hash_hex).ok()?;
    let t = content_mtime(&hash)
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i128::try_from(t.as_nanos()).ok()
}

/// Whether a manifest entry is a symlink (its hash is of the target).
pub fn is_symlink(sig: &FileSig) -> bool {
    sig.mode == SYMLINK_MODE
}

/// Paths whose content or mode differs between two manifests, sorted.
pub fn changed_paths(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut out: Vec<String> = new
        .iter()
        .filter(|(p, sig)| old.get(*p) != Some(sig))
        .map(|(p, _)| p.clone())
        .chain(old.keys().filter(|p| !new.contains_key(*p)).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}
