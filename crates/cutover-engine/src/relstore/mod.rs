//! The release store: where published artifacts and each job's signed
//! index live (`[store] url`). Every store has the same layout under its
//! root: `<job>/releases.json` and `<job>/<version>.<sha256>.tar.zst`.
//! Artifacts are named by their content, so a file once written never
//! changes and two publishers never overwrite each other's.
//!
//! An index update is a compare-and-swap: it names the index it read (its
//! tag), and is refused when another has replaced it since; the caller
//! reads again and retries. The file store does that under an flock.

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_index::Version;

use crate::interrupt::Interrupt;
use crate::EngineError;

mod http;
pub use http::HttpStore;

/// What identifies one state of an index, for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(pub String);

/// An index as read, with its tag.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub tag: Tag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    Written,
    /// The index changed since it was read: read it again and retry.
    Conflict,
}

/// One release store.
pub trait ReleaseStore: Send + Sync {
    /// The store's URL, for messages.
    fn url(&self) -> &str;

    /// The job's index (at most `MAX_BYTES` + 1 bytes), or `None`.
    fn read_index(
        &self,
        job: &str,
    ) -> impl Future<Output = Result<Option<Fetched>, EngineError>> + Send;

    /// Writes the job's index if it is still `expected` (`None`: if there
    /// is none).
    fn write_index(
        &self,
        job: &str,
        bytes: &[u8],
        expected: Option<&Tag>,
    ) -> impl Future<Output = Result<Swap, EngineError>> + Send;

    /// A version's artifact: at most its recorded size + 1 bytes.
    fn read_artifact(
        &self,
        job: &str,
        version: &Version,
    ) -> impl Future<Output = Result<Vec<u8>, EngineError>> + Send;

    fn write_artifact(
        &self,
        job: &str,
        version: &Version,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// A URL a worker can download the artifact from by itself, valid for
    /// `valid`; `None` when the store is not reachable from workers.
    fn fetch_url(
        &self,
        job: &str,
        version: &Version,
        valid: std::time::Duration,
    ) -> impl Future<Output = Result<Option<String>, EngineError>> + Send;
}

/// Appends a read's `chunk` to `out`, never past `limit` bytes (more is
/// cut; the caller's size check refuses it); true once `out` is full.
fn fill(out: &mut Vec<u8>, chunk: &[u8], limit: u64) -> bool {
    let room = (limit as usize).saturating_sub(out.len());
    out.extend_from_slice(&chunk[..chunk.len().min(room)]);
    out.len() as u64 >= limit
}

/// The artifact's file name in the job's dir of the store.
pub fn artifact_name(version: &Version) -> String {
    format!("{}.{}.tar.zst", version.version, version.sha256)
}

/// The store `[store] url` names.
pub enum Store {
    File(FileStore),
    S3(S3Store),
    Http(HttpStore),
}

impl Store {
    /// Opens the store at `url` (`[store] url`, or `--index-url`). An S3
    /// store reads the usual AWS settings (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...)
    /// from `env`.
    pub fn open(
        url: &str,
        interrupt: Arc<Interrupt>,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<Store, EngineError> {
        if url.starts_with("s3://") {
            return Ok(Store::S3(S3Store::open(url, env)?));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(Store::Http(HttpStore::open(url, env)?));
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(EngineError::usage(
                    format!("store url `{url}` is not an absolute file:// path"),
                    "write file:///absolute/path",
                ));
            }
            return Ok(Store::File(FileStore {
                url: url.to_string(),
                root: PathBuf::from(path),
                interrupt,
            }));
        }
        Err(EngineError::usage(
            format!("store url `{url}` is not supported by this version of cutover"),
            "use file:///absolute/path, s3://bucket/prefix or http(s)://host:port (a `cutover serve`)",
        ))
    }

    /// The project's store (`[store] url`).
    pub fn of_project(ctx: &crate::Context) -> Result<Store, EngineError> {
        let url = ctx.project.config.store_url.as_deref().ok_or_else(|| {
            EngineError::usage(
                "no release store: cutover.toml has no [store] url",
                "add [store] url = \"file:///srv/cutover-store\"",
            )
        })?;
        Store::open(url, ctx.interrupt.clone(), &ctx.env)
    }
}

impl ReleaseStore for Store {
    fn url(&self) -> &str {
        match self {
            Store::File(s) => s.url(),
            Store::S3(s) => s.url(),
            Store::Http(s) => s.url(),
        }
    }

    async fn read_index(&self, job: &str) -> Result<Option<Fetched>, EngineError> {
        match self {
            Store::File(s) => s.read_index(job).await,
            Store::S3(s) => s.read_index(job).await,
            Store::Http(s) => s.read_index(job).await,
        }
    }

