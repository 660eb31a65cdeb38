//! Loading a project: read cutover.toml, workers.toml and every job.toml,
//! check them against their schema, resolve defaults, and check what spans
//! files (selector labels, `depends_on` targets and cycles, duplicates).
//! Every problem is collected; nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::*;
use crate::diag::{Diagnostic, Diagnostics, SourceFile};
use crate::duration::parse_duration;
use crate::schema;

pub const PROJECT_FILE: &str = "cutover.toml";
pub const WORKERS_FILE: &str = "workers.toml";
pub const JOB_FILE: &str = "job.toml";

/// Facts from outside the project files that loading needs. The CLI fills
/// this in; nothing in this crate reads the environment.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// For `~/` in paths.
    pub home: Option<PathBuf>,
}

/// A loaded, validated project.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub config: ProjectConfig,
    /// In workers.toml order.
    pub workers: Vec<Worker>,
    pub jobs: BTreeMap<String, Job>,
}

/// Whether `name` can be a certificate's subject alternative name: an IP
/// address, or an ASCII DNS name (a leading `*.` for a wildcard).
pub fn san_name(name: &str) -> Result<(), &'static str> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.is_empty() || name.len() > 253 {
        return Err("empty or too long");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("an empty or too long label");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("only ASCII letters, digits and `-` may appear in a label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with `-`");
        }
    }
    Ok(())
}

/// The `version` a job.toml's text declares, if it parses and has one
/// (for reading a job's version at another commit).
pub fn manifest_version(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("version")?.as_str().map(str::to_string)
}

impl Project {
    /// The first directory at or above `start` holding a cutover.toml.
    pub fn find_root(start: &Path) -> Option<PathBuf> {
        start
            .ancestors()
            .find(|dir| dir.join(PROJECT_FILE).is_file())
            .map(Path::to_path_buf)
    }

    pub fn load(root: &Path, opts: &LoadOptions) -> Result<Project, Diagnostics> {
        Loader {
            root,
            opts,
            diags: Diagnostics::default(),
        }
        .load()
    }

    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.iter().find(|w| w.name == name)
    }

    /// The workers a job runs on: enabled and carrying every selector label.
    pub fn workers_for<'a>(&'a self, job: &'a Job) -> impl Iterator<Item = &'a Worker> + 'a {
        self.workers
            .iter()
            .filter(move |w| !w.disabled && w.matches(&job.manifest.selectors))
    }

    /// Jobs grouped into waves: a job's wave comes after every wave holding
    /// one of its dependencies. Loading has already refused cycles.
    pub fn waves(&self) -> Vec<Vec<String>> {
        let mut level: BTreeMap<&str, usize> = BTreeMap::new();
        fn depth<'a>(
            p: &'a Project,
            job: &'a str,
            level: &mut BTreeMap<&'a str, usize>,
            seen: &mut BTreeSet<&'a str>,
        ) -> usize {
            if let Some(l) = level.get(job) {
                return *l;
            }
            if !seen.insert(job) {
                return 0; // a cycle; refused at load time
            }
            let deps = p
                .jobs
                .get(job)
                .map(|j| j.manifest.depends_on.as_slice())
                .unwrap_or_default();
            let l = deps
                .iter()
                .filter(|d| p.jobs.contains_key(d.as_str()))
                .map(|d| depth(p, d, level, seen) + 1)
                .max()
                .unwrap_or(0);
            level.insert(job, l);
            l
        }
        for name in self.jobs.keys() {
            depth(self, name, &mut level, &mut BTreeSet::new());
        }
        let max = level.values().copied().max().map_or(0, |m| m + 1);
        let mut waves = vec![Vec::new(); max];
        for (job, l) in level {
            waves[l].push(job.to_string());
        }
        waves
    }
}

struct Loader<'a> {
    root: &'a Path,
    opts: &'a LoadOptions,
    diags: Diagnostics,
}

/// Reads a file and checks it against its schema; `None` when unusable.
fn read_source(
    root: &Path,
    rel: &Path,
    shape: &schema::Shape,
    diags: &mut Diagnostics,
) -> Option<SourceFile> {
    let text = match std::fs::read_to_string(root.join(rel)) {
        Ok(t) => t,
        Err(e) => {
            diags.push(
                Diagnostic::file(rel, format!("cannot read: {e}"))
                    .with_help("run `cutover init` to create a project"),
            );
            return None;
        }
    };
    let src = SourceFile::new(rel, text);
    let found = schema::check(&src, shape);
    let syntax_error = found.iter().any(|d| !d.message.starts_with("unknown key"));
    diags.0.extend(found);
    (!syntax_error).then_some(src)
}

