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
const SYMLINK_MODE: u32 = 0o120000;

/// What the state store remembers of each file of a promoted tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSig {
    pub mode: u32,
    pub hash: String,
}

/// Relative path -> signature, for every file of a tree.
pub type Manifest = BTreeMap<String, FileSig>;

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
    #[error("{file}: template error for worker `{worker}`: {message}")]
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
    /// Total bytes of plain files, for throughput reports.
    pub bytes: u64,
}

impl JobSource {
    pub fn scan(job: &Job) -> Result<JobSource, TreeError> {
        let mut src = JobSource {
            job: job.name.clone(),
            files: Vec::new(),
            templates: Vec::new(),
            bytes: 0,
        };
        src.walk(&job.dir, "")?;
        Ok(src)
    }

    pub fn file_count(&self) -> usize {
        self.files.len() + self.templates.len()
    }

    fn walk(&mut self, dir: &Path, prefix: &str) -> Result<(), TreeError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TreeError::Io { path, source }
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .collect::<Result<_, _>>()
            .map_err(io_err(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if rel == JOB_FILE {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_err(&path))?;
                let hash = blake3::hash(target.as_os_str().as_encoded_bytes());
                self.files.push(Entry {
                    path: rel,
                    mode: SYMLINK_MODE,
                    hash,
                    content: Content::Symlink(target),
                });
            } else if meta.is_dir() {
                self.walk(&path, &rel)?;
            } else if let Some(out) = rel.strip_suffix(TEMPLATE_SUFFIX) {
                let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                self.templates.push(Template {
                    path: out.to_string(),
                    source_path: rel.clone(),
                    mode,
                    text,
                });
            } else {
                let mut hasher = blake3::Hasher::new();
                let file = std::fs::File::open(&path).map_err(io_err(&path))?;
                hasher.update_reader(file).map_err(io_err(&path))?;
                self.bytes += meta.len();
                self.files.push(Entry {
                    path: rel,
                    mode,
                    hash: hasher.finalize(),
                    content: Content::Disk(path),
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
            let vars = vars(job, worker, ctx);
            for t in &self.templates {
                let fail = |e: minijinja::Error| TreeError::Template {
                    file: format!("jobs/{}/{}{}", job.name, t.source_path, line_of(&e)),
                    worker: worker.name.clone(),
                    message: describe(&e),
                };
                let out = env.render_str(&t.text, &vars).map_err(fail)?;
                let bytes: Arc<[u8]> = Arc::from(out.into_bytes());
                entries.push(Entry {
                    path: t.path.clone(),
                    mode: t.mode,
                    hash: blake3::hash(&bytes),
                    content: Content::Rendered(bytes),
                });
            }
            entries.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let mut hasher = blake3::Hasher::new();
        for e in &entries {
            hasher.update(e.path.as_bytes());
            hasher.update(&[0]);
            hasher.update(&e.mode.to_le_bytes());
            hasher.update(e.hash.as_bytes());
        }
        hasher.update(b"version\0");
        hasher.update(job.manifest.version.as_bytes());
        Ok(Tree {
            hash: hasher.finalize().to_hex().to_string(),
            entries,
        })
    }
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

fn vars(job: &Job, worker: &Worker, ctx: &RenderContext<'_>) -> minijinja::Value {
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
        kv => ctx.kv,
        env => ctx.env,
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
        .render_str(text, vars(job, worker, ctx))
        .map_err(|e| describe(&e))
}

fn line_of(e: &minijinja::Error) -> String {
    e.line().map(|l| format!(":{l}")).unwrap_or_default()
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

/// What templates may read besides the worker and the job.
#[derive(Debug)]
pub struct RenderContext<'a> {
    pub kv: &'a BTreeMap<String, String>,
    pub env: &'a BTreeMap<String, String>,
}

/// One allocation's rendered tree.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Sorted by path.
    pub entries: Vec<Entry>,
    /// blake3 over paths, modes and contents, plus the job version; hex.
    pub hash: String,
}

impl Tree {
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
    pub fn stage(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for e in &self.entries {
            let dest = dir.join(&e.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match &e.content {
                Content::Disk(src) => {
                    std::fs::copy(src, &dest)?;
                }
                Content::Rendered(bytes) => std::fs::write(&dest, bytes)?,
                Content::Symlink(target) => {
                    std::os::unix::fs::symlink(target, &dest)?;
                    continue;
                }
            }
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(e.mode))?;
            std::fs::File::options()
                .write(true)
                .open(&dest)?
                .set_modified(content_mtime(&e.hash))?;
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