    async fn write_index(
        &self,
        job: &str,
        bytes: &[u8],
        expected: Option<&Tag>,
    ) -> Result<Swap, EngineError> {
        match self {
            Store::File(s) => s.write_index(job, bytes, expected).await,
            Store::S3(s) => s.write_index(job, bytes, expected).await,
            Store::Http(s) => s.write_index(job, bytes, expected).await,
        }
    }

    async fn read_artifact(&self, job: &str, version: &Version) -> Result<Vec<u8>, EngineError> {
        match self {
            Store::File(s) => s.read_artifact(job, version).await,
            Store::S3(s) => s.read_artifact(job, version).await,
            Store::Http(s) => s.read_artifact(job, version).await,
        }
    }

    async fn write_artifact(
        &self,
        job: &str,
        version: &Version,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        match self {
            Store::File(s) => s.write_artifact(job, version, bytes).await,
            Store::S3(s) => s.write_artifact(job, version, bytes).await,
            Store::Http(s) => s.write_artifact(job, version, bytes).await,
        }
    }

    async fn fetch_url(
        &self,
        job: &str,
        version: &Version,
        valid: std::time::Duration,
    ) -> Result<Option<String>, EngineError> {
        match self {
            Store::File(s) => s.fetch_url(job, version, valid).await,
            Store::S3(s) => s.fetch_url(job, version, valid).await,
            Store::Http(s) => s.fetch_url(job, version, valid).await,
        }
    }
}

/// A store in a directory (`file:///path`): on this machine or a shared
/// mount. Nothing is read or written through a symlink.
pub struct FileStore {
    url: String,
    root: PathBuf,
    interrupt: Arc<Interrupt>,
}

impl FileStore {
    /// The store in `root` (what `cutover serve` serves).
    pub fn at(root: PathBuf, interrupt: Arc<Interrupt>) -> FileStore {
        FileStore {
            url: format!("file://{}", root.display()),
            root,
            interrupt,
        }
    }

    /// The job's dir, made if missing; never a symlink.
    pub fn job_dir_made(&self, job: &str) -> Result<PathBuf, EngineError> {
        let dir = self.job_dir(job)?;
        make_dir(&dir)?;
        Ok(dir)
    }

    /// The job's dir if it exists and is no symlink.
    pub fn existing_job_dir(&self, job: &str) -> Result<PathBuf, EngineError> {
        let dir = self.job_dir(job)?;
        no_symlink(&dir)?;
        Ok(dir)
    }

    fn job_dir(&self, job: &str) -> Result<PathBuf, EngineError> {
        if !cutover_index::safe_name(job) {
            return Err(EngineError::Refused(format!(
                "job name `{job}` could escape the store's directory"
            )));
        }
        Ok(self.root.join(job))
    }

    /// Holds `<job>/.lock` until dropped; waits, saying so, while another
    /// publisher holds it, and gives up on a signal.
    async fn lock(&self, dir: &Path) -> Result<std::fs::File, EngineError> {
        let path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(EngineError::io(format!("opening {}", path.display())))?;
        let mut waited = 0u32;
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(lock),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if self.interrupt.is_set() {
                        return Err(EngineError::Failed(format!(
                            "interrupted while waiting for {}; the index was not written",
                            path.display()
                        )));
                    }
                    waited += 1;
                    if waited == 20 {
                        tracing_message(&format!(
                            "waiting for {} (another update of this index)",
                            path.display()
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(EngineError::io(format!("locking {}", path.display()))(e))
                }
            }
        }
    }
}

/// A note on stderr: the store has no reporter of its own.
fn tracing_message(text: &str) {
    eprintln!("{text}");
}

fn tag_of(bytes: &[u8]) -> Tag {
    Tag(cutover_index::sha256_hex(bytes))
}

impl ReleaseStore for FileStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn read_index(&self, job: &str) -> Result<Option<Fetched>, EngineError> {
        let dir = self.job_dir(job)?;
        blocking(move || {
            let path = dir.join("releases.json");
            no_symlink(&dir)?;
            no_symlink(&path)?;
            match read_limited(&path, cutover_index::MAX_BYTES as u64 + 1) {
                Ok(bytes) => Ok(Some(Fetched {
                    tag: tag_of(&bytes),
                    bytes,
                })),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(EngineError::io(format!("reading {}", path.display()))(e)),
            }
        })
        .await?
    }

