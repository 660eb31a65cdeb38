//! The validated project model: what cutover.toml, workers.toml and each
//! job.toml mean once every default is resolved. Built by [`crate::project`].

use std::path::PathBuf;
use std::time::Duration;

/// `cutover.toml`.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    pub name: String,
    pub main_branch: String,
    pub remote: String,
    pub state: StateBackend,
    pub ssh: SshSettings,
    pub store_url: Option<String>,
    /// `[store] worker_fetch`: workers download artifacts from the store.
    pub worker_fetch: bool,
    pub trust_public_keys: Vec<PathBuf>,
    pub trust_threshold: u32,
    /// `[trust] index_lifetime` (default 30 days).
    pub index_lifetime: std::time::Duration,
    /// `[templates] env`: which environment variables templates may read.
    pub template_env: EnvAllowList,
    /// `[serve] store_dir`: where `cutover serve` keeps the store it serves.
    pub serve_store_dir: Option<PathBuf>,
    /// `[serve] store_read_token`: the sha256 (hex) of the token that
    /// `/store` reads need; `None`: reads are anonymous.
    pub store_read_token: Option<String>,
}

/// The environment variable names (globs) that templates may read as `env`.
#[derive(Debug, Clone, Default)]
pub struct EnvAllowList {
    pub patterns: Vec<String>,
    pub(crate) set: globset::GlobSet,
}

impl EnvAllowList {
    pub fn allows(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// The allowed part of an environment.
    pub fn filter<'a>(
        &self,
        vars: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> std::collections::BTreeMap<String, String> {
        vars.into_iter()
            .filter(|(k, _)| self.allows(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateBackend {
    Sqlite,
    /// `url` is `None` when only `CUTOVER_STATE_URL` gives it. `lease`:
    /// how long a lock holder may go without a heartbeat before another
    /// operator takes the lock over.
    Postgres {
        url: Option<String>,
        lease: std::time::Duration,
    },
}

/// `[ssh]`: how every SSH worker is reached.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: KnownHostsPolicy,
    pub known_hosts_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    /// Hosts worked on at once.
    pub max_parallel: usize,
    pub connect_timeout: Duration,
    /// The limit on any one remote step (upload, lifecycle target, hook).
    pub command_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHostsPolicy {
    Strict,
    AcceptNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Ssh,
    Local,
}

/// One `[[worker]]` of workers.toml.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Worker {
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub labels: Vec<String>,
    /// The deploy root on the worker; for local workers, absolute after loading.
    pub root: String,
    pub transport: TransportKind,
    pub disabled: bool,
}

impl Worker {
    pub fn matches(&self, selectors: &[String]) -> bool {
        selectors.iter().all(|s| self.labels.contains(s))
    }

    /// Whether two workers reach the same deploy root on the same machine
    /// (a worker renamed in workers.toml is one): what one does to a job
    /// dir, the other sees.
    pub fn same_root_as(&self, other: &Worker, default_port: u16) -> bool {
        self.place(default_port) == other.place(default_port)
    }

    /// Where this worker's root is: the machine (this one for a local
    /// worker, whatever its `host`; else the host, case-insensitive, and
    /// port) and the root with `//`, `.`, `..` and a trailing `/` resolved.
    pub fn place(&self, default_port: u16) -> (String, u16, String) {
        let root = lexical_normal(std::path::Path::new(&self.root));
        match self.transport {
            TransportKind::Local => ("(local)".into(), 0, root),
            TransportKind::Ssh => (
                self.host.to_ascii_lowercase(),
                self.port.unwrap_or(default_port),
                root,
            ),
        }
    }

    /// Where a job lives on this worker.
    pub fn job_dir(&self, job: &str) -> String {
        format!("{}/jobs/{job}", self.root.trim_end_matches('/'))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartPolicy {
    Always,
    Reload,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    Halt,
    Revert,
}

#[derive(Debug, Clone, Default)]
pub struct HealthCheck {
    pub http: Option<String>,
    pub expect_status: u16,
    pub tcp: Option<String>,
    pub command: Option<String>,
    pub timeout: Duration,
    pub attempts: u32,
    pub interval: Duration,
}

impl HealthCheck {
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.tcp.is_none() && self.command.is_none()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre_deploy: Option<String>,
    pub post_deploy: Option<String>,
    pub after_allocation_started: Option<String>,
    pub after_allocation_stopped: Option<String>,
    pub job_control: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Backup {
    pub command: String,
    pub restore: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Build {
    pub command: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Canary {
    pub selectors: Vec<String>,
    pub count: Option<u32>,
    pub soak: Duration,
}

/// `jobs/<job>/job.toml`.
#[derive(Debug, Clone)]
pub struct JobManifest {
    pub version: String,
    pub selectors: Vec<String>,
    pub depends_on: Vec<String>,
    pub watch: Vec<String>,
    pub restart_policy: RestartPolicy,
    pub restart_globs: Vec<String>,
    /// 0 = all at once.
    pub max_concurrent_starts: usize,
    pub max_concurrent_upgrades: usize,
    pub keep_releases: usize,
    pub on_failure: OnFailure,
    pub health: HealthCheck,
    pub backup: Option<Backup>,
    /// `[certs]`: a certificate per allocation from the project CA.
    pub certs: Option<Certs>,
    pub build: Option<Build>,
    pub canary: Option<Canary>,
    pub hooks: Hooks,
}

/// `[certs]` of a job: each allocation gets `certs/ca.crt`,
/// `certs/<job>.crt` and `certs/<job>.key`, for the worker's host and
/// name plus `names`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certs {
    pub names: Vec<String>,
    pub validity: Duration,
}

/// A job: its name, its tree in the project, and its manifest.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// Absolute path of `jobs/<name>/`.
    pub dir: PathBuf,
    pub manifest: JobManifest,
}

impl Job {
    /// The job's `watch` globs as one set (project-relative paths); a glob
    /// that does not parse matches nothing (`check` reports it).
    pub fn watch_set(&self) -> globset::GlobSet {
        let mut b = globset::GlobSetBuilder::new();
        for g in &self.manifest.watch {
            if let Ok(g) = globset::Glob::new(g) {
                b.add(g);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    }
}

/// A path with `//`, `.`, `..` and a trailing `/` resolved as text (a
/// root is compared, never read, here).
pub fn lexical_normal(p: &std::path::Path) -> String {
    use std::path::Component;
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    format!("/{}", out.join("/"))
}
