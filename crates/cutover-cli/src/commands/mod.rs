//! One module per group of commands; `run` dispatches. Each command loads
//! what it needs once through [`Session`].

mod channel;
mod demo;
mod deploy;
mod init;
mod inspect;
mod kv;
pub mod playbook;
pub mod release;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cutover_engine::{Context, EngineError, Operator, Reporter};
use cutover_model::{LoadOptions, Project, StateBackend};
use cutover_state::SqliteStore;

use crate::args::{
    CertsCommand, Cli, Command, Global, JobCommand, KeysCommand, LockCommand, Progress,
    StateCommand, WorkerCommand,
};
use crate::env_vars;
use crate::error::CliError;
use crate::output::{self, LinePrinter, LiveProgress, Silent};

pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Check => inspect::check(g),
        Command::Demo => demo::run(g).await,
        Command::Deploy(a) => deploy::run(&Session::open(g, "deploy").await?, a).await,
        Command::Plan(a) => release::plan(&Session::open(g, "plan").await?, a).await,
        Command::Release(c) => {
            let prefix = match &c {
                crate::args::ReleaseCommand::Run { .. } => "release-run",
                crate::args::ReleaseCommand::Revert { .. } => "release-revert",
                crate::args::ReleaseCommand::State { .. } => "release-state",
                crate::args::ReleaseCommand::ReturnToMain => "release-return-to-main",
            };
            release::run(&Session::open(g, prefix).await?, c).await
        }
        Command::Playbook(c) => playbook::run(g, c).await,
        Command::Status(a) => inspect::status(&Session::open(g, "status").await?, a).await,
        Command::Drift(f) => inspect::drift(&Session::open(g, "drift").await?, f.jobs).await,
        Command::Cat(a) => inspect::cat(&Session::open(g, "cat").await?, a).await,
        Command::Kv(c) => kv::run(&Session::open(g, "kv").await?, c).await,
        Command::Job(JobCommand::Run {
            job,
            target,
            workers,
        }) => inspect::job_run(&Session::open(g, "job").await?, &job, &target, workers).await,
        Command::Job(JobCommand::Purge { job, yes }) => {
            inspect::job_purge(&Session::open(g, "job").await?, &job, yes).await
        }
        Command::Lock(LockCommand::Status) => {
            inspect::lock_status(&Session::open(g, "lock").await?).await
        }
        Command::State(StateCommand::Rebuild) => {
            inspect::state_rebuild(&Session::open(g, "state").await?).await
        }
        Command::Publish(a) => inspect::publish(&Session::open(g, "publish").await?, a).await,
        Command::Channel(c) => channel::run(&Session::open(g, "channel").await?, c).await,
        Command::Doctor => channel::doctor(g).await,
        Command::Keys(KeysCommand::Generate { out }) => inspect::keys_generate(g, &out),
        Command::Keys(KeysCommand::List) => {
            inspect::keys_list(&Session::open(g, "keys").await?).await
        }
        Command::Certs(CertsCommand::List) => {
            inspect::certs_list(&Session::open(g, "certs").await?).await
        }
        Command::Logs(a) => inspect::logs(&Session::open(g, "logs").await?, a).await,
        Command::Worker(WorkerCommand::Forget { name }) => {
            inspect::worker_forget(&Session::open(g, "worker").await?, &name).await
        }
        Command::Lock(LockCommand::Release) => {
            inspect::lock_release(&Session::open(g, "lock").await?).await
        }
    }
}

/// A loaded project with its store: what every project command needs.
pub struct Session {
    pub ctx: Context,
    pub json: bool,
    pub store: Arc<SqliteStore>,
}

impl Session {
    pub async fn open(g: &Global, prefix: &'static str) -> Result<Session, CliError> {
        let root = project_root(g)?;
        Session::open_at(&root, g, prefix).await
    }