    async fn write_index(
        &self,
        job: &str,
        bytes: &[u8],
        expected: Option<&Tag>,
    ) -> Result<Swap, EngineError> {
        let dir = self.job_dir(job)?;
        {
            let dir = dir.clone();
            blocking(move || make_dir(&dir)).await??;
        }
        let lock = self.lock(&dir).await?;
        let (bytes, expected) = (bytes.to_vec(), expected.cloned());
        blocking(move || {
            let path = dir.join("releases.json");
            no_symlink(&path)?;
            let now = match read_limited(&path, cutover_index::MAX_BYTES as u64 + 1) {
                Ok(b) => Some(tag_of(&b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(EngineError::io(format!("reading {}", path.display()))(e)),
            };
            sweep_tmp(&dir);
            if now != expected {
                return Ok(Swap::Conflict);
            }
            write_atomic(&path, &bytes)?;
            drop(lock);
            Ok(Swap::Written)
        })
        .await?
    }

    async fn read_artifact(&self, job: &str, version: &Version) -> Result<Vec<u8>, EngineError> {
        let dir = self.job_dir(job)?;
        let size = version.size;
        let name = artifact_name(version);
        blocking(move || {
            let path = dir.join(name);
            no_symlink(&dir)?;
            no_symlink(&path)?;
            match read_limited(&path, size + 1) {
                Ok(b) => Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(EngineError::Refused(
                    format!("{} is missing from the store", path.display()),
                )),
                Err(e) => Err(EngineError::io(format!("reading {}", path.display()))(e)),
            }
        })
        .await?
    }

    async fn write_artifact(
        &self,
        job: &str,
        version: &Version,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        let dir = self.job_dir(job)?;
        let (version, bytes) = (version.clone(), bytes.to_vec());
        blocking(move || {
            make_dir(&dir)?;
            let path = dir.join(artifact_name(&version));
            no_symlink(&path)?;
            // Named by content: one already there with the right bytes stays.
            if let Ok(there) = read_limited(&path, version.size + 1) {
                if cutover_index::check_artifact(&version, &there).is_ok() {
                    return Ok(());
                }
            }
            write_atomic(&path, &bytes)
        })
        .await?
    }

    /// A directory on the operator's machine is not the workers' to read.
    async fn fetch_url(
        &self,
        _job: &str,
        _version: &Version,
        _valid: std::time::Duration,
    ) -> Result<Option<String>, EngineError> {
        Ok(None)
    }
}

/// How long one file store operation may take (a hung mount must not
/// hang cutover).
const FILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs file work off the async runtime, for at most [`FILE_TIMEOUT`].
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    match tokio::time::timeout(FILE_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(EngineError::Internal(e.to_string())),
        Err(_) => Err(EngineError::Failed(
            "the file store did not answer within 60 s (a hung mount?)".into(),
        )),
    }
}

/// Removes the temporary files an interrupted write left in a job's dir
/// (`.<name>.<pid>.<nanos>.tmp`), once they are an hour old: a live
/// writer's are seconds old.
fn sweep_tmp(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if name.starts_with('.') && name.ends_with(".tmp") && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), EngineError> {
    no_symlink(dir)?;
    std::fs::create_dir_all(dir).map_err(EngineError::io(format!("creating {}", dir.display())))?;
    no_symlink(dir)
}

/// Writes `bytes` to `path` atomically: a new temporary file (never an
/// existing one, never through a symlink) renamed over it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
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

/// Reads at most `limit` bytes, never through a symlink.
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .take(limit)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// A store in an S3 bucket (`s3://bucket/prefix`): AWS, MinIO, R2 or any
/// S3 API with conditional writes. An index update is a PUT with
/// `If-Match` on the ETag read (`If-None-Match: *` for a first one).
pub struct S3Store {
    url: String,
    store: object_store::aws::AmazonS3,
    prefix: String,
}

/// How long one request to a remote store may take.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl S3Store {
    fn open(
        url: &str,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<S3Store, EngineError> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        let rest = url.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(EngineError::usage(
                format!("store url `{url}` names no bucket"),
                "write s3://bucket/prefix",
            ));
        }
        // Timeouts first: the environment's client settings
        // (AWS_ALLOW_HTTP, ...) go on top of them, not under.
        let mut builder = AmazonS3Builder::new().with_client_options(
            object_store::ClientOptions::new()
                .with_timeout(REQUEST_TIMEOUT)
                .with_connect_timeout(std::time::Duration::from_secs(10)),
        );
        for (key, value) in env.iter().filter(|(k, _)| k.starts_with("AWS_")) {
            if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(k, value);
            }
        }
        let store = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| {
                EngineError::usage(
                    format!("store url `{url}`: {e}"),
                    "set AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO or R2)",
                )
            })?;
        Ok(S3Store {
            url: url.trim_end_matches('/').to_string(),
            store,
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn path(&self, job: &str, name: &str) -> Result<object_store::path::Path, EngineError> {
        if !cutover_index::safe_name(job) {
            return Err(EngineError::Refused(format!(
                "job name `{job}` could escape the store's prefix"
            )));
        }
        let key = if self.prefix.is_empty() {
            format!("{job}/{name}")
        } else {
            format!("{}/{job}/{name}", self.prefix)
        };
        object_store::path::Path::parse(&key)
            .map_err(|e| EngineError::usage(format!("{}: {e}", self.url), "check [store] url"))
    }

    fn failed(&self, what: &str, e: object_store::Error) -> EngineError {
        // The whole chain: "builder error" alone says nothing.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let more = s.to_string();
            if !text.contains(&more) {
                text.push_str(&format!(": {more}"));
            }
            source = s.source();
        }
        EngineError::Failed(format!("{} {what}: {text}", self.url))
    }

    /// Reads an object, stopping after `limit` bytes; with its ETag.
    async fn get_limited(
        &self,
        path: &object_store::path::Path,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, EngineError> {
        use futures::StreamExt;
        use object_store::ObjectStore;
        let got = match self.store.get(path).await {
            Ok(g) => g,
            // A missing bucket is a setup problem, not a missing index.
            Err(e @ object_store::Error::NotFound { .. })
                if format!("{e:?}").contains("NoSuchBucket") =>
            {
                return Err(EngineError::usage(
                    format!("{}: the bucket does not exist", self.url),
                    "create it, or fix [store] url in cutover.toml",
                ))
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(&format!("reading {path}"), e)),
        };
        let tag = got.meta.e_tag.clone();
        let mut stream = got.into_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.failed(&format!("reading {path}"), e))?;
            if fill(&mut out, &chunk, limit) {
                break;
            }
        }
        Ok(Some((out, tag)))
    }
}