/// Deserializes a checked source into its raw (spanned) form.
fn typed<T: for<'de> Deserialize<'de>>(src: &SourceFile, diags: &mut Diagnostics) -> Option<T> {
    match toml::from_str::<T>(&src.text) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.message().trim().to_string();
            // Unknown keys were reported by the schema pass already.
            if !msg.starts_with("unknown field") {
                diags.push(src.diag(e.span().unwrap_or(0..0), msg));
            }
            None
        }
    }
}

#[derive(Deserialize, Default)]
struct RawProject {
    name: Option<String>,
    main_branch: Option<String>,
    remote: Option<String>,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    ssh: RawSsh,
    store: Option<RawStore>,
    serve: Option<RawServe>,
    trust: Option<RawTrust>,
    #[serde(default)]
    templates: RawTemplates,
}

#[derive(Deserialize, Default)]
struct RawTemplates {
    #[serde(default)]
    env: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
struct RawState {
    backend: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    lease: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
struct RawSsh {
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<String>,
    known_hosts: Option<Spanned<String>>,
    known_hosts_file: Option<String>,
    config_file: Option<String>,
    max_parallel: Option<Spanned<u32>>,
    connect_timeout: Option<Spanned<String>>,
    command_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawStore {
    url: Option<Spanned<String>>,
    worker_fetch: Option<bool>,
}

#[derive(Deserialize)]
struct RawServe {
    store_dir: Option<String>,
    store_read_token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawTrust {
    #[serde(default)]
    public_keys: Vec<String>,
    threshold: Option<Spanned<u32>>,
    index_lifetime: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
struct RawWorkers {
    #[serde(default)]
    worker: Vec<Spanned<RawWorker>>,
}

#[derive(Deserialize)]
struct RawWorker {
    name: Option<Spanned<String>>,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    root: Option<Spanned<String>>,
    transport: Option<Spanned<String>>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Deserialize, Default)]
struct RawJob {
    version: Option<String>,
    #[serde(default)]
    selectors: Vec<Spanned<String>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    watch: Vec<Spanned<String>>,
    restart_policy: Option<Spanned<String>>,
    restart_globs: Option<Spanned<Vec<Spanned<String>>>>,
    max_concurrent_starts: Option<u32>,
    max_concurrent_upgrades: Option<Spanned<u32>>,
    keep_releases: Option<Spanned<u32>>,
    on_failure: Option<Spanned<String>>,
    health: Option<RawHealth>,
    backup: Option<RawBackup>,
    certs: Option<RawCerts>,
    build: Option<RawBuild>,
    canary: Option<RawCanary>,
    #[serde(default)]
    hooks: RawHooks,
}

#[derive(Deserialize)]
struct RawCerts {
    #[serde(default)]
    names: Vec<Spanned<String>>,
    validity: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawHealth {
    http: Option<String>,
    expect_status: Option<u16>,
    tcp: Option<String>,
    command: Option<String>,
    timeout: Option<Spanned<String>>,
    attempts: Option<Spanned<u32>>,
    interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawBackup {
    command: Option<String>,
    restore: Option<String>,
}

#[derive(Deserialize)]
struct RawBuild {
    command: Option<String>,
    output: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawCanary {
    #[serde(default)]
    selectors: Vec<Spanned<String>>,
    count: Option<Spanned<u32>>,
    soak: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
struct RawHooks {
    pre_deploy: Option<String>,
    post_deploy: Option<String>,
    after_allocation_started: Option<String>,
    after_allocation_stopped: Option<String>,
    job_control: Option<String>,
}

/// A path with `//`, `/./` and a trailing `/` removed (`..` is kept: it may
/// cross a symlink).
fn normal_path(p: &Path) -> String {
    p.components()
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
}

/// The shortest `[state] lease`.
const MIN_LEASE: Duration = Duration::from_secs(2);

/// Why a worker or job name cannot be used, if it cannot: names become
/// state records, lines of the release state file and paths on workers.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.len() > 64 {
        return Some("is longer than 64 characters");
    }
    if name.starts_with(['.', '-']) {
        return Some("starts with `.` or `-`");
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!name.chars().all(ok))
        .then_some("holds a character other than letters, digits, `_`, `-` and `.`")
}

/// Parses one of a fixed set of words, reporting the choices on a mismatch.
fn choice<T: Copy>(
    src: &SourceFile,
    key: &str,
    value: &Option<Spanned<String>>,
    options: &[(&str, T)],
    default: T,
    diags: &mut Diagnostics,
) -> T {
    let Some(v) = value else { return default };
    match options
        .iter()
        .find(|(name, _)| *name == v.get_ref().as_str())
    {
        Some((_, t)) => *t,
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            diags.push(
                src.diag(v.span(), format!("`{}` is not a valid {key}", v.get_ref()))
                    .with_help(format!("{key} is one of: {}", names.join(", "))),
            );
            default
        }
    }
}

fn duration(
    src: &SourceFile,
    key: &str,
    value: &Option<Spanned<String>>,
    default: Duration,
    diags: &mut Diagnostics,
) -> Duration {
    let Some(v) = value else { return default };
    match parse_duration(v.get_ref()) {
        Ok(d) => d,
        Err(e) => {
            diags.push(src.diag(v.span(), format!("{key}: {e}")).with_help(
                "write a duration such as \"500ms\", \"5s\", \"10m\", \"1h30m\" or \"30d\"",
            ));
            default
        }
    }
}

impl Loader<'_> {
    fn load(mut self) -> Result<Project, Diagnostics> {
        let config = self.load_config();
        let default_port = config.as_ref().map_or(22, |c| c.ssh.port);
        let workers = self.load_workers(default_port);
        let jobs = self.load_jobs(&workers);
        match (config, workers) {
            (Some(config), Some(workers)) if self.diags.is_empty() => Ok(Project {
                root: self.root.to_path_buf(),
                config,
                workers,
                jobs,
            }),
            _ => {
                if self.diags.is_empty() {
                    self.diags.push(Diagnostic::file(
                        PROJECT_FILE,
                        "the project could not be loaded",
                    ));
                }
                Err(self.diags)
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        match (p.strip_prefix("~/"), &self.opts.home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => self.root.join(p),
        }
    }

    fn load_config(&mut self) -> Option<ProjectConfig> {
        let src = read_source(
            self.root,
            Path::new(PROJECT_FILE),
            &schema::PROJECT,
            &mut self.diags,
        )?;
        let raw: RawProject = typed(&src, &mut self.diags)?;
        let d = &mut self.diags;
        let backend = choice(
            &src,
            "state backend",
            &raw.state.backend,
            &[("sqlite", 0u8), ("postgres", 1u8)],
            0,
            d,
        );
        let state = if backend == 1 {
            StateBackend::Postgres {
                // Else CUTOVER_STATE_URL, checked when the store is opened:
                // the password stays out of git.
                url: raw.state.url.as_ref().map(|u| {
                    // cutover.toml is committed: a password there is in git.
                    let userinfo = u
                        .get_ref()
                        .split_once("://")
                        .and_then(|(_, rest)| rest.rsplit_once('@'))
                        .map(|(info, _)| info);
                    if userinfo.is_some_and(|i| i.contains(':')) {
                        d.push(
                            src.diag(u.span(), "url: holds a password, and cutover.toml is committed")
                                .with_help("remove the password from url and give the whole URL in CUTOVER_STATE_URL, which overrides it"),
                        );
                    }
                    u.get_ref().clone()
                }),
                lease: {
                    let lease =
                        duration(&src, "lease", &raw.state.lease, Duration::from_secs(30), d);
                    if let (Some(v), true) = (&raw.state.lease, lease < MIN_LEASE) {
                        d.push(
                            src.diag(v.span(), "lease: shorter than 2s")
                                .with_help("a live holder writes its heartbeat every quarter of the lease; a shorter one would be taken over while it works"),
                        );
                    }
                    lease
                },
            }
        } else {
            StateBackend::Sqlite
        };
        let known_hosts = choice(
            &src,
            "known_hosts policy",
            &raw.ssh.known_hosts,
            &[
                ("strict", KnownHostsPolicy::Strict),
                ("accept-new", KnownHostsPolicy::AcceptNew),
            ],
            KnownHostsPolicy::Strict,
            d,
        );
        let max_parallel = match &raw.ssh.max_parallel {
            Some(m) if *m.get_ref() == 0 => {
                d.push(src.diag(m.span(), "max_parallel must be at least 1"));
                1
            }
            Some(m) => *m.get_ref() as usize,
            None => 64,
        };
        let ssh = SshSettings {
            user: raw.ssh.user.clone(),
            port: raw.ssh.port.unwrap_or(22),
            identity_file: raw.ssh.identity_file.as_deref().map(|p| self.path(p)),
            known_hosts,
            known_hosts_file: raw.ssh.known_hosts_file.as_deref().map(|p| self.path(p)),
            config_file: raw.ssh.config_file.as_deref().map(|p| self.path(p)),
            max_parallel,
            connect_timeout: duration(
                &src,
                "connect_timeout",
                &raw.ssh.connect_timeout,
                Duration::from_secs(10),
                &mut self.diags,
            ),
            command_timeout: duration(
                &src,
                "command_timeout",
                &raw.ssh.command_timeout,
                Duration::from_secs(600),
                &mut self.diags,
            ),
        };
        let name = raw.name.clone().unwrap_or_else(|| {
            self.root
                .file_name()
                .map_or("project".into(), |n| n.to_string_lossy().into_owned())
        });
        let trust = raw.trust.as_ref();
        let template_env = self.template_env(&src, &raw.templates.env);
        // What every command that uses them would refuse, said at its line.
        if let Some(u) = raw.store.as_ref().and_then(|s| s.url.as_ref()) {
            let url = u.get_ref();
            let ok = match url.split_once("://") {
                Some(("file", path)) => path.starts_with('/'),
                Some(("s3", rest)) => !rest.split('/').next().unwrap_or("").is_empty(),
                // A `cutover serve` is its host and port: its store is at
                // `/store`, and a path would name nothing.
                Some(("http" | "https", rest)) => {
                    let rest = rest.trim_end_matches('/');
                    !rest.is_empty() && !rest.contains(['@', '/', '?', '#'])
                }
                _ => false,
            };
            if !ok {
                self.diags.push(
                    src.diag(
                        u.span(),
                        format!("store.url `{url}` is not a store this cutover can use"),
                    )
                    .with_help(
                        "write file:///absolute/path, s3://bucket/prefix or http(s)://host:port (a `cutover serve`)",
                    ),
                );
            }
        }
        let serve = raw.serve.as_ref();
        let store_read_token = serve.and_then(|s| s.store_read_token.as_ref()).and_then(|t| {
            let hex = t
                .get_ref()
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if hex.is_none() {
                self.diags.push(
                    src.diag(t.span(), "serve.store_read_token is not a sha256 hash")
                        .with_help(
                            "write \"sha256:<64 hex digits>\", the hash of the token (`printf %s TOKEN | sha256sum`); the token itself never goes into cutover.toml",
                        ),
                );
            }
            hex.map(str::to_ascii_lowercase)
        });
        if let Some(t) = trust
            .and_then(|t| t.threshold.as_ref())
            .filter(|t| *t.get_ref() == 0)
        {
            self.diags.push(
                src.diag(
                    t.span(),
                    "trust.threshold is 0: every index would need no signature",
                )
                .with_help("a threshold is at least 1"),
            );
        }
        let index_lifetime = duration(
            &src,
            "trust.index_lifetime",
            &trust.and_then(|t| t.index_lifetime.clone()),
            Duration::from_secs(30 * 86_400),
            &mut self.diags,
        );
        if index_lifetime < Duration::from_secs(3600) {
            if let Some(v) = trust.and_then(|t| t.index_lifetime.as_ref()) {
                self.diags.push(
                    src.diag(v.span(), "trust.index_lifetime is under an hour")
                        .with_help(
                        "an index must outlive a publish and its rollout; the default is \"30d\"",
                    ),
                );
            }
        }
        Some(ProjectConfig {
            name,
            main_branch: raw.main_branch.unwrap_or_else(|| "main".into()),
            remote: raw.remote.unwrap_or_else(|| "origin".into()),
            state,
            ssh,
            store_url: raw
                .store
                .as_ref()
                .and_then(|s| s.url.as_ref())
                .map(|u| u.get_ref().clone()),
            worker_fetch: raw
                .store
                .as_ref()
                .and_then(|s| s.worker_fetch)
                .unwrap_or(false),
            index_lifetime,
            serve_store_dir: serve
                .and_then(|s| s.store_dir.as_deref())
                .map(|d| self.path(d)),
            store_read_token,
            trust_public_keys: trust
                .map(|t| t.public_keys.iter().map(|p| self.path(p)).collect())
                .unwrap_or_default(),
            trust_threshold: trust
                .and_then(|t| t.threshold.as_ref())
                .map_or(1, |t| *t.get_ref()),
            template_env,
        })
    }

    /// `[templates] env`: the globs of environment variable names that
    /// templates may read as `env.NAME`. Nothing else of the operator's
    /// environment reaches a worker.
    fn template_env(&mut self, src: &SourceFile, globs: &[Spanned<String>]) -> EnvAllowList {
        let mut builder = globset::GlobSetBuilder::new();
        let mut patterns = Vec::new();
        for g in globs {
            match globset::GlobBuilder::new(g.get_ref())
                .literal_separator(true)
                .build()
            {
                Ok(glob) => {
                    builder.add(glob);
                    patterns.push(g.get_ref().clone());
                }
                Err(e) => self.diags.push(
                    src.diag(
                        g.span(),
                        format!("`{}` is not a valid glob: {e}", g.get_ref()),
                    )
                    .with_help("write names or globs such as \"APP_*\""),
                ),
            }
        }
        let set = builder
            .build()
            .unwrap_or_else(|_| globset::GlobSet::empty());
        EnvAllowList { patterns, set }
    }

    fn load_workers(&mut self, default_port: u16) -> Option<Vec<Worker>> {
        let src = read_source(
            self.root,
            Path::new(WORKERS_FILE),
            &schema::WORKERS,
            &mut self.diags,
        )?;
        let raw: RawWorkers = typed(&src, &mut self.diags)?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut places: BTreeMap<(String, u16, String), String> = BTreeMap::new();
        let mut workers = Vec::new();
        for entry in &raw.worker {
            let w = entry.get_ref();
            let Some(name) = &w.name else {
                self.diags.push(
                    src.diag(entry.span(), "a [[worker]] has no `name`")
                        .with_help("give every worker a unique name = \"...\""),
                );
                continue;
            };
            if let Some(first_line) = seen.get(name.get_ref()) {
                self.diags.push(
                    src.diag(
                        name.span(),
                        format!("duplicate worker name `{}`", name.get_ref()),
                    )
                    .with_help(format!(
                        "worker names must be unique; `{}` is first defined on line {first_line}",
                        name.get_ref()
                    )),
                );
                continue;
            }
            if let Some(problem) = name_problem(name.get_ref()) {
                self.diags.push(
                    src.diag(
                        name.span(),
                        format!("worker name `{}` {problem}", name.get_ref().escape_debug()),
                    )
                    .with_help(
                        "worker names are letters, digits, `_`, `-` and `.` (they name state records and files)",
                    ),
                );
                continue;
            }
            seen.insert(name.get_ref().clone(), src.location(name.span().start).0);
            let transport = choice(
                &src,
                "transport",
                &w.transport,
                &[("ssh", TransportKind::Ssh), ("local", TransportKind::Local)],
                TransportKind::Ssh,
                &mut self.diags,
            );
            let host = match (&w.host, transport) {
                (Some(h), _) => h.clone(),
                (None, TransportKind::Local) => "localhost".into(),
                (None, TransportKind::Ssh) => {
                    self.diags.push(
                        src.diag(
                            name.span(),
                            format!("worker `{}` has no `host`", name.get_ref()),
                        )
                        .with_help("set host = \"address or ssh alias\", or transport = \"local\""),
                    );
                    continue;
                }
            };
            let root = match &w.root {
                None => "/opt/cutover".to_string(),
                Some(r) if r.get_ref().starts_with('/') => normal_path(Path::new(r.get_ref())),
                Some(r) if transport == TransportKind::Local => {
                    normal_path(&self.root.join(r.get_ref()))
                }
                Some(r) => {
                    self.diags.push(
                        src.diag(
                            r.span(),
                            "the root of an ssh worker must be an absolute path",
                        )
                        .with_help("write root = \"/opt/cutover\" or another absolute path"),
                    );
                    continue;
                }
            };
            // A local root that holds the project, or lies in its jobs/,
            // .cutover/ or .git/, would be shipped, fingerprinted or
            // overwritten by the deploys that write it.
            if transport == TransportKind::Local {
                let project = lexical_normal(self.root);
                let at = lexical_normal(Path::new(&root));
                let inside = |dir: &str| {
                    let d = format!("{}/{dir}", project.trim_end_matches('/'));
                    at == d || at.starts_with(&format!("{d}/"))
                };
                let holds_project =
                    project == at || project.starts_with(&format!("{}/", at.trim_end_matches('/')));
                if holds_project || inside("jobs") || inside(".cutover") || inside(".git") {
                    let span = w.root.as_ref().map_or(name.span(), |r| r.span());
                    self.diags.push(
                        src.diag(
                            span,
                            format!(
                                "the root of local worker `{}` overlaps the project ({root})",
                                name.get_ref()
                            ),
                        )
                        .with_help(
                            "give it a dir of its own: outside the project, or inside it but not the project dir itself nor under jobs/, .cutover/ or .git/ (the example uses local-workers/NAME)",
                        ),
                    );
                    continue;
                }
            }
            // One place on disk, however it is written: a port left to the
            // default is the default port, `/srv//x/../x/` is `/srv/x`, a
            // local worker is this machine whatever its `host`.
            let place = Worker {
                name: String::new(),
                host: host.clone(),
                port: w.port,
                user: None,
                labels: Vec::new(),
                root: root.clone(),
                transport,
                disabled: false,
            }
            .place(default_port);
            if let Some(other) = places.get(&place) {
                self.diags.push(
                    src.diag(
                        name.span(),
                        format!(
                            "worker `{}` has the same host and root as `{other}`",
                            name.get_ref()
                        ),
                    )
                    .with_help(
                        "two workers in one root would overwrite each other's releases; give each its own root",
                    ),
                );
                continue;
            }
            places.insert(place, name.get_ref().clone());
            workers.push(Worker {
                name: name.get_ref().clone(),
                host,
                port: w.port,
                user: w.user.clone(),
                labels: w.labels.clone(),
                root,
                transport,
                disabled: w.disabled,
            });
        }
        Some(workers)
    }

    fn load_jobs(&mut self, workers: &Option<Vec<Worker>>) -> BTreeMap<String, Job> {
        let mut jobs = BTreeMap::new();
        let mut sources: BTreeMap<String, (SourceFile, RawJob)> = BTreeMap::new();
        let jobs_dir = self.root.join("jobs");
        let Ok(entries) = std::fs::read_dir(&jobs_dir) else {
            return jobs;
        };
        let mut names: Vec<String> = Vec::new();
        for e in entries.filter_map(Result::ok) {
            if !e.path().is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = PathBuf::from("jobs").join(&name);
            // A job dir without its manifest (a misnamed `job.tml`) is not a
            // removed job: taking it for one would stop it everywhere.
            if !e.path().join(JOB_FILE).is_file() {
                self.diags.push(
                    Diagnostic::file(&rel, format!("{}/ has no {JOB_FILE}", rel.display()))
                        .with_help(format!(
                            "a directory under jobs/ is a job: add jobs/{name}/{JOB_FILE} (is it misnamed?), \
                             or remove the directory to remove the job"
                        )),
                );
                continue;
            }
            if let Some(problem) = name_problem(&name) {
                self.diags.push(
                    Diagnostic::file(&rel, format!("job name `{name}` {problem}"))
                        .with_help("name jobs with letters, digits, `_`, `-` and `.`"),
                );
                continue;
            }
            names.push(name);
        }
        names.sort();
        for name in names {
            let rel = PathBuf::from("jobs").join(&name).join(JOB_FILE);
            let Some(src) = read_source(self.root, &rel, &schema::JOB, &mut self.diags) else {
                continue;
            };
            let Some(raw) = typed::<RawJob>(&src, &mut self.diags) else {
                continue;
            };
            sources.insert(name, (src, raw));
        }

        let labels: BTreeSet<&str> = workers
            .iter()
            .flatten()
            .flat_map(|w| w.labels.iter().map(String::as_str))
            .collect();
        for (name, (src, raw)) in &sources {
            let manifest = self.manifest(src, raw, &labels, workers.is_some());
            for dep in &raw.depends_on {
                if !sources.contains_key(dep.get_ref()) {
                    let known: Vec<&str> = sources.keys().map(String::as_str).collect();
                    let mut d = src.diag(
                        dep.span(),
                        format!("`depends_on` names `{}`, which is not a job", dep.get_ref()),
                    );
                    d = match crate::diag::suggest(dep.get_ref(), known.iter().copied()) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help(format!(
                            "jobs in this project: {}; create jobs/{}/job.toml or remove the entry",
                            known.join(", "),
                            dep.get_ref()
                        )),
                    };
                    self.diags.push(d);
                }
            }
            jobs.insert(
                name.clone(),
                Job {
                    name: name.clone(),
                    dir: self.root.join("jobs").join(name),
                    manifest,
                },
            );
        }
        self.check_cycles(&sources);
        jobs
    }

    fn manifest(
        &mut self,
        src: &SourceFile,
        raw: &RawJob,
        labels: &BTreeSet<&str>,
        labels_known: bool,
    ) -> JobManifest {
        let d = &mut self.diags;
        let check_labels = |sel: &[Spanned<String>], d: &mut Diagnostics| {
            for s in sel {
                if labels_known && !labels.contains(s.get_ref().as_str()) {
                    let mut diag = src.diag(
                        s.span(),
                        format!("selector `{}` matches no worker label", s.get_ref()),
                    );
                    diag = match crate::diag::suggest(s.get_ref(), labels.iter().copied()) {
                        Some(l) => diag.with_help(format!("did you mean `{l}`?")),
                        None => diag.with_help(format!(
                            "add the label to a worker in workers.toml; labels in use: {}",
                            labels.iter().copied().collect::<Vec<_>>().join(", ")
                        )),
                    };
                    d.push(diag);
                }
            }
        };
        check_labels(&raw.selectors, d);
        let restart_policy = choice(
            src,
            "restart_policy",
            &raw.restart_policy,
            &[
                ("always", RestartPolicy::Always),
                ("reload", RestartPolicy::Reload),
                ("never", RestartPolicy::Never),
            ],
            RestartPolicy::Always,
            d,
        );
        let restart_globs: Vec<String> = raw
            .restart_globs
            .as_ref()
            .map(|g| g.get_ref().iter().map(|s| s.get_ref().clone()).collect())
            .unwrap_or_default();
        if let Some(globs) = &raw.restart_globs {
            if restart_policy != RestartPolicy::Reload && !globs.get_ref().is_empty() {
                d.push(
                    src.diag(globs.span(), "`restart_globs` is set but `restart_policy` is not \"reload\"")
                        .with_help("restart_globs choose restart over reload; set restart_policy = \"reload\" or remove restart_globs"),
                );
            }
            for g in globs.get_ref() {
                if let Err(e) = globset::Glob::new(g.get_ref()) {
                    d.push(src.diag(g.span(), format!("bad glob: {e}")));
                }
            }
        }
        for g in &raw.watch {
            if let Err(e) = globset::Glob::new(g.get_ref()) {
                d.push(src.diag(g.span(), format!("bad glob: {e}")));
            }
        }
        let on_failure = choice(
            src,
            "on_failure",
            &raw.on_failure,
            &[("halt", OnFailure::Halt), ("revert", OnFailure::Revert)],
            OnFailure::Halt,
            d,
        );
        let max_concurrent_upgrades = match &raw.max_concurrent_upgrades {
            Some(m) if *m.get_ref() == 0 => {
                d.push(
                    src.diag(m.span(), "max_concurrent_upgrades must be at least 1")
                        .with_help("upgrades are rolled in batches of this size"),
                );
                1
            }
            Some(m) => *m.get_ref() as usize,
            None => 1,
        };
        let keep_releases = match &raw.keep_releases {
            Some(k) if *k.get_ref() < 2 => {
                d.push(
                    src.diag(k.span(), "keep_releases must be at least 2")
                        .with_help(
                            "the previous release is kept so a failed batch can switch back",
                        ),
                );
                2
            }
            Some(k) => *k.get_ref() as usize,
            None => 5,
        };
        let health = match &raw.health {
            None => HealthCheck::default(),
            Some(h) => HealthCheck {
                http: h.http.clone(),
                expect_status: h.expect_status.unwrap_or(200),
                tcp: h.tcp.clone(),
                command: h.command.clone(),
                timeout: duration(src, "health.timeout", &h.timeout, Duration::from_secs(5), d),
                attempts: match &h.attempts {
                    Some(a) if *a.get_ref() == 0 => {
                        d.push(src.diag(a.span(), "health.attempts must be at least 1"));
                        1
                    }
                    Some(a) => *a.get_ref(),
                    None => 10,
                },
                interval: duration(
                    src,
                    "health.interval",
                    &h.interval,
                    Duration::from_secs(1),
                    d,
                ),
            },
        };
        let backup = raw.backup.as_ref().and_then(|b| match &b.command {
            Some(c) => Some(Backup {
                command: c.clone(),
                restore: b.restore.clone(),
            }),
            None => {
                d.push(
                    Diagnostic::file(&src.path, "[backup] has no `command`").with_help(
                        "set command = \"make backup\" (its last stdout line is the backup id)",
                    ),
                );
                None
            }
        });
        let certs = raw.certs.as_ref().map(|c| {
            for n in &c.names {
                if let Err(why) = san_name(n.get_ref()) {
                    d.push(
                        src.diag(n.span(), format!("`{}` is not a certificate name: {why}", n.get_ref()))
                            .with_help("a DNS name (letters, digits and `-` in dot-separated labels, `*.` first for a wildcard) or an IP address"),
                    );
                }
            }
            let validity = duration(
                src,
                "certs.validity",
                &c.validity,
                Duration::from_secs(90 * 86_400),
                d,
            );
            if validity.is_zero() {
                let span = c.validity.as_ref().map_or(0..0, |v| v.span());
                d.push(
                    src.diag(span, "a certificate valid for no time at all is expired when issued")
                        .with_help("give a validity such as \"90d\""),
                );
            }
            Certs {
                names: c.names.iter().map(|n| n.get_ref().clone()).collect(),
                validity,
            }
        });
        let canary = raw.canary.as_ref().map(|c| {
            check_labels(&c.selectors, d);
            if let Some(n) = c.count.as_ref().filter(|n| *n.get_ref() == 0) {
                d.push(
                    src.diag(n.span(), "canary.count is 0: a canary needs a worker")
                        .with_help(
                            "set count = 1 (or more), or pick canary workers with selectors",
                        ),
                );
            }
            Canary {
                selectors: c.selectors.iter().map(|s| s.get_ref().clone()).collect(),
                count: c.count.as_ref().map(|n| *n.get_ref()),
                soak: duration(src, "canary.soak", &c.soak, Duration::from_secs(600), d),
            }
        });
        JobManifest {
            version: raw.version.clone().unwrap_or_else(|| "0".into()),
            selectors: raw.selectors.iter().map(|s| s.get_ref().clone()).collect(),
            depends_on: raw.depends_on.iter().map(|s| s.get_ref().clone()).collect(),
            watch: raw.watch.iter().map(|s| s.get_ref().clone()).collect(),
            restart_policy,
            restart_globs,
            max_concurrent_starts: raw.max_concurrent_starts.unwrap_or(0) as usize,
            max_concurrent_upgrades,
            keep_releases,
            on_failure,
            health,
            backup,
            certs,
            build: raw.build.as_ref().map(|b| {
                // The output is packed and published: it must stay in the
                // job dir (never the project's .cutover/ or .git/).
                if let Some(o) = &b.output {
                    let escapes = Path::new(o.get_ref()).is_absolute()
                        || Path::new(o.get_ref())
                            .components()
                            .any(|c| matches!(c, std::path::Component::ParentDir));
                    if escapes {
                        d.push(
                            src.diag(o.span(), "build.output leaves the job dir")
                                .with_help("give a path inside jobs/<job>/, such as \"dist\""),
                        );
                    }
                }
                Build {
                    command: b.command.clone(),
                    output: b.output.as_ref().map(|o| o.get_ref().clone()),
                }
            }),
            canary,
            hooks: Hooks {
                pre_deploy: raw.hooks.pre_deploy.clone(),
                post_deploy: raw.hooks.post_deploy.clone(),
                after_allocation_started: raw.hooks.after_allocation_started.clone(),
                after_allocation_stopped: raw.hooks.after_allocation_stopped.clone(),
                job_control: raw.hooks.job_control.clone(),
            },
        }
    }

    /// Reports each dependency cycle once, at the edge that closes it.
    fn check_cycles(&mut self, sources: &BTreeMap<String, (SourceFile, RawJob)>) {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit(
            job: &str,
            sources: &BTreeMap<String, (SourceFile, RawJob)>,
            marks: &mut BTreeMap<String, Mark>,
            stack: &mut Vec<String>,
            diags: &mut Diagnostics,
        ) {
            marks.insert(job.to_string(), Mark::Visiting);
            stack.push(job.to_string());
            if let Some((src, raw)) = sources.get(job) {
                for dep in &raw.depends_on {
                    let dep_name = dep.get_ref().as_str();
                    match marks.get(dep_name) {
                        Some(Mark::Visiting) => {
                            let start = stack.iter().position(|j| j == dep_name).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[start..].iter().map(String::as_str).collect();
                            cycle.push(dep_name);
                            diags.push(
                                src.diag(
                                    dep.span(),
                                    format!("dependency cycle: {}", cycle.join(" -> ")),
                                )
                                .with_help("remove one of these depends_on entries"),
                            );
                        }
                        Some(Mark::Done) => {}
                        None if sources.contains_key(dep_name) => {
                            visit(dep_name, sources, marks, stack, diags)
                        }
                        None => {}
                    }
                }
            }
            stack.pop();
            marks.insert(job.to_string(), Mark::Done);
        }
        let mut marks = BTreeMap::new();
        for job in sources.keys() {
            if !marks.contains_key(job) {
                visit(job, sources, &mut marks, &mut Vec::new(), &mut self.diags);
            }
        }
    }
}