    pub async fn open_at(
        root: &Path,
        g: &Global,
        prefix: &'static str,
    ) -> Result<Session, CliError> {
        let project = load_project(root)?;
        if let StateBackend::Postgres { .. } = project.config.state {
            return Err(CliError::usage(
                "cutover.toml: [state] backend = \"postgres\" is not available in this build yet",
                "use backend = \"sqlite\" (the default) for now",
            ));
        }
        let workspace = root.join(".cutover");
        let store = Arc::new(SqliteStore::open(&workspace).await?);
        let reporter: Arc<dyn Reporter> = if g.json {
            Arc::new(Silent)
        } else {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            match (g.progress, tty) {
                (Progress::Never, _) => Arc::new(LinePrinter::new(prefix, false)),
                (_, true) => Arc::new(LiveProgress::new(prefix)),
                // Not a terminal: `always` prints every per-host step as a line.
                (Progress::Always, false) => Arc::new(LinePrinter::new(prefix, true)),
                (Progress::Auto, false) => Arc::new(LinePrinter::new(prefix, false)),
            }
        };
        Ok(Session {
            ctx: Context {
                project: Arc::new(project),
                store: store.clone(),
                workspace,
                operator: operator(),
                env: std::env::vars().collect::<BTreeMap<_, _>>(),
                reporter,
                runtime_dir: runtime_dir(),
                interrupt: crate::interrupt(),
                load: load_options(),
                trust_env: trust_env(),
            },
            json: g.json,
            store,
        })
    }

    /// The exit code of a run that failed: 1, or 130 / 143 when a signal
    /// stopped it.
    pub fn failure_rc(&self) -> u8 {
        self.ctx.interrupt.exit_code().unwrap_or(1)
    }

    /// Appends this command to `.cutover/audit.log`.
    pub fn audit(&self, command: &str, outcome: &str, rc: u8, detail: &str) {
        if let Err(e) = cutover_engine::audit::append(
            &self.ctx.workspace,
            &self.ctx.operator,
            command,
            outcome,
            i32::from(rc),
            detail,
        ) {
            eprintln!("warning: cannot write .cutover/audit.log: {e}");
        }
    }
}

pub fn project_root(g: &Global) -> Result<PathBuf, CliError> {
    let start = match &g.project {
        Some(p) => p.clone(),
        None => std::env::current_dir().map_err(|e| {
            CliError::usage(
                format!("cannot read the current directory: {e}"),
                "pass --project DIR",
            )
        })?,
    };
    if g.project.is_some() {
        if start.join(cutover_model::project::PROJECT_FILE).is_file() {
            return Ok(start);
        }
        return Err(CliError::usage(
            format!("{} has no cutover.toml", start.display()),
            format!(
                "create a project there with `cutover init {}`",
                start.display()
            ),
        ));
    }
    Project::find_root(&start).ok_or_else(|| {
        CliError::usage(
            format!("no cutover.toml in {} or any directory above it", start.display()),
            "run cutover inside a project, pass --project DIR, or create one with `cutover init DIR --example`",
        )
    })
}

pub fn load_options() -> LoadOptions {
    LoadOptions {
        home: std::env::var_os(env_vars::HOME).map(PathBuf::from),
    }
}

/// `$XDG_RUNTIME_DIR` when it is an absolute, existing dir; else the
/// system temp dir. Either way cutover makes its own 0700 dirs in it.
pub fn runtime_dir() -> PathBuf {
    std::env::var_os(env_vars::XDG_RUNTIME_DIR)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

pub fn load_project(root: &Path) -> Result<Project, CliError> {
    Project::load(root, &load_options()).map_err(|d| CliError::Engine(EngineError::Config(d)))
}

pub fn operator() -> Operator {
    let user = std::env::var(env_vars::CUTOVER_USER)
        .or_else(|_| std::env::var(env_vars::USER))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(account_name);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    Operator {
        user,
        host,
        pid: std::process::id(),
    }
}

/// This process's account name from the system (`/etc/passwd`), for a
/// session without `$USER` (cron, systemd, `env -i`); else `uid N`.
fn account_name() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

pub fn job_set(jobs: Option<Vec<String>>) -> Option<BTreeSet<String>> {
    jobs.map(|j| j.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The command line as typed, for records and the audit log.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cutover {}", args.join(" "))
}

pub fn print_json(doc: serde_json::Value) {
    output::json(&doc);
}

/// The keys the environment names (and whether it is production).
pub(crate) fn trust_env() -> cutover_engine::keys::TrustEnv {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    cutover_engine::keys::TrustEnv {
        paths: var(env_vars::CUTOVER_TRUST_PUBLIC_KEYS_PATH),
        json: var(env_vars::CUTOVER_TRUST_PUBLIC_KEYS_JSON),
        signing_key_file: var(env_vars::CUTOVER_SIGNING_KEY_FILE)
            .map(|v| {
                v.split(':')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default(),
        insecure_dev_keys: var(env_vars::CUTOVER_ALLOW_INSECURE_DEV_KEYS).as_deref() == Some("1"),
        production: var(env_vars::CUTOVER_ENV).as_deref() == Some("production"),
    }
}