impl ReleaseStore for S3Store {
    fn url(&self) -> &str {
        &self.url
    }

    async fn read_index(&self, job: &str) -> Result<Option<Fetched>, EngineError> {
        let path = self.path(job, "releases.json")?;
        let limit = cutover_index::MAX_BYTES as u64 + 1;
        let Some((bytes, tag)) = self.get_limited(&path, limit).await? else {
            return Ok(None);
        };
        let tag = tag.filter(|t| !t.is_empty()).ok_or_else(|| {
            EngineError::Failed(format!(
                "{}/{job}/releases.json came without an ETag: this S3 API cannot update it safely (compare-and-swap needs ETags and If-Match)",
                self.url
            ))
        })?;
        Ok(Some(Fetched {
            tag: Tag(tag),
            bytes,
        }))
    }

    async fn write_index(
        &self,
        job: &str,
        bytes: &[u8],
        expected: Option<&Tag>,
    ) -> Result<Swap, EngineError> {
        use object_store::{ObjectStore, PutMode, PutOptions, UpdateVersion};
        let path = self.path(job, "releases.json")?;
        let mode = match expected {
            None => PutMode::Create,
            Some(tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(tag.0.clone()),
                version: None,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, bytes.to_vec().into(), opts)
            .await
        {
            Ok(_) => Ok(Swap::Written),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(Swap::Conflict),
            Err(e) => Err(self.failed(&format!("writing {path}"), e)),
        }
    }

    async fn read_artifact(&self, job: &str, version: &Version) -> Result<Vec<u8>, EngineError> {
        let path = self.path(job, &artifact_name(version))?;
        self.get_limited(&path, version.size + 1)
            .await?
            .map(|(bytes, _)| bytes)
            .ok_or_else(|| EngineError::Refused(format!("{}/{path} is missing", self.url)))
    }

    async fn write_artifact(
        &self,
        job: &str,
        version: &Version,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        use object_store::ObjectStore;
        let path = self.path(job, &artifact_name(version))?;
        // Named by content: one already there with the right bytes stays.
        if let Ok(Some((there, _))) = self.get_limited(&path, version.size + 1).await {
            if cutover_index::check_artifact(version, &there).is_ok() {
                return Ok(());
            }
        }
        self.store
            .put(&path, bytes.to_vec().into())
            .await
            .map(|_| ())
            .map_err(|e| self.failed(&format!("writing {path}"), e))
    }

    /// A presigned GET URL: the worker needs no credentials of its own.
    async fn fetch_url(
        &self,
        job: &str,
        version: &Version,
        valid: std::time::Duration,
    ) -> Result<Option<String>, EngineError> {
        use object_store::signer::Signer;
        let path = self.path(job, &artifact_name(version))?;
        self.store
            .signed_url(::http::Method::GET, &path, valid)
            .await
            .map(|u| Some(u.to_string()))
            .map_err(|e| self.failed(&format!("signing a URL for {path}"), e))
    }
}
